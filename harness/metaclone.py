"""A remote manager's meta clone: its remote is the controller's meta.git over HTTP.

On the local and nixos-container runtimes the controller makes the manager's clone
(``<state>/manager/meta``) on its own disk and reads proposed commits from it. A
manager that reaches the controller only over ``HYPERHIVE_API_URL`` (a kubernetes
pod) has its clone on its own volume (``HYPERHIVE_META_DIR``) instead, so:

- ``ensure_clone`` makes (or repairs) that clone with ``origin`` =
  ``HYPERHIVE_META_URL`` (``http(s)://HOST:PORT/meta.git``, the controller's git
  listener) and a clone-local git credential helper that answers git's HTTP Basic
  challenge with the manager's credential read from ``HYPERHIVE_CREDENTIAL_FILE`` at
  each request. The credential is never in the URL, in the clone's config, or on a
  command line (``ps``): the helper is a shell function whose ``cat`` is given the
  file's path, and the secret goes from its stdout to git over a pipe. A rotated
  credential is picked up on the next fetch or push.
- ``push_commit`` pushes a commit to ``refs/hyperhive/manager/<commit id>`` on
  meta.git, the one namespace the manager's credential may write
  (``controller.hooks.pre_receive``); ``request_apply_commit`` on the controller then
  finds it there (``controller.metarepo.MetaRepo.pushed_commit``). The MCP tool
  ``request_apply_commit`` does this before it asks, when ``HYPERHIVE_META_URL`` is set.

Every git call runs with ``GIT_TERMINAL_PROMPT=0`` (a refusal is an error, never a
prompt) and a timeout. Errors: ``MetaCloneError`` with git's own message.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

META_URL_VAR = "HYPERHIVE_META_URL"
"""meta.git over HTTP as the manager reaches it (set by the kubernetes runtime)."""
META_DIR_VAR = "HYPERHIVE_META_DIR"
"""The manager's working clone of the meta repo."""
MANAGER_PREFIX = "refs/hyperhive/manager/"
"""The ref namespace on meta.git the manager's credential may push to."""
GIT_TIMEOUT = 120.0
"""Seconds one git command (a fetch or a push of manifests) may take."""


class MetaCloneError(RuntimeError):
    """A git command on the manager's clone failed; the message is git's, shortened."""


def credential_helper(credential_file: Path) -> str:
    """The ``credential.helper`` value: a shell function answering ``get`` with the user
    ``manager`` and the content of ``credential_file`` (read at each call; trailing
    newlines dropped by ``$(...)``), ignoring ``store`` and ``erase``."""
    path = shlex.quote(str(credential_file))
    return (
        '!f() { test "$1" = get || return 0; echo username=manager; '
        f'echo "password=$(cat {path})"; }}; f'
    )


def _env(environ: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ if environ is None else environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def _git(clone: Path, args: Sequence[str], env: Mapping[str, str]) -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(clone), *args],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MetaCloneError(f"git {args[0]}: {exc}") from exc
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip())[-1500:]
        raise MetaCloneError(f"git {args[0]} failed: {said}")
    return proc.stdout


def configure(
    clone: Path,
    url: str,
    credential_file: Path,
    agent: str = "manager",
    environ: Mapping[str, str] | None = None,
) -> None:
    """Point ``clone``'s ``origin`` at ``url`` with the credential helper (replacing any
    helper git would otherwise inherit), and set the committer name; idempotent."""
    env = _env(environ)
    remotes = _git(clone, ["remote"], env).split()
    _git(clone, ["remote", "set-url" if "origin" in remotes else "add", "origin", url], env)
    if _has(clone, "credential.helper", env):
        _git(clone, ["config", "--unset-all", "credential.helper"], env)
    # an empty helper first resets the list: no system or global helper sees the secret
    _git(clone, ["config", "--add", "credential.helper", ""], env)
    _git(clone, ["config", "--add", "credential.helper", credential_helper(credential_file)], env)
    _git(clone, ["config", "user.name", agent], env)
    _git(clone, ["config", "user.email", f"{agent}@hyperhive.local"], env)


