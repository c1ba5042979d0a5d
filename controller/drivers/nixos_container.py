"""The ``nixos-container`` runtime: every agent is a NixOS container (systemd-nspawn).

Production driver (DESIGN.md "Runtime drivers"). Containers are ``h-<agent>``
and ``hm1nd`` for the manager (``schemas.names.container_name``), built from the
meta flake with ``nixos-container create|update NAME --flake <ref>#<agent>``.
Operator-facing notes on every quirk below: docs/gotchas.md, section
"NixOS containers".

Facts this module relies on, and where they come from (``nixos-container.pl``
is ``pkgs/tools/virtualization/nixos-container/nixos-container.pl`` in
nixpkgs; "the start script" is ``startScript`` of
``nixos/modules/virtualisation/nixos-containers.nix``, the ``container@.service``
template that every imperative container runs as):

- ``--flake`` is split by ``/^(.*)#([^#"]+)$/``; without ``#attr`` the attr
  defaults to ``container`` (nixos-container.pl), which the meta flake does not
  have — so the ref must always carry ``#<agent>`` (``split_flake_ref``).
- The flake build runs ``nix build -o "$systemPath.tmp"`` with ``$systemPath``
  unset, i.e. it writes ``./.tmp`` in the *caller's* working directory
  (nixos-container.pl ``buildFlake``). Two builds sharing a cwd race on that
  symlink, and the controller's cwd (``/`` under systemd) is not ours to litter:
  every build runs in a fresh temporary directory (``_stream``).
- ``create`` writes ``<conf_dir>/NAME.conf`` (``PRIVATE_NETWORK=1``,
  ``HOST_ADDRESS=10.233.N.1``, ``LOCAL_ADDRESS=10.233.N.2``, ``HOST_BRIDGE=``,
  ``HOST_PORT=``, ``AUTO_START=0``, ``FLAKE=<ref without attr>``) *before* it
  builds, and a failed flake build ``die``s without removing it
  (nixos-container.pl ``create``/``buildFlake``). The next ``create`` then
  fails with "already exists" forever; seeds/003 ("failed-create cleanup"). We
  remove the leftover conf when our create fails.
- ``status`` prints ``up``/``down`` from ``systemctl show container@NAME``
  (``ActiveState=active``), and for a container without a conf prints ``gone``
  *and then dies* (non-zero exit). ``destroy`` of a container without a conf
  exits 0 (nixos-container.pl). ``list`` prints the basename of every
  ``<conf_dir>/*.conf`` — declarative containers included, so we filter to ours.
- ``update`` on a running container ends with ``systemctl reload
  container@NAME`` (``switch-to-configuration test`` inside); the nspawn flags
  and unit properties only change on a real restart, so rebuild restarts.
- The start script turns ``PRIVATE_NETWORK=1`` into ``--private-network`` and a
  non-empty ``HOST_ADDRESS``/``LOCAL_ADDRESS``/``HOST_ADDRESS6``/
  ``LOCAL_ADDRESS6``/``LOCAL_MAC_ADDRESS`` into ``--network-veth``,
  ``HOST_BRIDGE`` into ``--network-bridge``, ``HOST_PORT`` into ``--port``
  (private networking only). Any of them puts the container in its own network
  namespace and the agent's web UI (a host port by design) becomes unreachable
  — seeds/002 ("HOST_ADDRESS clearing", "PRIVATE_NETWORK=0"). ``rewrite_conf``
  sets ``PRIVATE_NETWORK=0`` and empties all of them, keeping every other key.
- ``nixos-container`` has no ``--bind`` and ignores ``/etc/systemd/nspawn``
  files; the start script appends ``${EXTRA_NSPAWN_FLAGS-}`` *unquoted* to the
  ``systemd-nspawn`` command line (seeds/002 "EXTRA_NSPAWN_FLAGS"). Unquoted
  means word splitting and globbing, and the conf is a systemd
  ``EnvironmentFile=`` (quotes and backslashes are interpreted): a bind path
  with whitespace, quotes, backslashes, ``$``, glob characters or ``:`` (the
  nspawn ``SRC:DST`` separator) cannot be expressed, so it is refused
  (``check_bind_path``). nspawn also refuses to start when a bind source is
  missing, so the sources are created before every start (``_ensure_sources``).
- ``settings.json`` is bound as a single *file*. A file bind mount pins the
  inode it was started with: replacing the file by rename (the usual atomic
  write) is invisible inside a running container, so the harness restart of
  ``apply_manifest`` would read the old settings. An existing settings file is
  therefore rewritten in place (same inode); only a new one is created by
  rename (``write_settings``).
- ``/etc/systemd/system`` is a symlink into the read-only Nix store on NixOS
  (``environment.etc."systemd/system".source`` in nixos/modules/system/boot/
  systemd.nix), so unit drop-ins cannot go there. The default drop-in
  directory is ``/etc/systemd/system.control`` — persistent, searched before
  ``/etc/systemd/system`` by systemd (systemd.unit(5), "Unit File Load Path"),
  the place ``systemctl set-property`` writes to.

Harness restart without a rebuild uses ``systemctl -M NAME restart
hyperhive-agent.service`` rather than ``nixos-container run NAME -- systemctl
...``: systemctl talks to the container's systemd over machined and returns its
own exit status, while ``run`` goes through ``nsenter`` + ``su -l -c`` with the
argv re-joined into a shell string (nixos-container.pl ``run``).

Every subprocess gets an argv list, never a shell. Builds have no timeout
(a first build can take many minutes); everything else has a generous one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from controller import __version__
from controller.auth.agents import AgentCredentials
from controller.config import Config
from controller.drivers.base import Deployment, LineSink
from controller.drivers.journal import read_journal, run_captured
from controller.drivers.marker import (
    MARKER_FILE,
    atomic_write,
    marker_record,
    observed_from_marker,
    read_json,
    write_marker,
)
from controller.errors import HyperhiveError, PermanentError, TransientError
from controller.model import ObservedAgent, Phase, Resources
from controller.paths import Layout
from schemas.names import MANAGER, MANAGER_CONTAINER, container_name, is_agent_name

logger = logging.getLogger("hyperhive.drivers.nixos_container")

HARNESS_UNIT = "hyperhive-agent.service"
"""The harness's unit inside every container (nix/modules/harness-base.nix)."""

