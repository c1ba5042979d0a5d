"""The bubblewrap sandbox of a local agent: its argv, and whether ``bwrap`` works here.

What the sandboxed process sees (``sandbox_argv``):

- the host filesystem read-only (``--ro-bind / /``), a fresh ``/dev``, a ``/proc`` of
  its own pid namespace and a private, empty ``/tmp``;
- an empty ``/run`` (only its top-level symlinks, such as NixOS' ``current-system``,
  are recreated): no D-Bus, no systemd or database sockets, no ``/run/user/<uid>``;
- empty, read-only ``/home`` and ``/root``, and the same over the controller's own
  home (``$HOME`` and the passwd home, wherever they are): no ``~/.ssh``,
  ``~/.config``, shell history, other projects or other people's homes;
- an empty, read-only tmpfs over ``<state>`` and ``<run>``: no ``host.sock``, ``broker.sqlite``,
  ``meta.git``, ``operator.key``, ``logs/``, other agents' dirs or sockets;
- then, bound back read-only, what the command needs from those hidden places, never
  anything under ``<state>`` or ``<run>`` and never a whole home: under ``/tmp`` the
  top-level entry holding its script, ``PYTHONPATH``/``PATH`` entries, tool files and
  CA bundles; under ``/run`` those dirs (and ``/etc`` symlink targets such as
  ``resolv.conf``); in a home only the dirs themselves: the controller's python
  (``sys.prefix``, ``sys.base_prefix``, ``sys.path``), hyperhive's package dirs (an
  editable install points into a checkout), ``PATH``/``PYTHONPATH`` entries, the
  claude, node and git executables (with their real paths and ``node_modules``) and
  CA bundles — a file directly in a home is bound alone;
- last, the agent's own dir read-only (settings.json, its credential); its
  ``state/``, ``claude/``, ``home/`` and socket dir (and the manager's meta clone)
  read-write. Its ``HOME`` is that ``home/`` (``controller.drivers.local``), so git,
  node and claude write their dotfiles there.

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

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SCRATCH_ROOTS: tuple[Path, ...] = (Path("/tmp"), Path("/run"))
"""Host dirs replaced by an empty tmpfs; the top-level entries a command needs are bound back."""
HOME_ROOTS: tuple[Path, ...] = (Path("/home"), Path("/root"))
"""Host dirs of people's homes, replaced by an empty tmpfs; only the dirs the command needs
(an install prefix, a ``PATH`` entry, a package dir) are bound back, never a whole home."""
HIDDEN_HOST_ROOTS: tuple[Path, ...] = SCRATCH_ROOTS + HOME_ROOTS
"""Every host dir replaced by an empty tmpfs inside the sandbox (needed paths are bound back)."""
SYSTEM_DIRS: tuple[Path, ...] = tuple(
    Path(d) for d in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/nix", "/var", "/opt")
)
"""A ``$HOME`` at or above one of these is not hidden (it would hide the system)."""

PATH_LIST_VARS = ("PATH", "PYTHONPATH")
FILE_VARS = (
    "HYPERHIVE_CLAUDE_BIN",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NIX_SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
)
TOOLS = ("claude", "node", "git")
"""Looked up on the command's ``PATH``: what the harness runs (claude, and the node and git
it runs), bound back with their real paths and node_modules when in a home."""
PACKAGES = ("controller", "harness", "schemas", "hivehttp")
"""hyperhive's packages: their dirs are bound back (an editable install points at a checkout)."""
PROBE_TIMEOUT = 15.0


@dataclass(frozen=True)
class SandboxPaths:
    """The host paths one agent's sandbox is built from (all absolute).

    ``hidden``: covered by an empty tmpfs, nothing bound back but the agent's own
    paths (``<state>``, ``<run>``); ``read_only``: bound back read-only (the agent's
    own dir); ``writable``: bound back read-write (created if missing); ``chdir``:
    the working directory inside; ``homes``: the controller's own home dirs
    (``$HOME``), hidden like ``/home`` wherever they are (see ``home_dirs``).
    """

    hidden: tuple[Path, ...]
    read_only: tuple[Path, ...]
    writable: tuple[Path, ...]
    chdir: Path
    homes: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Keeps:
    """Host dirs and files to bind back read-only, in two rounds.

    ``early``: bound over the tmpfs of ``/tmp``, ``/run``, ``/home`` and ``/root``;
    ``late``: paths inside one of the controller's homes, bound after that home's
    own tmpfs (which covers any early bind of a parent, such as ``/tmp/<dir>``).
    """

    early: tuple[Path, ...]
    late: tuple[Path, ...]