def _has(clone: Path, key: str, env: Mapping[str, str]) -> bool:
    proc = subprocess.run(
        ["git", "-C", str(clone), "config", "--local", "--get-all", key],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT,
        check=False,
    )
    return proc.returncode == 0


def ensure_clone(
    clone: Path,
    url: str,
    credential_file: Path,
    agent: str = "manager",
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Make ``clone`` a clone of ``url`` (``init`` + ``fetch``, so an existing empty
    directory, e.g. one an init container made, is fine) on branch ``main`` tracking
    ``origin/main``; an existing clone only gets its remote and helper (re)set and is
    fetched. Returns True when the clone was made now. Raises ``MetaCloneError``."""
    env = _env(environ)
    made = False
    if not (clone / ".git").exists():
        clone.mkdir(parents=True, exist_ok=True)
        _git(clone, ["init", "-q", "-b", "main"], env)
        made = True
    configure(clone, url, credential_file, agent, environ)
    _git(clone, ["fetch", "-q", "origin", "+refs/heads/main:refs/remotes/origin/main"], env)
    if made:
        _git(clone, ["checkout", "-q", "-B", "main", "origin/main"], env)
        _git(clone, ["branch", "-q", "--set-upstream-to=origin/main", "main"], env)
    return made


def resolve(clone: Path, commit: str, environ: Mapping[str, str] | None = None) -> str:
    """The full id of the commit ``commit`` names in ``clone`` (an id, ``HEAD``, a branch).
    Raises ``MetaCloneError`` when it names no commit there."""
    args = ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{commit}^{{commit}}"]
    return _git(clone, args, _env(environ)).strip()


def push_commit(clone: Path, commit: str, environ: Mapping[str, str] | None = None) -> str:
    """Push ``commit`` of ``clone`` to ``refs/hyperhive/manager/<id>`` on ``origin``; its
    full id. Raises ``MetaCloneError`` (no such commit; git's refusal, e.g. 401 or the
    pre-receive hook's message)."""
    try:
        oid = resolve(clone, commit, environ)
    except MetaCloneError as exc:
        raise MetaCloneError(f"no commit {commit!r} in {clone}") from exc
    _git(clone, ["push", "-q", "origin", f"{oid}:{MANAGER_PREFIX}{oid}"], _env(environ))
    return oid


def drop_pushed(clone: Path, oid: str, environ: Mapping[str, str] | None = None) -> bool:
    """Delete ``refs/hyperhive/manager/<oid>`` on ``origin`` (after the controller refused
    to propose it: the namespace is capped); True when git did. Never raises."""
    try:
        _git(clone, ["push", "-q", "origin", f":{MANAGER_PREFIX}{oid}"], _env(environ))
    except MetaCloneError as exc:
        log.warning("could not delete %s%s on meta.git: %s", MANAGER_PREFIX, oid, exc)
        return False
    return True


def remote_clone(environ: Mapping[str, str] | None = None) -> tuple[Path, str] | None:
    """``(HYPERHIVE_META_DIR, HYPERHIVE_META_URL)`` when both are set (a remote manager),
    else None (the controller reads the clone from its own disk)."""
    env = os.environ if environ is None else environ
    url, directory = env.get(META_URL_VAR, ""), env.get(META_DIR_VAR, "")
    if not url or not directory:
        return None
    return Path(directory), url


def set_up(flavor: str, credential_file: Path | None, environ: Mapping[str, str]) -> str:
    """At harness start: make the remote manager's clone (``ensure_clone``) when this is
    the manager with ``HYPERHIVE_META_URL`` and ``HYPERHIVE_META_DIR`` set; returns what
    happened (``"not remote"``, ``"cloned"``, ``"updated"``, ``"failed: <why>"``),
    logged. A failure is not fatal: the next ``request_apply_commit`` says why."""
    where = remote_clone(environ)
    if flavor != "manager" or where is None or credential_file is None:
        return "not remote"
    clone, url = where
    try:
        made = ensure_clone(clone, url, credential_file, environ=environ)
    except MetaCloneError as exc:
        log.warning("meta clone %s of %s: %s", clone, url, exc)
        return f"failed: {exc}"
    log.info("meta clone %s: %s from %s", clone, "cloned" if made else "updated", url)
    return "cloned" if made else "updated"