DROPIN_NAME = "50-hyperhive-limits.conf"
DEFAULT_CONF_DIR = Path("/etc/nixos-containers")
DEFAULT_DROPIN_DIR = Path("/etc/systemd/system.control")

CLEARED_KEYS: tuple[str, ...] = (
    "HOST_ADDRESS",
    "LOCAL_ADDRESS",
    "HOST_ADDRESS6",
    "LOCAL_ADDRESS6",
    "HOST_BRIDGE",
    "LOCAL_MAC_ADDRESS",
    "HOST_PORT",
)
"""Conf keys that make the start script give the container its own network namespace."""

TAIL_LINES = 20
"""How many lines of build output a failure message carries."""

START_TIMEOUT = 600.0
"""``systemctl start container@`` waits for the container's READY=1 (first boot activates)."""
STOP_TIMEOUT = 300.0
"""A graceful container shutdown (nspawn turns SIGTERM into SIGRTMIN+3)."""
DESTROY_TIMEOUT = 900.0
"""Terminate + remove the container root (can be large)."""
HARNESS_TIMEOUT = 180.0
"""``systemctl -M NAME restart hyperhive-agent.service`` (Type=notify: waits for READY)."""
QUERY_TIMEOUT = 60.0
"""``list``, ``status``, ``daemon-reload``, ``is-failed``."""

# Anything the start script's unquoted expansion or systemd's EnvironmentFile
# parser would reinterpret, plus nspawn's SRC:DST separator.
_BAD_BIND_CHARS = frozenset("'\"\\`$*?[]:")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")
_CONF_KEY = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")
_MEMORY = re.compile(r"^[0-9]+[KMGT]?$|^infinity$")
_CPU = re.compile(r"^[0-9]+%$")

# Lower-cased fragments of build output that mean "try again later" rather than
# "this configuration is broken" (network, nix-daemon, locks, disk).
TRANSIENT_MARKERS: tuple[str, ...] = (
    "unable to download",
    "could not resolve host",
    "couldn't resolve host",
    "connection refused",
    "connection reset",
    "connection timed out",
    "operation timed out",
    "timeout was reached",
    "http error",
    "temporary failure",
    "cannot connect to socket",
    "cannot connect to daemon",
    "no space left on device",
    "database is locked",
    "could not lock",
    "already exists",
    "interrupted by the user",
)


# ---------------------------------------------------------------- pure helpers


