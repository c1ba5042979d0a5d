"""Pure rules for ``spec.frontend`` paths: no I/O.

A *source* is a path relative to the agent's directory in the meta repo
(``agents/<name>/``); a *target* is a URL prefix under the agent UI
(``/agents/<name>/<target>/`` on the dashboard). Both are plain relative paths: no
leading ``/``, no empty, ``.`` or ``..`` segment, no backslash or control character.
A target may not take a name the built-in UI uses (``RESERVED``): extra files are
additions only; ``frontend.dist`` is how the whole UI is replaced.
"""

from __future__ import annotations

import itertools
import re

RESERVED = {
    "index.html": "the built-in page",
    "static": "the built-in UI's script and style (static/app.js, static/app.css)",
    "api": "the agent UI's JSON API",
    "events": "the agent UI's event stream",
    "healthz": "the agent UI's health check",
    "ui": "the frontend.dist bundle",
    "files": "the sandboxed custom files",
}
"""First URL segments of the built-in agent UI, with what they hold (for the refusal)."""

_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._~@+-]{1,128}$")


class BadPath(ValueError):
    """A source or target that breaks the rules; ``str()`` is the reason."""


def check_relative(path: str) -> str:
    """``path`` if it is a clean relative path, else ``BadPath`` with the reason.

    Refused: a leading ``/``, a ``..`` or ``.`` segment, an empty segment (``a//b``), a
    trailing ``/`` is dropped; characters outside ``[A-Za-z0-9._~@+-]`` in a segment.
    """
    if path.startswith("/"):
        raise BadPath(f"{path!r} starts with '/': give a path relative to the agent's directory")
    parts = path.rstrip("/").split("/")
    for seg in parts:
        if seg == "..":
            raise BadPath(f"{path!r} has a '..' segment: paths may not leave their directory")
        if seg in ("", "."):
            raise BadPath(f"{path!r} has an empty or '.' segment")
        if not _SEGMENT_RE.fullmatch(seg):
            raise BadPath(
                f"{path!r}: segment {seg[:40]!r} has characters outside [A-Za-z0-9._~@+-]"
            )
    return "/".join(parts)


def check_target(target: str) -> str:
    """A clean target prefix, or ``BadPath``: the rules of ``check_relative`` plus no
    built-in name as its first segment (that would overwrite a built-in file)."""
    clean = check_relative(target)
    first = clean.split("/", 1)[0]
    if first in RESERVED:
        raise BadPath(
            f"{target!r} would overwrite a built-in file of the agent UI ({first}: "
            f"{RESERVED[first]}); extraFiles are additions only, frontend.dist replaces the UI"
        )
    return clean


def overlaps(targets: list[str]) -> tuple[str, str] | None:
    """Two targets of which one is the other or lies inside it (``a`` and ``a/b``), or None."""
    ordered = sorted(targets)
    for a, b in itertools.pairwise(ordered):
        if b == a or b.startswith(a + "/"):
            return a, b
    return None
