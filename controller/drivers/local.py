"""The ``local`` runtime: every agent is a ``python -m harness serve`` process on this host.

The embedded default where ``nixos-container`` is absent (a laptop, CI, a demo).
agent.nix is not built here (status says so); the manifest is rendered into
settings.json and the harness restarted, exactly as in a container.

Per agent ``<a>`` (paths from ``controller.paths.Layout``):

- ``<state>/agents/<a>/state/``     the harness's cwd and ``HYPERHIVE_STATE_DIR``
- ``<state>/agents/<a>/claude/``    ``CLAUDE_CONFIG_DIR`` (mode 0700)
- ``<state>/agents/<a>/home/``      ``HOME``: the agent's own, so tools writing
  ``~/.gitconfig``, ``~/.cache`` or ``~/.npm`` never touch the operator's home
- ``<state>/agents/<a>/settings.json``  rendered manifest, atomic write, mode 0444
- ``<state>/agents/<a>/harness.pid``    ``{"pid", "create_time", "pgid", "argv", "started_at"}``
- ``<state>/agents/<a>/deployed.json``  the deployed marker (``controller.drivers.marker``)
- ``<state>/logs/<a>.log``              stdout + stderr, appended

Processes start in their own session (``start_new_session``), so they outlive a
controller restart; ``observe`` finds them again from harness.pid and checks the
process create time so a reused pid is never mistaken for the agent. A pid file
whose process is gone means the harness died on its own (phase ``failed``);
``stop`` removes the pid file (phase ``stopped``). ``destroy`` stops and removes
pid file and marker; state/, claude/, home/ and the web-port file stay in place
(the swarm moves them to a tombstone).

Sandbox (``sandbox=True``, config ``local_sandbox``, on by default): when ``bwrap``
is on PATH and can build a sandbox here, the harness runs under bubblewrap
(``controller.drivers.bwrap``): the host read-only, private ``/tmp``, ``/dev``,
``/proc`` and pid namespace, an empty ``/run``; empty ``/home``, ``/root`` and
controller's ``$HOME`` (only the dirs that run the harness and claude are bound
back, never a whole home); no view of ``<state>`` or ``<run>`` except the agent's
own dir (read-only: settings.json, its credential) and its ``state/``,
``claude/``, ``home/`` and socket dir (plus the manager's meta clone) read-write.
The network is shared (the Messages API may be on loopback). Without a working
``bwrap`` it runs unsandboxed, says so in its log, and ``isolation()`` reports it
(status condition ``Isolated=False``, ``NoSandbox``).

Logs: ``<state>/logs/<a>.log`` is rotated to ``<a>.log.1`` when it passes
``log_max_bytes`` — at start, and by ``rotate_logs`` (the crash-watch tick) for a
running harness (copy, then truncate in place: the harness writes with
``O_APPEND``, so it carries on at the start of the emptied file).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from controller.config import Config
from controller.drivers import bwrap as bw
from controller.drivers.base import Deployment, LineSink
from controller.drivers.marker import (
    MARKER_FILE,
    atomic_write,
    marker_record,
    observed_from_marker,
    read_json,
    write_marker,
)
from controller.errors import Invalid, PermanentError, TransientError
from controller.model import ObservedAgent, Phase
from controller.otel_env import AGENT_OTEL
from controller.paths import Layout
from controller.status import Isolation
from schemas.names import MANAGER, is_agent_name

PID_FILE = "harness.pid"
RACY_NS = 50_000_000
"""An agent dir changed less than this long ago (ns) is re-read on every observe."""
DEFAULT_ARGV: tuple[str, ...] = (sys.executable, "-m", "harness", "serve")
PASS_PREFIXES = ("ANTHROPIC_", "CLAUDE_CODE_")
PASS_NAMES = (
    "HYPERHIVE_CLAUDE_BIN",
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NIX_SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)
NOT_BUILT = "agent.nix is not built under the local runtime"
HARNESS_UNIT = "hyperhive-agent.service"
MAX_JOURNAL_LINES = 5000
LOG_MAX_BYTES = 16 * 1024 * 1024


def agent_env(
    layout: Layout,
    agent: str,
    web_port: int,
    base_env: Mapping[str, str],
) -> dict[str, str]:
    """The harness environment (docs/architecture.md "Harness process contract").

    Passes through ``ANTHROPIC_*``, ``CLAUDE_CODE_*``, the ``OTEL_*`` variables of
    ``controller.otel_env.AGENT_OTEL`` (never the collector's headers or client
    keys: docs/observability.md), ``HYPERHIVE_CLAUDE_BIN``,
    ``PATH``, locale, TZ, TMPDIR, PYTHONPATH, CA bundles and proxies from
    ``base_env``; nothing else of the controller's environment leaks in.
    ``HOME`` is the agent's own ``<state>/agents/<a>/home``;
    ``HYPERHIVE_CREDENTIAL_FILE`` its broker credential, ``HYPERHIVE_WEB_SOCKET`` the
    unix socket its web UI serves on. The manager also gets ``HYPERHIVE_META_DIR``
    (its working clone of the meta repo).
    """
    env = {
        k: v
        for k, v in base_env.items()
        if k in PASS_NAMES or k in AGENT_OTEL or any(k.startswith(p) for p in PASS_PREFIXES)
    }
    env.setdefault("PATH", os.defpath)
    env.update(
        {
            "HYPERHIVE_AGENT": agent,
            "HYPERHIVE_FLAVOR": "manager" if agent == MANAGER else "agent",
            "HYPERHIVE_SOCKET": str(layout.agent_sock(agent)),
            "HYPERHIVE_STATE_DIR": str(layout.agent_state(agent)),
            "HYPERHIVE_SETTINGS": str(layout.agent_settings(agent)),
            "HYPERHIVE_CREDENTIAL_FILE": str(layout.agent_credential(agent)),
            "HYPERHIVE_WEB_SOCKET": str(layout.agent_web_sock(agent)),
            "HYPERHIVE_WEB_HOST": "127.0.0.1",
            "HYPERHIVE_WEB_PORT": str(web_port),
            "HYPERHIVE_RUNTIME": "local",
            "CLAUDE_CONFIG_DIR": str(layout.agent_claude(agent)),
            "HOME": str(layout.agent_dir(agent) / "home"),
            "PYTHONUNBUFFERED": "1",
            "GIT_AUTHOR_NAME": agent,
            "GIT_AUTHOR_EMAIL": f"{agent}@hyperhive.local",
            "GIT_COMMITTER_NAME": agent,
            "GIT_COMMITTER_EMAIL": f"{agent}@hyperhive.local",
        }
    )
    if agent == MANAGER:
        env["HYPERHIVE_META_DIR"] = str(layout.manager_meta)
    return env


class LocalDriver:
    """Runs agents as local processes. Implements ``controller.drivers.base.Driver``.

    ``env`` is the controller's environment to pass through from (default
    ``os.environ``); ``argv`` the harness command (tests use a stand-in);
    ``stop_timeout`` seconds between SIGTERM and SIGKILL; ``start_grace`` seconds
    a fresh process must survive for a start to count as successful; ``sandbox``
    runs it under bubblewrap when ``bwrap`` exists and works (the controller passes
    config ``local_sandbox``, on by default; False here so unit tests opt in);
    ``log_max_bytes`` is where ``<a>.log`` rotates.
    """

    name = "local"
    builds_nix = False

    def __init__(
        self,
        layout: Layout,
        config: Config,
        env: Mapping[str, str] | None = None,
        *,
        argv: Sequence[str] = DEFAULT_ARGV,
        stop_timeout: float = 10.0,
        start_grace: float = 0.3,
        sandbox: bool = False,
        log_max_bytes: int = LOG_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.layout = layout
        self.config = config
        self.env: Mapping[str, str] = dict(os.environ if env is None else env)
        self.argv = tuple(argv)
        self.stop_timeout = stop_timeout
        self.start_grace = start_grace
        self.sandbox = sandbox
        self.log_max_bytes = log_max_bytes
        self._clock = clock
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._procs_lock = threading.Lock()
        self._bwrap: tuple[str | None, str] | None = None
        self._bwrap_lock = threading.Lock()
        self._generation = 0
        self._agents_root = str(layout.state / "agents")
        self._gen_lock = threading.Lock()
        # agent dir -> ((inode, mtime ns), marker, pid info): observe re-reads changed dirs only
        self._files: dict[str, tuple[tuple[int, int], Any, Any]] = {}

    # ------------------------------------------------------------ paths

    def pid_file(self, agent: str) -> Path:
        """``<state>/agents/<a>/harness.pid``."""
        return self.layout.agent_dir(agent) / PID_FILE

    def marker_file(self, agent: str) -> Path:
        """``<state>/agents/<a>/deployed.json``."""
        return self.layout.agent_dir(agent) / MARKER_FILE

    def log_file(self, agent: str) -> Path:
        """``<state>/logs/<a>.log`` (stdout + stderr of the harness)."""
        return self.layout.log_dir / f"{agent}.log"

    def home_dir(self, agent: str) -> Path:
        """``<state>/agents/<a>/home``: the agent's HOME."""
        return self.layout.agent_dir(agent) / "home"

    # ------------------------------------------------------------ observe

    def _reap(self) -> None:
        """Poll our children; an exit noticed here is a driver event (``generation``)."""
        with self._procs_lock:
            procs = list(self._procs.values())
        for proc in procs:
            self._poll(proc)

    def _poll(self, proc: subprocess.Popen[bytes]) -> bool:
        """True while ``proc`` runs; its exit (reaped here) bumps ``generation``."""
        if proc.returncode is not None:
            return False
        if proc.poll() is None:
            return True
        self._bump()
        return False

    def _bump(self) -> None:
        with self._gen_lock:
            self._generation += 1

    def generation(self) -> int:
        """A counter that moves whenever what ``observe`` returns may have changed through
        this driver: a start, stop, destroy or deploy, or one of its children exiting.

        Cheap (one ``waitid`` probe while no child exited): the swarm serves requests from
        its cached observation while this stays the same. A harness this driver did not
        start (it survived a controller restart) dying is not seen here; the crash watch's
        own ``observe`` finds it.
        """
        try:
            exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            exited = None
        if exited is not None:
            self._reap()
        return self._generation

    def _files_of(self, d: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """``(marker, pid info)`` of agent dir ``d``, re-read only when the dir changed.

        Both files are only ever replaced by rename or unlinked, which moves the dir's
        mtime; an mtime within ``RACY_NS`` of now is not trusted (the clock the kernel
        stamps with is coarse: two changes in one tick leave the same mtime).
        """
        try:
            st = os.stat(d)
        except OSError:
            self._files.pop(d, None)
            return None, None
        key = (st.st_ino, st.st_mtime_ns)
        cached = self._files.get(d)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        marker = read_json(Path(d, MARKER_FILE))
        info = read_json(Path(d, PID_FILE))
        if time.time_ns() - st.st_mtime_ns > RACY_NS:
            self._files[d] = (key, marker, info)
        else:
            self._files.pop(d, None)
        return marker, info

    def _alive(self, info: Mapping[str, Any], agent: str | None = None) -> bool:
        """Whether the process ``info`` (a pid file) records still runs; ``agent`` names
        whose pid file it is (its own child is then probed with ``waitpid``)."""
        try:
            pid = int(info["pid"])
            recorded = float(info["create_time"])
        except (KeyError, TypeError, ValueError):
            return False
        proc = self._procs.get(agent) if agent is not None else None
        if proc is not None and proc.pid == pid:
            # our own child: waitpid says it all (an exited child is reaped here, not a zombie)
            return self._poll(proc)
        stat = _proc_stat(pid)
        if stat is not None:
            state, started = stat
            if abs(started - recorded) > 0.05:
                return False  # the pid was reused by another process
            return state != "Z"
        try:
            ps = psutil.Process(pid)
            if abs(ps.create_time() - recorded) > 0.05:
                return False
            return ps.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def pid(self, agent: str) -> int | None:
        """The live harness pid of ``agent``, or None."""
        self._reap()
        info = read_json(self.pid_file(agent))
        if info is None or not self._alive(info, agent):
            return None
        return int(info["pid"])

    def observe(self) -> dict[str, ObservedAgent]:
        """Every agent with a deployed marker or a pid file, keyed by name.

        Per agent: one ``stat`` of its dir (the marker and pid file are re-read only when
        it changed) and one liveness probe (``waitpid`` for our own children, one read
        of ``/proc/<pid>/stat`` for others).
        """
        self._reap()
        root = self.layout.state / "agents"
        out: dict[str, ObservedAgent] = {}
        try:
            with os.scandir(root) as it:
                names = sorted(e.name for e in it if e.is_dir(follow_symlinks=True))
        except FileNotFoundError:
            return out
        base = str(root)
        for name in names:
            if not is_agent_name(name):
                continue
            marker, info = self._files_of(f"{base}/{name}")
            d = root / name
            if marker is None and info is None:
                continue
            marker = marker or {}
            notes: list[str] = []
            if info is not None and self._alive(info, name):
                phase = Phase.RUNNING
                since = float(info.get("started_at") or info.get("create_time") or 0) or None
                notes.append(f"pid {info['pid']}")
            elif info is not None:
                phase = Phase.FAILED
                since = _mtime(d / PID_FILE)
                proc = self._procs.get(name)
                code = proc.returncode if proc is not None else None
                rc = f" with code {code}" if code is not None else ""
                notes.append(f"harness exited{rc}; see {self.log_file(name)}")
            else:
                phase = Phase.STOPPED
                since = _mtime(d / MARKER_FILE)
            if marker.get("has_nix"):
                notes.append(NOT_BUILT)
            out[name] = observed_from_marker(
                name, phase, marker, since=since, detail="; ".join(notes)
            )
        return out

    # ------------------------------------------------------------ deploy

    def _prepare(self, agent: str) -> None:
        self.layout.agent_state(agent).mkdir(parents=True, exist_ok=True)
        claude = self.layout.agent_claude(agent)
        claude.mkdir(parents=True, exist_ok=True)
        claude.chmod(0o700)
        self.home_dir(agent).mkdir(parents=True, exist_ok=True)
        self.layout.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _write_deployment(self, d: Deployment) -> None:
        name = d.agent.name
        self._prepare(name)
        atomic_write(
            self.layout.agent_settings(name),
            json.dumps(d.settings, indent=1, sort_keys=True) + "\n",
            0o444,
        )
        write_marker(self.marker_file(name), marker_record(d, self._clock()))
        self._bump()

    def create(self, d: Deployment, log: LineSink) -> None:
        """Write settings + marker and start the harness (an already running one is restarted)."""
        if d.agent.has_nix:
            log(f"{d.agent.name}: {NOT_BUILT}")
        self._write_deployment(d)
        self.stop(d.agent.name)
        self._spawn(d.agent.name)

    def rebuild(self, d: Deployment, log: LineSink) -> None:
        """No build under this runtime: new settings + marker, then restart the harness."""
        log(f"{d.agent.name}: {NOT_BUILT}; restarting the harness with the new settings")
        self._write_deployment(d)
        self.stop(d.agent.name)
        self._spawn(d.agent.name)

    def apply_manifest(self, d: Deployment) -> None:
        """Write new settings + marker and restart the harness."""
        self._write_deployment(d)
        self.stop(d.agent.name)
        self._spawn(d.agent.name)

    # ------------------------------------------------------------ lifecycle

    def bwrap(self) -> tuple[str | None, str]:
        """``(path, "")`` when bubblewrap is usable, else ``(None, why not)``; probed once.

        ``why`` is empty when the sandbox is off by configuration.
        """
        with self._bwrap_lock:
            if self._bwrap is None:
                if not self.sandbox:
                    self._bwrap = (None, "")
                elif (path := bw.find_bwrap(self.env)) is None:
                    self._bwrap = (None, "bwrap is not installed")
                elif (err := bw.probe(path, self.env)) is not None:
                    self._bwrap = (None, err)
                else:
                    self._bwrap = (path, "")
            return self._bwrap

    def sandbox_paths(self, agent: str) -> bw.SandboxPaths:
        """What ``agent``'s sandbox hides and binds back (``controller.drivers.bwrap``)."""
        lay = self.layout
        writable = [
            lay.agent_state(agent),
            lay.agent_claude(agent),
            self.home_dir(agent),
            lay.agent_sock_dir(agent),
        ]
        if agent == MANAGER:
            writable.append(lay.manager_meta)
        return bw.SandboxPaths(
            hidden=(lay.state, lay.run),
            read_only=(lay.agent_dir(agent),),
            writable=tuple(writable),
            chdir=lay.agent_state(agent),
            homes=bw.home_dirs(self.env),
        )

    def command(self, agent: str) -> list[str]:
        """The argv that runs ``agent``'s harness: ``self.argv``, under ``bwrap`` when sandboxed.

        See ``controller.drivers.bwrap`` for what the sandbox shows. The process stays
        in the process group the driver signals (stop), and its outer ``bwrap`` is
        the pid the driver records, so stop / observe work unchanged.
        """
        argv = list(self.argv)
        path, _ = self.bwrap()
        if path is None:
            return argv
        env = agent_env(self.layout, agent, 0, self.env)
        return bw.sandbox_argv(path, self.sandbox_paths(agent), argv, env)

    def isolation(self, agent: str) -> Isolation:
        """How ``agent`` is isolated: from its running process's argv, else the next start's.

        ``Bubblewrap`` (True) or ``NoSandbox`` (False, the message says how to fix it).
        A harness started before bwrap was installed stays ``NoSandbox`` until restarted.
        """
        _, info = self._files_of(f"{self._agents_root}/{agent}")
        if info is not None and self._alive(info, agent) and isinstance(info.get("argv"), list):
            sandboxed = bool(info["argv"]) and os.path.basename(str(info["argv"][0])) == "bwrap"
            if sandboxed:
                return Isolation(
                    True,
                    "Bubblewrap",
                    "runs under bubblewrap: own pid namespace, only its own files and socket",
                )
            path, why = self.bwrap()
            if path is not None:
                return Isolation(
                    False,
                    "NoSandbox",
                    "started without a sandbox; restart it to run it under bubblewrap",
                )
            return self._no_sandbox(why)
        path, why = self.bwrap()
        if path is not None:
            return Isolation(
                True,
                "Bubblewrap",
                "starts under bubblewrap: own pid namespace, only its own files and socket",
            )
        return self._no_sandbox(why)

    @staticmethod
    def _no_sandbox(why: str) -> Isolation:
        if not why:
            return Isolation(
                False,
                "NoSandbox",
                "local_sandbox is off in the config: it can "
                "read other agents' files and the controller's state",
            )
        return Isolation(
            False,
            "NoSandbox",
            f"{why}: it runs unsandboxed and can read other "
            "agents' files and the controller's state; install bubblewrap (bwrap) "
            "and restart the controller",
        )

    def _spawn(self, agent: str) -> None:
        settings = read_json(self.layout.agent_settings(agent))
        if settings is None or read_json(self.marker_file(agent)) is None:
            raise PermanentError(f"{agent}: never deployed (no settings.json); run a reconcile")
        try:
            web_port = int(settings["web_port"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(f"{agent}: settings.json has no valid web_port") from exc
        self._prepare(agent)
        self.layout.agent_sock_dir(agent).mkdir(parents=True, exist_ok=True)
        argv = self.command(agent)
        env = agent_env(self.layout, agent, web_port, self.env)
        path, why = self.bwrap()
        env["HYPERHIVE_SANDBOX"] = "bwrap" if path else f"none ({why or 'local_sandbox is off'})"
        if path:
            # the controller's TMPDIR is hidden or read-only inside; /tmp is private and writable
            env["TMPDIR"] = "/tmp"
        log_path = self.log_file(agent)
        self._rotate(log_path, copy=False)
        with open(log_path, "ab") as fh:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            fh.write(f"--- {stamp} hyperhive: starting {' '.join(argv)}\n".encode())
            if self.sandbox and path is None:
                fh.write(f"--- {stamp} hyperhive: NOT sandboxed: {why}\n".encode())
            fh.flush()
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=self.layout.agent_state(agent),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise TransientError(f"{agent}: cannot start {argv[0]}: {exc}") from exc
        with self._procs_lock:
            self._procs[agent] = proc
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            create_time = 0.0
        info = {
            "pid": proc.pid,
            "pgid": proc.pid,
            "create_time": create_time,
            "argv": argv,
            "started_at": self._clock(),
        }
        atomic_write(self.pid_file(agent), json.dumps(info) + "\n", 0o600)
        self._bump()
        deadline = time.monotonic() + self.start_grace
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        if proc.poll() is not None:
            tail = _tail(log_path, 5)
            raise TransientError(
                f"{agent}: the harness exited at start with code {proc.returncode}"
                + (f"; last log lines: {tail}" if tail else f"; see {log_path}")
            )

    def start(self, name: str) -> None:
        """Start a deployed, stopped agent (no-op if running). PermanentError if never deployed."""
        if self.pid(name) is not None:
            return
        self._spawn(name)

    def stop(self, name: str) -> None:
        """SIGTERM the harness's process group, SIGKILL after ``stop_timeout``; drop pid file."""
        self._reap()
        pid_path = self.pid_file(name)
        info = read_json(pid_path)
        if info is None:
            with contextlib.suppress(FileNotFoundError):
                pid_path.unlink()
            return
        if self._alive(info, name):
            pid = int(info["pid"])
            pgid = int(info.get("pgid") or pid)
            own_group = pgid == pid and pgid != os.getpgrp()
            deadline = time.monotonic() + self.stop_timeout
            self._signal(pid, pgid, signal.SIGTERM)
            stopped = self._wait(name, pid, self.stop_timeout)
            # under bwrap the recorded pid is bwrap's monitor, which dies at once on
            # SIGTERM while the harness inside is still shutting down: wait for the group
            if stopped and own_group:
                stopped = _wait_group(pgid, deadline)
            if not stopped:
                self._signal(pid, pgid, signal.SIGKILL)
                self._wait(name, pid, 5.0)
            if own_group:
                # leftovers of the group (claude, MCP servers) that ignored SIGTERM
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            pid_path.unlink()
        with self._procs_lock:
            self._procs.pop(name, None)
        self._bump()
        with contextlib.suppress(OSError), open(self.log_file(name), "ab") as fh:
            fh.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} hyperhive: stopped\n".encode())

    @staticmethod
    def _signal(pid: int, pgid: int, sig: signal.Signals) -> None:
        try:
            if pgid == pid and pgid != os.getpgrp():
                os.killpg(pgid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _wait(self, name: str, pid: int, timeout: float) -> bool:
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid:
            try:
                proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        try:
            psutil.Process(pid).wait(timeout)
        except psutil.TimeoutExpired:
            return False
        except psutil.Error:
            pass
        return True

    def restart(self, name: str) -> None:
        """Stop then start."""
        self.stop(name)
        self._spawn(name)

    def destroy(self, name: str) -> None:
        """Stop and forget the agent (pid file + marker); its dirs and web-port file stay."""
        self.stop(name)
        for f in (self.pid_file(name), self.marker_file(name)):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        self._bump()

    # ------------------------------------------------------------ logs

    def journal(self, agent: str, unit: str | None = None, lines: int = 200) -> str:
        """The last ``lines`` lines of ``<state>/logs/<agent>.log`` ("" when there is none).

        ``unit`` may only be the harness (``hyperhive-agent.service``, the one
        unit a local agent has) or None; ``lines`` is 1..5000 — else ``Invalid``.
        """
        if not is_agent_name(agent):
            raise Invalid(f"invalid agent name {agent!r}", "name")
        if unit not in (None, "", HARNESS_UNIT):
            raise Invalid(
                f"unit must be {HARNESS_UNIT} (the harness: the only unit of a local agent)",
                "unit",
            )
        if isinstance(lines, bool) or not 1 <= lines <= MAX_JOURNAL_LINES:
            raise Invalid(f"lines must be between 1 and {MAX_JOURNAL_LINES}", "lines")
        return tail_lines(self.log_file(agent), lines)

    def _rotate(self, path: Path, copy: bool) -> bool:
        """``path`` → ``path.1`` when larger than ``log_max_bytes``; True if rotated.

        ``copy``: copy then truncate in place (a running writer keeps its fd);
        else rename (nobody writes to it).
        """
        try:
            if path.stat().st_size <= self.log_max_bytes:
                return False
        except OSError:
            return False
        old = path.with_name(path.name + ".1")
        if copy:
            shutil.copyfile(path, old)
            os.truncate(path, 0)
        else:
            os.replace(path, old)
        return True

    def rotate_logs(self) -> list[str]:
        """Rotate every agent log over ``log_max_bytes`` (copy + truncate); the agents done."""
        done: list[str] = []
        try:
            logs = sorted(self.layout.log_dir.glob("*.log"))
        except OSError:
            return done
        for path in logs:
            if self._rotate(path, copy=True):
                done.append(path.stem)
        return done


def _wait_group(pgid: int, deadline: float) -> bool:
    """Wait until no process is left in group ``pgid`` (True) or ``deadline`` passes."""
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_BOOT_TIME: list[float] = []


def _proc_stat(pid: int) -> tuple[str, float] | None:
    """``(state letter, start time in unix seconds)`` of ``pid`` from ``/proc/<pid>/stat``
    (psutil's formula: boot time + start ticks / CLK_TCK); None without /proc or pid.

    One read instead of psutil's several: observe runs this once per agent.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields start after the last ")"
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        state, ticks = fields[0].decode(), int(fields[19])
    except (IndexError, ValueError):
        return None
    if not _BOOT_TIME:
        _BOOT_TIME.append(psutil.boot_time())
    return state, _BOOT_TIME[0] + ticks / _CLK_TCK


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def tail_lines(path: Path, lines: int, block: int = 65536) -> str:
    """The last ``lines`` lines of ``path`` (read backwards by blocks; "" if it is missing)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 — closed below
    except OSError:
        return ""
    with fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        pos = end
        data = b""
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    rows = data.decode(errors="replace").splitlines()
    return "\n".join(rows[-lines:]) + ("\n" if rows else "")


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4096))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    rows = [r for r in text.splitlines() if r and not r.startswith("--- ")]
    return " | ".join(rows[-lines:])