def agent_for_container(container: str) -> str | None:
    """The agent of one of our containers (``hm1nd`` → manager, ``h-alice`` → alice), else None."""
    if container == MANAGER_CONTAINER:
        return MANAGER
    if container.startswith("h-"):
        name = container[2:]
        if name != MANAGER and is_agent_name(name):
            return name
    return None


def split_flake_ref(ref: str) -> tuple[str, str]:
    """Split ``<flake>#<attr>`` exactly as nixos-container.pl does (``/^(.*)#([^#"]+)$/``).

    Raises ``PermanentError`` when there is no attr: nixos-container would
    silently build ``#container`` instead.
    """
    m = re.match(r"^(.*)#([^#\"]+)$", ref)
    if m is None or not m.group(1):
        raise PermanentError(
            f"flake ref {ref!r} has no '#<attr>': nixos-container would build "
            "'#container'; pass '<flake>#<agent>'"
        )
    return m.group(1), m.group(2)


def check_bind_path(path: Path) -> str:
    """``str(path)`` if it can go into ``EXTRA_NSPAWN_FLAGS``, else ``PermanentError``.

    The start script expands ``EXTRA_NSPAWN_FLAGS`` unquoted (word splitting,
    globbing) after systemd's ``EnvironmentFile=`` parser has interpreted quotes
    and backslashes, and nspawn splits ``--bind=SRC:DST`` on ``:``. So a path
    must be absolute and free of whitespace, control characters, quotes,
    backslashes, ``$``, glob characters and ``:``.
    """
    text = str(path)
    bad = sorted({c for c in text if c in _BAD_BIND_CHARS or c.isspace() or not c.isprintable()})
    if not path.is_absolute() or bad:
        why = "is not absolute" if not path.is_absolute() else f"contains {bad!r}"
        raise PermanentError(
            f"bind path {text!r} {why}: nixos-container's start script expands "
            "EXTRA_NSPAWN_FLAGS unquoted, so it cannot be bind-mounted; move the "
            "hyperhive state/run dirs to a plain path"
        )
    return text


def bind_flags(layout: Layout, agent: str) -> list[str]:
    """The ``systemd-nspawn`` bind flags for ``agent`` (nix/modules/harness-base.nix's table)."""
    binds: list[tuple[str, Path, str]] = [
        ("--bind", layout.agent_sock_dir(agent), "/run/hive"),
        ("--bind", layout.agent_claude(agent), "/root/.claude"),
        ("--bind", layout.agent_state(agent), "/state"),
        ("--bind-ro", layout.agent_settings(agent), "/etc/hyperhive/settings.json"),
        # the harness's default $HYPERHIVE_CREDENTIAL_FILE; a file bind pins the inode, which
        # is fine: the credential only rotates on a recreate, which binds it anew
        ("--bind-ro", layout.agent_credential(agent), "/etc/hyperhive/credential"),
    ]
    if agent == MANAGER:
        binds.append(("--bind", layout.manager_meta, "/meta"))
    return [f"{flag}={check_bind_path(src)}:{dst}" for flag, src, dst in binds]


def rewrite_conf(text: str, flags: Sequence[str]) -> str:
    """``NAME.conf`` with host networking and our binds; every other key kept as is.

    Sets ``PRIVATE_NETWORK=0``, empties ``CLEARED_KEYS`` and sets
    ``EXTRA_NSPAWN_FLAGS="<flags>"`` (double-quoted like the declarative
    containers module writes it). Keys already present are replaced in place
    (duplicates dropped), missing ones appended. Idempotent.
    """
    wanted: dict[str, str] = {"PRIVATE_NETWORK": "0"}
    wanted.update({k: "" for k in CLEARED_KEYS})
    wanted["EXTRA_NSPAWN_FLAGS"] = '"' + " ".join(flags) + '"'
    out: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        m = _CONF_KEY.match(line)
        key = m.group(1) if m else None
        if key is not None and key in wanted:
            if key not in seen:
                seen.add(key)
                out.append(f"{key}={wanted[key]}")
            continue
        out.append(line)
    out.extend(f"{k}={v}" for k, v in wanted.items() if k not in seen)
    return "\n".join(out) + "\n"