def find_bwrap(env: Mapping[str, str]) -> str | None:
    """``bwrap`` on ``env["PATH"]`` (or the default path), or None."""
    return shutil.which("bwrap", path=env.get("PATH") or os.defpath)


def _under(path: Path, root: Path) -> bool:
    """``path == root or root in path.parents``, on the paths' text: the sandbox's argv
    tests thousands of such pairs at every agent start, and building ``parents`` for
    each cost more than the rest of the start's set-up (both are absolute here)."""
    p, r = str(path), str(root)
    if p == r:
        return True
    if r == "/":
        return p.startswith("/")
    return p.startswith(r + "/")


_reals: dict[str, Path] = {}
"""``_real``'s answers during one call of ``home_dirs``, ``sandbox_argv`` or ``keep_paths``
(the same few roots are resolved hundreds of times per agent start); each of them empties
it first, so a symlink changed since an earlier call is seen."""


def _real(path: Path | str) -> Path:
    key = str(path)
    real = _reals.get(key)
    if real is None:
        real = _reals[key] = Path(os.path.realpath(path))
    return real


def home_dirs(env: Mapping[str, str]) -> tuple[Path, ...]:
    """The controller's home dirs to hide: ``env["HOME"]`` and the user's passwd home.

    Real paths, deduplicated; "/" and a dir at or above a system dir (``/usr``,
    ``/var``, ...) are left out, as is anything that does not exist.
    """
    _reals.clear()
    found: list[Path] = []
    cands = [env.get("HOME") or ""]
    with contextlib.suppress(KeyError, ImportError):
        import pwd

        cands.append(pwd.getpwuid(os.getuid()).pw_dir)
    for c in cands:
        if not c.startswith("/"):
            continue
        home = _real(c)
        if home == Path("/") or not home.is_dir() or home in found:
            continue
        if any(_under(_real(d), home) for d in SYSTEM_DIRS):
            continue
        found.append(home)
    return tuple(found)


def runtime_paths() -> list[Path]:
    """The controller's own python: its prefixes, ``sys.path`` and hyperhive's package dirs.

    The harness runs on this interpreter (``python -m harness serve``); each may live
    in a home (a venv in a checkout, pyenv's ``~/.pyenv``).
    """
    out = [Path(p) for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix)]
    out += [Path(p) for p in sys.path if p.startswith("/")]
    for name in PACKAGES:
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.submodule_search_locations:
                out += [Path(p) for p in spec.submodule_search_locations]
    return out


def _node_modules(path: Path) -> Path | None:
    """The outermost ``node_modules`` dir ``path`` is in (a CLI's package and its deps), or None."""
    parts = path.parts
    if "node_modules" not in parts:
        return None
    return Path(*parts[: parts.index("node_modules") + 1])


def _candidates(argv: Sequence[str], env: Mapping[str, str]) -> list[Path]:
    """Host paths the command may need: argv items, path lists, tools, python, /etc links."""
    items: list[str] = list(argv)
    for var in PATH_LIST_VARS:
        items += (env.get(var) or "").split(os.pathsep)
    items += [env.get(var) or "" for var in FILE_VARS]
    path = env.get("PATH") or os.defpath
    items += [shutil.which(tool, path=path) or "" for tool in TOOLS]
    items += [str(p) for p in runtime_paths()]
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
        real = _real(p)
        for q in (p, real, _node_modules(real)):
            if q is not None and q.exists() and q not in out:
                out.append(q)
    return out


def _whole_home(path: Path, homes: Sequence[Path]) -> bool:
    """True when binding ``path`` would show a whole home dir (or several)."""
    if path in homes:
        return True
    for root in HOME_ROOTS:
        real = _real(root)
        if _under(real, path):
            return True  # /home, /root or a parent of them
        if root == Path("/home") and path.parent == real:
            return True  # /home/<user>
    return False


