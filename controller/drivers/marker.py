"""The deployed marker: ``<state>/agents/<a>/deployed.json``, written by every driver.

A driver writes the marker whenever it deploys an agent (create, rebuild, new
settings) and reads it back in ``observe``: it is how the Swarm learns what an
agent last got — its meta commit, config and build digests and hyperhive
version — whatever the runtime. The file is one JSON object with sorted keys
and a trailing newline::

    {"build_digest": ..., "commit": ..., "config_digest": ..., "deployed_at": ...,
     "has_nix": ..., "hyperhive_version": ..., "web_port": ...}

Drivers may add keys of their own (``marker_record``'s ``extra``); readers
ignore what they do not know. The file helpers here (``read_json``,
``atomic_write``) serve the drivers' other small files too.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.drivers.base import Deployment
from controller.model import ObservedAgent, Phase

MARKER_FILE = "deployed.json"
"""The marker's name in ``<state>/agents/<a>/`` (``Layout.agent_dir``)."""


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if it is missing, unreadable, not JSON or no object."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def atomic_write(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to a temp file next to ``path``, fsync, chmod ``mode``, rename over it.

    The parent directory is created if needed; readers see the old file or the
    new one, never a part. The temp file is removed when anything fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def marker_record(d: Deployment, now: float, **extra: Any) -> dict[str, Any]:
    """The marker for deploying ``d`` at unix time ``now``; ``extra`` adds or overrides keys.

    ``hyperhive_version`` is the one the rendered settings carry (None if none).
    """
    record: dict[str, Any] = {
        "commit": d.agent.commit,
        "config_digest": d.agent.config_digest,
        "build_digest": d.agent.build_digest,
        "hyperhive_version": d.settings.get("hyperhive_version"),
        "deployed_at": now,
        "has_nix": d.agent.has_nix,
        "web_port": d.web_port,
    }
    record.update(extra)
    return record


def write_marker(path: Path, record: Mapping[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically (mode 0644): sorted keys, a trailing newline."""
    atomic_write(path, json.dumps(record, sort_keys=True) + "\n", 0o644)


def observed_from_marker(
    name: str,
    phase: Phase,
    marker: Mapping[str, Any],
    *,
    since: float | None = None,
    detail: str = "",
) -> ObservedAgent:
    """What a driver observes of ``name`` in ``phase``, with what its marker says was deployed.

    An empty ``marker`` (none was read) gives None for commit, digests and version.
    """
    return ObservedAgent(
        name=name,
        phase=phase,
        commit=marker.get("commit"),
        config_digest=marker.get("config_digest"),
        build_digest=marker.get("build_digest"),
        hyperhive_version=marker.get("hyperhive_version"),
        since=since,
        detail=detail,
    )