def parse_conf(text: str) -> dict[str, str]:
    """``KEY=value`` pairs of a conf (surrounding double quotes removed); for tests and status."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _CONF_KEY.match(line)
        if m is None:
            continue
        value = line[m.end() :].strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        out[m.group(1)] = value
    return out


def render_limits(resources: Resources, container: str = "", agent: str = "") -> str | None:
    """The limits drop-in for ``container@NAME.service``, or None when there are no limits.

    Values are checked against the agent schema's patterns again so that nothing
    but a value can ever reach the unit file.
    """
    lines: list[str] = []
    if resources.memory_max is not None:
        if not _MEMORY.match(resources.memory_max):
            raise PermanentError(f"spec.resources.memoryMax {resources.memory_max!r} is invalid")
        lines.append(f"MemoryMax={resources.memory_max}")
    if resources.cpu_quota is not None:
        if not _CPU.match(resources.cpu_quota):
            raise PermanentError(f"spec.resources.cpuQuota {resources.cpu_quota!r} is invalid")
        lines.append(f"CPUQuota={resources.cpu_quota}")
    if resources.tasks_max is not None:
        if isinstance(resources.tasks_max, bool) or int(resources.tasks_max) < 1:
            raise PermanentError(f"spec.resources.tasksMax {resources.tasks_max!r} is invalid")
        lines.append(f"TasksMax={int(resources.tasks_max)}")
    if not lines:
        return None
    where = f"agents/{agent}/agent.yaml" if agent else "the agent manifest"
    head = [
        f"# Written by hyperhive from spec.resources of {where}"
        + (f" for {container}" if container else "")
        + ".",
        "# Rewritten on every deploy; edit the manifest, not this file.",
        "[Service]",
    ]
    return "\n".join(head + lines) + "\n"


def classify_failure(lines: Sequence[str], returncode: int) -> type[HyperhiveError]:
    """``TransientError`` if worth a retry (signal, network, daemon, locks), else PermanentError.

    Nix evaluation errors and failed builders are deterministic: retrying the
    same commit gives the same result, so the agent is Stalled until its desired
    state changes.
    """
    if returncode < 0:
        return TransientError
    text = "\n".join(lines).lower()
    if any(marker in text for marker in TRANSIENT_MARKERS):
        return TransientError
    return PermanentError


def clean_line(raw: bytes) -> str:
    """One output line as text: decoded, ANSI escapes and progress-overwritten parts removed."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    if "\r" in text:
        text = text.rsplit("\r", 1)[-1]
    return _ANSI.sub("", text)


def write_settings(path: Path, settings: Mapping[str, Any]) -> None:
    """Write the rendered manifest to ``path`` (mode 0444), keeping its inode if it exists.

    The container bind-mounts this single file read-only; a file bind mount
    follows the inode, not the name, so an existing file is rewritten in place
    (open without following symlinks, write, truncate, fsync) and only a new one
    is created atomically by rename. Same JSON layout as the local driver.
    """
    text = json.dumps(dict(settings), indent=1, sort_keys=True) + "\n"
    data = text.encode()
    try:
        path.lstat()
    except FileNotFoundError:
        atomic_write(path, text, 0o444)
        return
    if not path.is_file() or path.is_symlink():
        raise PermanentError(f"{path} exists and is not a regular file; remove it")
    os.chmod(path, 0o644)  # root ignores it; lets a non-root test open the file
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
        os.chmod(path, 0o444)


def _os_error(what: str, path: Path, exc: OSError) -> NoReturn:
    """Raise the driver error for a failed write: permanent for read-only / permission problems."""
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        raise PermanentError(
            f"cannot write {what} {path}: {exc.strerror}; the controller needs it writable "
            "(NixOS: a read-only /etc path, or missing from the service's ReadWritePaths)"
        ) from exc
    raise TransientError(f"cannot write {what} {path}: {exc}") from exc


# ---------------------------------------------------------------- the driver


