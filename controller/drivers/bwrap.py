"""The bubblewrap sandbox of a local agent: its argv, and whether ``bwrap`` works here.

What the sandboxed process sees (``sandbox_argv``):

- the host filesystem read-only (``--ro-bind / /``), a fresh ``/dev``, a ``/proc`` of
  its own pid namespace and a private, empty ``/tmp``;
- an empty ``/run`` (only its top-level symlinks, such as NixOS' ``current-system``,
  are recreated): no D-Bus, no systemd or database sockets, no ``/run/user/<uid>``;
- an empty, read-only tmpfs over ``<state>`` and ``<run>``: no ``host.sock``, ``broker.sqlite``,
  ``meta.git``, ``operator.key``, ``logs/``, other agents' dirs or sockets;
- then, bound back: host paths the command needs that live under ``/tmp`` or ``/run``
  (its script, ``PYTHONPATH``/``PATH`` entries, ``HYPERHIVE_CLAUDE_BIN``, CA bundles,
  ``/etc`` symlink targets such as ``resolv.conf``), never anything under ``<state>``
  or ``<run>``; the agent's own dir read-only (settings.json, its credential); its
  ``state/``, ``claude/``, ``home/`` and socket dir (and the manager's meta clone)
  read-write.

Namespaces: pid (``--unshare-pid``: it cannot see or signal other processes, read
their ``/proc/<pid>/environ`` or ptrace them), ipc, uts, cgroup. The network is
shared on purpose: the Messages API must stay reachable exactly as the operator
configured it, including an ``ANTHROPIC_BASE_URL`` or proxy on loopback (a fresh
network namespace has only its own, empty loopback), and the agent's opt-in web
port is a host port. Every controller surface an agent can reach over the network
requires a credential (the agent's own, or the operator's session), so sharing the
network grants no operator power.

Not used, and why: ``--die-with-parent`` (it would kill every agent when the
controller stops; agents must outlive a controller restart) and ``--new-session``
(the harness must stay in the process group the driver signals on stop; stdin is
``/dev/null`` and the process has no controlling terminal, so TIOCSTI is moot).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HIDDEN_HOST_ROOTS: tuple[Path, ...] = (Path("/tmp"), Path("/run"))
"""Host dirs replaced by an empty tmpfs inside the sandbox (needed paths are bound back)."""

PATH_LIST_VARS = ("PATH", "PYTHONPATH")
FILE_VARS = ("HYPERHIVE_CLAUDE_BIN", "SSL_CERT_FILE", "NIX_SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS")
PROBE_TIMEOUT = 15.0


@dataclass(frozen=True)
class SandboxPaths:
    """The host paths one agent's sandbox is built from (all absolute).

    ``hidden``: covered by an empty tmpfs (``<state>``, ``<run>``); ``read_only``:
    bound back read-only (the agent's own dir); ``writable``: bound back read-write
    (created if missing); ``chdir``: the working directory inside.
    """

    hidden: tuple[Path, ...]
    read_only: tuple[Path, ...]
    writable: tuple[Path, ...]
    chdir: Path


def find_bwrap(env: Mapping[str, str]) -> str | None:
    """``bwrap`` on ``env["PATH"]`` (or the default path), or None."""
    return shutil.which("bwrap", path=env.get("PATH") or os.defpath)


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _candidates(argv: Sequence[str], env: Mapping[str, str]) -> list[Path]:
    """Host paths the command may need: argv items, path lists, tool files, /etc links."""
    items: list[str] = list(argv)
    for var in PATH_LIST_VARS:
        items += (env.get(var) or "").split(os.pathsep)
    items += [env.get(var) or "" for var in FILE_VARS]
    # /etc/resolv.conf and friends often point into /run (systemd-resolved, NetworkManager)
    try:
        etc = sorted(Path("/etc").iterdir())
    except OSError:
        etc = []
    items += [str(p) for p in etc if p.is_symlink()]
    out: list[Path] = []
    for item in items:
        if not item.startswith("/"):
            continue
        p = Path(os.path.normpath(item))
        for q in (p, Path(os.path.realpath(p))):
            if q.exists() and q not in out:
                out.append(q)
    return out


def _bind_back(path: Path) -> Path | None:
    """What to bind back for ``path`` when it lives under a hidden host root, else None.

    Under ``/tmp``: its top-level entry (``/tmp/setup`` for a node_modules tree, whose
    ``.bin`` symlinks need their package dirs). Under ``/run``: the dir itself, or a
    file's parent dir; never ``/run`` itself.
    """
    for root in HIDDEN_HOST_ROOTS:
        if path == root or not _under(path, root):
            continue
        if root == Path("/tmp"):
            return root / path.relative_to(root).parts[0]
        return path if path.is_dir() else path.parent if path.parent != root else path
    return None


def keep_paths(argv: Sequence[str], env: Mapping[str, str], hidden: Iterable[Path]) -> list[Path]:
    """Host paths under ``/tmp`` or ``/run`` to bind back read-only for ``argv`` to run.

    A path inside one of ``hidden`` (``<state>``, ``<run>``) is never returned.
    """
    hide = [Path(os.path.realpath(h)) for h in hidden]
    out: list[Path] = []
    for p in _candidates(argv, env):
        keep = _bind_back(p)
        if keep is None or keep in out:
            continue
        if any(_under(Path(os.path.realpath(keep)), h) for h in hide):
            continue
        out.append(keep)
    return out


def _run_symlinks() -> list[tuple[str, str]]:
    """``(target, link)`` for each top-level symlink in ``/run`` (NixOS ``current-system``)."""
    out: list[tuple[str, str]] = []
    try:
        entries = sorted(Path("/run").iterdir())
    except OSError:
        return out
    for p in entries:
        if p.is_symlink():
            out.append((os.readlink(p), str(p)))
    return out


def sandbox_argv(
    bwrap: str, paths: SandboxPaths, command: Sequence[str], env: Mapping[str, str]
) -> list[str]:
    """The full argv running ``command`` under ``bwrap`` (see the module docstring).

    ``env`` is the environment the command will get (its PATH, PYTHONPATH and tool
    files decide what is bound back under ``/tmp`` and ``/run``). Creates the
    ``writable`` dirs. Mount order matters: later mounts cover earlier ones, so the
    tmpfs over ``<state>``/``<run>`` comes after the bound-back host paths (one of
    them may be a parent of ``<state>``) and the agent's own paths come last.
    """
    out = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    out += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    for root in HIDDEN_HOST_ROOTS:
        if root.is_dir() and not root.is_symlink():
            out += ["--tmpfs", str(root)]
    for target, link in _run_symlinks():
        out += ["--symlink", target, link]
    for keep in keep_paths(command, env, paths.hidden):
        out += ["--ro-bind", str(keep), str(keep)]
    # parents first, so a nested hidden dir (<state>/run) is not mounted under a later tmpfs
    for hidden in sorted(set(paths.hidden), key=lambda p: len(p.parts)):
        out += ["--tmpfs", str(hidden)]
    for ro in paths.read_only:
        out += ["--ro-bind-try", str(ro), str(ro)]
    for rw in paths.writable:
        rw.mkdir(parents=True, exist_ok=True)
        out += ["--bind", str(rw), str(rw)]
    # the empty stand-ins for <state> and <run> take no writes (the binds on them still do)
    for hidden in sorted(set(paths.hidden), key=lambda p: len(p.parts)):
        out += ["--remount-ro", str(hidden)]
    out += ["--chdir", str(paths.chdir), "--"]
    return out + list(command)


def probe(bwrap: str, env: Mapping[str, str]) -> str | None:
    """None when ``bwrap`` can build this kind of sandbox here, else why not (one line).

    Runs a trivial command with the same namespaces and mounts the agents get
    (unprivileged user namespaces may be disabled, e.g. in some containers).
    """
    true = shutil.which("true", path=env.get("PATH") or os.defpath)
    cmd = [true] if true else [sys.executable, "-c", ""]
    paths = SandboxPaths(hidden=(), read_only=(), writable=(), chdir=Path("/"))
    try:
        res = subprocess.run(
            sandbox_argv(bwrap, paths, cmd, env),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} did not run: {exc}"
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip().splitlines()
        return f"{bwrap} cannot create a sandbox here: {err[-1] if err else res.returncode}"
    return None