def _bind_back(path: Path, homes: Sequence[Path]) -> Path | None:
    """What to bind back for ``path`` when it lives under a hidden host root, else None.

    Under ``/tmp``: its top-level entry (``/tmp/setup`` for a node_modules tree, whose
    ``.bin`` symlinks need their package dirs). Under ``/run``: the dir itself, or a
    file's parent dir; never ``/run`` itself. Under ``/home``, ``/root`` or one of
    ``homes``: the dir itself, or the (real) dir a file is in, or only the file when
    that dir is a whole home; never a whole home.
    """
    in_home = any(_under(path, h) for h in homes)  # a home in /tmp: the home's rules
    for root in () if in_home else SCRATCH_ROOTS:
        for r in dict.fromkeys((root, _real(root))):
            if path == r or not _under(path, r):
                continue
            if root == Path("/tmp"):
                return r / path.relative_to(r).parts[0]
            return path if path.is_dir() else path.parent if path.parent != r else path
    if not in_home and not any(_under(path, _real(r)) for r in HOME_ROOTS):
        return None
    if path.is_dir():
        keep = _real(path)
        return None if _whole_home(keep, homes) else keep
    keep = _real(path.parent)
    if _whole_home(keep, homes):
        keep = keep / path.name  # only the file (its parent is a home)
    return keep


def keep_paths(
    argv: Sequence[str],
    env: Mapping[str, str],
    hidden: Iterable[Path],
    homes: Sequence[Path] = (),
) -> Keeps:
    """Host paths under a hidden host root to bind back read-only for ``argv`` to run.

    A path inside one of ``hidden`` (``<state>``, ``<run>``) is never returned, nor a
    whole home dir (``/home/<user>``, ``/root``, one of ``homes``). Paths under one
    of ``homes`` come in ``late``; a path inside another kept path is left out.
    """
    _reals.clear()
    hide = [_real(h) for h in hidden]
    keeps: list[Path] = []
    for p in _candidates(argv, env):
        keep = _bind_back(p, homes)
        if keep is None or keep in keeps or not keep.exists():
            continue
        if any(_under(_real(keep), h) for h in hide):
            continue
        keeps.append(keep)
    early = [k for k in keeps if not any(_under(k, h) for h in homes)]
    late = [k for k in keeps if k not in early]

    def outermost(paths: list[Path]) -> tuple[Path, ...]:
        return tuple(p for p in paths if not any(q != p and _under(p, q) for q in paths))

    return Keeps(outermost(early), outermost(late))


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
    files decide what is bound back). Creates the ``writable`` dirs. Mount order
    matters, later mounts cover earlier ones: the host roots' tmpfs, the paths bound
    back over them, the tmpfs over the controller's homes (an early bind, such as
    ``/tmp/<dir>``, may hold one), the paths bound back inside those, the tmpfs over
    ``<state>``/``<run>`` (a bound-back path may be a parent of ``<state>``), the
    agent's own paths, and last the read-only remounts of the empty stand-ins.
    """
    _reals.clear()
    homes = [
        h
        for h in dict.fromkeys(_real(h) for h in paths.homes)
        if not any(_under(h, _real(x)) for x in paths.hidden)
    ]
    keeps = keep_paths(command, env, paths.hidden, homes)
    out = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    out += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    roots = list(dict.fromkeys(_real(r) for r in HIDDEN_HOST_ROOTS))
    roots = [r for r in roots if r != Path("/") and r.is_dir()]
    for root in roots:
        out += ["--tmpfs", str(root)]
    for target, link in _run_symlinks():
        out += ["--symlink", target, link]
    for keep in keeps.early:
        out += ["--ro-bind", str(keep), str(keep)]
    # a home already under a hidden root needs its own tmpfs only if an early bind shows it
    homes = [
        h
        for h in sorted(homes, key=lambda p: len(p.parts))
        if not any(_under(h, r) for r in roots) or any(_under(h, k) for k in keeps.early)
    ]
    for home in homes:
        out += ["--tmpfs", str(home)]
    for keep in keeps.late:
        out += ["--ro-bind", str(keep), str(keep)]
    # parents first, so a nested hidden dir (<state>/run) is not mounted under a later tmpfs
    hidden = sorted(set(paths.hidden), key=lambda p: len(p.parts))
    for h in hidden:
        out += ["--tmpfs", str(h)]
    for ro in paths.read_only:
        out += ["--ro-bind-try", str(ro), str(ro)]
    for rw in paths.writable:
        rw.mkdir(parents=True, exist_ok=True)
        out += ["--bind", str(rw), str(rw)]
    # the empty stand-ins take no writes (the binds on them still do); /tmp stays writable
    stand_ins = [r for r in roots if r != _real("/tmp")] + homes + hidden
    for h in sorted(dict.fromkeys(stand_ins), key=lambda p: len(p.parts)):
        out += ["--remount-ro", str(h)]
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