class NixosContainerDriver:
    """Runs agents as ``nixos-container`` containers. Implements ``controller.drivers.base.Driver``.

    ``conf_dir`` is where nixos-container keeps ``NAME.conf`` (``/etc/nixos-containers``
    from stateVersion 22.05); ``dropin_dir`` where unit drop-ins go (see the module
    docstring for why not ``/etc/systemd/system``); ``bin`` maps ``nixos-container``,
    ``systemctl`` and ``journalctl`` to executables (default: found on PATH).
    Operations on one container are serialized by a per-container lock.
    """

    name = "nixos-container"
    builds_nix = True

    def __init__(
        self,
        layout: Layout,
        config: Config,
        *,
        conf_dir: Path = DEFAULT_CONF_DIR,
        dropin_dir: Path = DEFAULT_DROPIN_DIR,
        bin: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.layout = layout
        self.config = config
        self.conf_dir = Path(conf_dir)
        self.dropin_dir = Path(dropin_dir)
        self.bin: dict[str, str] = {
            "nixos-container": "nixos-container",
            "systemctl": "systemctl",
            "journalctl": "journalctl",
        }
        self.bin.update(bin or {})
        self._clock = clock
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()

    # ------------------------------------------------------------ paths

    def conf_file(self, container: str) -> Path:
        """``<conf_dir>/NAME.conf``."""
        return self.conf_dir / f"{container}.conf"

    def dropin_file(self, container: str) -> Path:
        """``<dropin_dir>/container@NAME.service.d/50-hyperhive-limits.conf``."""
        return self.dropin_dir / f"container@{container}.service.d" / DROPIN_NAME

    def marker_file(self, agent: str) -> Path:
        """``<state>/agents/<a>/deployed.json``."""
        return self.layout.agent_dir(agent) / MARKER_FILE

    def build_log(self, agent: str) -> Path:
        """``<state>/logs/<a>.build.log``: every build's output, appended."""
        return self.layout.log_dir / f"{agent}.build.log"

    def _lock(self, container: str) -> threading.RLock:
        with self._locks_guard:
            return self._locks.setdefault(container, threading.RLock())

    # ------------------------------------------------------------ subprocesses

    def _argv(self, tool: str, *args: str) -> list[str]:
        return [self.bin[tool], *args]

    def _run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` (no shell), capture output; missing binary / timeout → TransientError."""
        logger.debug("run %s", argv)
        try:
            return run_captured(argv, timeout)
        except FileNotFoundError as exc:
            raise TransientError(f"{argv[0]} not found (is it on PATH?): {exc}") from exc
        except subprocess.TimeoutExpired as exc:
            raise TransientError(f"{' '.join(argv)} timed out after {timeout:.0f} s") from exc
        except OSError as exc:
            raise TransientError(f"cannot run {argv[0]}: {exc}") from exc

    def _check(self, argv: Sequence[str], timeout: float) -> str:
        """``_run``, raising ``TransientError`` (with stderr) on a non-zero exit; returns stdout."""
        proc = self._run(argv, timeout)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()[-TAIL_LINES:]
            raise TransientError(
                f"{' '.join(argv)} failed (exit {proc.returncode}): " + " | ".join(msg)
            )
        return proc.stdout

    def _stream(self, argv: Sequence[str], agent: str, log_sink: LineSink) -> tuple[int, list[str]]:
        """Run a build with output streamed line by line; returns (exit code, last lines).

        stdout and stderr are merged (nixos-container prints progress on both),
        read with ``readline`` as lines arrive and handed to ``log_sink``, the
        python logger and ``<state>/logs/<a>.build.log``. The process runs in a
        fresh temporary cwd (nix build's ``./.tmp``), removed afterwards. No
        timeout: a first build can take many minutes.
        """
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        workdir = tempfile.mkdtemp(prefix=f"hyperhive-build-{container_name(agent)}-")
        self.layout.log_dir.mkdir(parents=True, exist_ok=True)
        sink_broken = False
        try:
            with open(self.build_log(agent), "a", encoding="utf-8") as blog:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                blog.write(f"--- {stamp} hyperhive: {' '.join(argv)}\n")
                blog.flush()
                try:
                    proc = subprocess.Popen(
                        list(argv),
                        cwd=workdir,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        close_fds=True,
                    )
                except OSError as exc:
                    raise TransientError(f"cannot run {argv[0]}: {exc}") from exc
                stdout = proc.stdout
                assert stdout is not None
                try:
                    for raw in iter(lambda: stdout.readline(1 << 16), b""):
                        line = clean_line(raw)
                        tail.append(line)
                        logger.info("[%s] %s", agent, line)
                        blog.write(line + "\n")
                        blog.flush()
                        if not sink_broken:
                            try:
                                log_sink(line)
                            except Exception:  # a broken sink must not kill a build
                                sink_broken = True
                                logger.exception("%s: build log sink failed; output goes on", agent)
                    rc = proc.wait()
                except BaseException:
                    proc.terminate()
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    raise
                finally:
                    stdout.close()
                blog.write(f"--- hyperhive: exit {rc}\n")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return rc, list(tail)

    # ------------------------------------------------------------ state

    def _exists(self, container: str) -> bool:
        return self.conf_file(container).exists()

    def _status(self, container: str) -> tuple[str, str]:
        """(``up`` | ``down`` | ``gone`` | ``error``, detail) from ``nixos-container status``."""
        proc = self._run(self._argv("nixos-container", "status", container), QUERY_TIMEOUT)
        out = proc.stdout.strip().splitlines()
        word = out[-1].strip() if out else ""
        if word == "gone":  # printed just before the tool dies for a missing conf
            return "gone", "container does not exist"
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().replace("\n", " | ")
            return "error", f"nixos-container status exited {proc.returncode}: {msg}"
        if word in ("up", "down"):
            return word, ""
        return "error", f"unexpected nixos-container status output {proc.stdout.strip()!r}"

    def _unit_failed(self, container: str) -> bool:
        proc = self._run(
            self._argv("systemctl", "is-failed", f"container@{container}.service"), QUERY_TIMEOUT
        )
        return proc.stdout.strip() == "failed"

    def observe(self) -> dict[str, ObservedAgent]:
        """Our containers (``h-*``, ``hm1nd``) from ``nixos-container list``, keyed by agent.

        Phase from ``nixos-container status``: ``up`` → running; ``down`` →
        stopped, or failed when ``systemctl is-failed container@NAME`` says so;
        ``gone`` (removed between list and status) → absent; any other non-zero
        exit → failed with the tool's message. Digests from ``deployed.json``.
        """
        out = self._check(self._argv("nixos-container", "list"), QUERY_TIMEOUT)
        result: dict[str, ObservedAgent] = {}
        for container in sorted({c.strip() for c in out.splitlines() if c.strip()}):
            agent = agent_for_container(container)
            if agent is None:
                continue
            word, detail = self._status(container)
            if word == "up":
                phase = Phase.RUNNING
            elif word == "down":
                if self._unit_failed(container):
                    phase, detail = Phase.FAILED, f"container@{container}.service failed"
                else:
                    phase = Phase.STOPPED
            elif word == "gone":
                phase = Phase.ABSENT
            else:
                phase = Phase.FAILED
            marker = read_json(self.marker_file(agent)) or {}
            if phase is not Phase.ABSENT and not marker:
                detail = "; ".join(filter(None, [detail, "no deployed.json: not deployed by us"]))
            result[agent] = observed_from_marker(agent, phase, marker, detail=detail)
        return result

    # ------------------------------------------------------------ host-side files

    def _ensure_sources(self, agent: str) -> None:
        """Create the bind sources nspawn needs (it fails to start on a missing one).

        New directories: claude/ 0700 (credentials), state/ and the socket dir
        0700; an absent settings.json becomes ``{}`` (0444); an absent broker
        credential is issued (0600; the swarm issues it before a deploy, this
        covers a driver used alone). Existing ones are left alone (the socket
        dir is the API server's).
        """
        lay = self.layout
        dirs: list[tuple[Path, int]] = [
            (lay.agent_claude(agent), 0o700),
            (lay.agent_state(agent), 0o700),
            (lay.agent_sock_dir(agent), 0o700),
        ]
        if agent == MANAGER:
            dirs.append((lay.manager_meta, 0o700))
        try:
            for path, mode in dirs:
                if not path.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    path.chmod(mode)
            settings = lay.agent_settings(agent)
            if not settings.exists():
                atomic_write(settings, "{}\n", 0o444)
            AgentCredentials(lay).ensure(agent)
        except OSError as exc:
            _os_error("bind source", Path(exc.filename or lay.agent_dir(agent)), exc)

    def _write_conf(self, container: str, agent: str) -> bool:
        """Rewrite ``NAME.conf`` (``rewrite_conf``) atomically if it changes; True if it did."""
        flags = bind_flags(self.layout, agent)
        path = self.conf_file(container)
        try:
            old = path.read_text()
        except FileNotFoundError as exc:
            raise TransientError(f"{path} is missing: {container} does not exist") from exc
        new = rewrite_conf(old, flags)
        if new == old:
            return False
        try:
            atomic_write(path, new, 0o644)
        except OSError as exc:
            _os_error("container conf", path, exc)
        logger.info("%s: rewrote %s", container, path)
        return True

    def _write_dropin(self, container: str, agent: str, resources: Resources) -> bool:
        """Write (or remove) the limits drop-in; ``daemon-reload`` only when it changed."""
        path = self.dropin_file(container)
        text = render_limits(resources, container, agent)
        try:
            old: str | None = path.read_text()
        except FileNotFoundError:
            old = None
        if text == old:
            return False
        try:
            if text is None:
                path.unlink()
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
            else:
                atomic_write(path, text, 0o644)
        except OSError as exc:
            _os_error("limits drop-in", path, exc)
        self._check(self._argv("systemctl", "daemon-reload"), QUERY_TIMEOUT)
        return True

    def _remove_dropin(self, container: str) -> None:
        path = self.dropin_file(container)
        if not path.exists():
            return
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            _os_error("limits drop-in", path, exc)
        with contextlib.suppress(OSError):
            path.parent.rmdir()
        self._check(self._argv("systemctl", "daemon-reload"), QUERY_TIMEOUT)

    def _write_marker(self, d: Deployment) -> None:
        version = d.settings.get("hyperhive_version") or __version__
        write_marker(
            self.marker_file(d.agent.name),
            marker_record(d, self._clock(), hyperhive_version=version),
        )

    def _prepare(self, d: Deployment, container: str) -> None:
        """Checks that need no I/O: a valid agent, a flake ref ``#<agent>``, bind paths."""
        agent = d.agent.name
        if agent_for_container(container) != agent:
            raise PermanentError(f"{agent!r} is not a valid agent name for a container")
        _, attr = split_flake_ref(d.flake_ref)
        if attr != agent:
            raise PermanentError(
                f"flake ref {d.flake_ref!r} builds {attr!r}, not the agent {agent!r}"
            )
        bind_flags(self.layout, agent)

    def _configure(self, d: Deployment, container: str) -> None:
        """Everything host-side before a (re)start: sources, settings, conf, drop-in."""
        agent = d.agent.name
        self._ensure_sources(agent)
        try:
            write_settings(self.layout.agent_settings(agent), d.settings)
        except OSError as exc:
            _os_error("settings", self.layout.agent_settings(agent), exc)
        self._write_conf(container, agent)
        self._write_dropin(container, agent, d.agent.manifest.resources)

    # ------------------------------------------------------------ deploy

    def create(self, d: Deployment, log: LineSink) -> None:
        """Build and start an absent container.

        ``nixos-container create NAME --flake <ref>#<agent>`` (streamed); on
        failure the leftover conf is removed and Transient/PermanentError raised
        (``classify_failure``) with the last lines of output. Then sources,
        settings, conf, drop-in, marker, ``nixos-container start``. A container
        that already exists is updated instead (``rebuild``).
        """
        container = container_name(d.agent.name)
        self._prepare(d, container)
        with self._lock(container):
            if self._exists(container):
                log(f"{container} already exists; updating it instead")
                self._rebuild(d, container, log)
                return
            argv = self._argv("nixos-container", "create", container, "--flake", d.flake_ref)
            log(f"building {container}: {' '.join(argv)}")
            rc, tail = self._stream(argv, d.agent.name, log)
            if rc != 0:
                if not any("already exists" in line for line in tail):
                    # not ours to remove when another create got there first
                    self._cleanup_failed_create(container, log)
                self._fail("create", container, rc, tail)
            self._configure(d, container)
            self._write_marker(d)
            self._check(self._argv("nixos-container", "start", container), START_TIMEOUT)
            log(f"{container} started")

    def _cleanup_failed_create(self, container: str, log: LineSink) -> None:
        conf = self.conf_file(container)
        try:
            conf.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            log(f"could not remove the leftover {conf}: {exc}")
            return
        log(f"removed the leftover {conf} of the failed create")

    def _fail(self, verb: str, container: str, rc: int, tail: Sequence[str]) -> NoReturn:
        cls = classify_failure(tail, rc)
        body = "\n".join(tail) if tail else "(no output)"
        raise cls(f"nixos-container {verb} {container} failed (exit {rc}); last lines:\n{body}")

    def rebuild(self, d: Deployment, log: LineSink) -> None:
        """``nixos-container update NAME --flake <ref>`` (streamed), conf, drop-in, marker, restart.

        An absent container is created instead. On a failed build the container
        keeps running its previous system and nothing host-side is changed.
        """
        container = container_name(d.agent.name)
        self._prepare(d, container)
        with self._lock(container):
            if not self._exists(container):
                log(f"{container} does not exist; creating it")
                self.create(d, log)
                return
            self._rebuild(d, container, log)

    def _rebuild(self, d: Deployment, container: str, log: LineSink) -> None:
        argv = self._argv("nixos-container", "update", container, "--flake", d.flake_ref)
        log(f"building {container}: {' '.join(argv)}")
        rc, tail = self._stream(argv, d.agent.name, log)
        if rc != 0:
            self._fail("update", container, rc, tail)
        self._configure(d, container)
        self._write_marker(d)
        self._restart(container)
        log(f"{container} restarted")

    def apply_manifest(self, d: Deployment) -> None:
        """New settings.json (in place, 0444), then restart only the harness inside.

        ``systemctl -M NAME restart hyperhive-agent.service`` when the container
        runs (a stopped one reads the file when it starts). The marker's commit,
        config_digest and web_port are updated; build_digest stays what was built.
        """
        agent = d.agent.name
        container = container_name(agent)
        if agent_for_container(container) != agent:
            raise PermanentError(f"{agent!r} is not a valid agent name for a container")
        bind_flags(self.layout, agent)
        with self._lock(container):
            if not self._exists(container):
                raise TransientError(f"{container} does not exist; it has to be created first")
            self._ensure_sources(agent)
            path = self.layout.agent_settings(agent)
            try:
                write_settings(path, d.settings)
            except OSError as exc:
                _os_error("settings", path, exc)
            word, detail = self._status(container)
            if word == "up":
                self._check(
                    self._argv("systemctl", "-M", container, "restart", HARNESS_UNIT),
                    HARNESS_TIMEOUT,
                )
            elif word == "error":
                raise TransientError(f"{container}: {detail}")
            marker = read_json(self.marker_file(agent)) or {
                "build_digest": None,
                "hyperhive_version": None,
                "has_nix": d.agent.has_nix,
            }
            marker.update(
                commit=d.agent.commit,
                config_digest=d.agent.config_digest,
                web_port=d.web_port,
                deployed_at=self._clock(),
            )
            write_marker(self.marker_file(agent), marker)

    # ------------------------------------------------------------ lifecycle

    def _container(self, name: str) -> str:
        container = container_name(name)
        if agent_for_container(container) != name:
            raise PermanentError(f"{name!r} is not a valid agent name")
        return container

    def _start(self, container: str, agent: str) -> None:
        self._ensure_sources(agent)
        self._write_conf(container, agent)
        self._check(self._argv("nixos-container", "start", container), START_TIMEOUT)

    def _stop(self, container: str) -> None:
        if not self._exists(container):
            return
        word, _ = self._status(container)
        if word in ("down", "gone"):
            return
        self._check(self._argv("nixos-container", "stop", container), STOP_TIMEOUT)

    def _restart(self, container: str) -> None:
        agent = agent_for_container(container)
        assert agent is not None
        self._stop(container)
        self._start(container, agent)

    def start(self, name: str) -> None:
        """Start a stopped container (no-op if up); recreates bind sources and the conf flags first.

        PermanentError if the container does not exist.
        """
        container = self._container(name)
        with self._lock(container):
            if not self._exists(container):
                raise PermanentError(f"{container} does not exist; it has to be created first")
            word, _ = self._status(container)
            if word == "up":
                return
            self._start(container, name)

    def stop(self, name: str) -> None:
        """``nixos-container stop`` (graceful); no-op when stopped or absent."""
        container = self._container(name)
        with self._lock(container):
            self._stop(container)

    def restart(self, name: str) -> None:
        """Stop then start (start rewrites the conf, so the binds are current)."""
        container = self._container(name)
        with self._lock(container):
            if not self._exists(container):
                raise PermanentError(f"{container} does not exist; it has to be created first")
            self._restart(container)

    def destroy(self, name: str) -> None:
        """Stop, ``nixos-container destroy`` and remove conf, drop-in and marker.

        The container's root, profile and GC roots go with it (nixos-container);
        the agent's host dirs (state/, claude/, settings.json) stay for the
        caller's tombstone. No-op for an absent container.
        """
        container = self._container(name)
        with self._lock(container):
            if self._exists(container):
                self._stop(container)
                self._check(self._argv("nixos-container", "destroy", container), DESTROY_TIMEOUT)
                with contextlib.suppress(FileNotFoundError):
                    self.conf_file(container).unlink()
            self._remove_dropin(container)
            with contextlib.suppress(FileNotFoundError):
                self.marker_file(name).unlink()

    # ------------------------------------------------------------ journal

    def journal(self, agent: str, unit: str | None = None, lines: int = 200) -> str:
        """A running agent's container journal (``controller.drivers.journal.read_journal``)."""
        live = [container_name(a) for a, o in self.observe().items() if o.phase is Phase.RUNNING]
        return read_journal(
            container_name(agent), live, unit, lines, journalctl=self.bin["journalctl"]
        )
