"""The push path and the CLI's start-up, against a real ``hyperhive serve``.

Run by hand: ``.venv/bin/python bench/push.py [--pushes N] [--cli-runs N] [--old-root DIR]``.

Approval push: a real controller (local runtime, the claude CLI and the fake
Messages API as in the e2e story), the manager asks for a spawn of ``b<i>`` over
its socket, the operator tags ``approved/<id>`` in a clone and runs ``git push``.
Timed from just before ``git push`` to

- ``push``: ``git push`` returned (both hooks ran; the agent is watched for meanwhile,
  since the controller may start it before the post-receive hook is done);
- ``running``: a harness process of ``b<i>`` exists (``/proc``, polled every 2 ms);
- ``ui``: ``b<i>``'s web UI answers an HTTP request on its ``web.sock`` (the socket
  the dashboard proxies ``/agents/<name>/`` to; since 2026-12-07 the harness answers
  there before its turn loop is built, ``/api/state`` saying ``"status": "starting"``);
- ``ready``: its ``GET /api/state`` no longer says ``starting`` (the turn loop is built:
  the real state document, the event stream, the actions).

p50 / p95 over ``--pushes`` approvals (targets: running ≤ 0.3 s, ui ≤ 0.6 s, p95).

``--old-root DIR``: a copy of an older tree (``controller/``, ``schemas/``,
``hivehttp/``, e.g. ``git archive <rev> controller schemas hivehttp | tar -x -C DIR``):
every other push runs that tree's hooks instead (the hook scripts in meta.git
are rewritten to point there), so before and after are measured in the same run.

Hooks alone: each installed hook script run by hand with an approval's stdin
line (pre-receive judges it, post-receive pokes the controller), beside
``python -c pass``.

Harness alone: ``python -m harness serve`` started by hand (a stand-in controller
socket), exec → its web UI answers, and the CPU it had used by then.

CLI: wall time of ``hyperhive status`` (against the running controller),
``hyperhive --version`` and ``python -c pass`` (the floor), median and p95 over
``--cli-runs``, with the ratio to the floor (target: status ≤ 80 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.credentials import agent_client  # noqa: E402
from tests.e2e.swarm import Swarm  # noqa: E402
from tests.fakeapi import FakeAnthropic, find_claude_cli, reply_text  # noqa: E402
from tests.realserve import wait_for  # noqa: E402


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def describe(values: list[float]) -> str:
    """``p50 … ms  p95 … ms  max … ms`` of seconds."""
    return (
        f"p50 {pct(values, 50) * 1000:6.0f} ms  p95 {pct(values, 95) * 1000:6.0f} ms  "
        f"max {max(values) * 1000:6.0f} ms  (n={len(values)})"
    )


class ProcWatch:
    """Finds a harness process of one agent by scanning only pids it has not seen yet."""

    def __init__(self) -> None:
        self.seen: set[int] = set(self._pids())

    @staticmethod
    def _pids() -> list[int]:
        return [int(d) for d in os.listdir("/proc") if d.isdigit()]

    def find(self, agent: str) -> bool:
        """True once a process whose environment names ``agent`` runs ``serve``."""
        needle = f"HYPERHIVE_AGENT={agent}\0".encode()
        for pid in self._pids():
            if pid in self.seen:
                continue
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                self.seen.add(pid)
                continue
            if not cmd:
                continue  # not exec'd yet: look again next time
            if needle in env and b"serve" in cmd.split(b"\0"):
                return True
            if b"hyperhive" not in cmd and b"harness" not in cmd and b"bwrap" not in cmd:
                self.seen.add(pid)
        return False


def ui_answers(path: Path) -> bool:
    """True when ``path`` answers ``GET /`` with an HTTP status line (whatever the status)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(path))
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/1.1 ")
    except OSError:
        return False


def state_ready(path: Path) -> bool:
    """True when ``path``'s ``GET /api/state`` answers 200 with a status other than
    ``starting``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5.0)
            s.connect(str(path))
            s.sendall(b"GET /api/state HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
    except OSError:
        return False
    return raw.startswith(b"HTTP/1.1 200") and b'"status": "starting"' not in raw


_INSTALLED: dict[Path, dict[str, str]] = {}
"""meta.git's hook scripts as the controller installed them, by meta.git path."""


def point_hooks_at(meta_git: Path, root: Path, old: bool = False) -> None:
    """Rewrite meta.git's hook scripts so they run the tree at ``root``, as installed (until
    2026-12-08 this bench ran the new tree's hooks as ``python -S``, which the installed
    scripts never did); ``old``: post-receive always starts Python to poke, as it did
    before 2026-12-08 (the pre-receive script's shape, which never changed)."""
    installed = _INSTALLED.setdefault(
        meta_git, {k: (meta_git / "hooks" / k).read_text() for k in ("pre-receive", "post-receive")}
    )
    for kind in ("pre-receive", "post-receive"):
        hook = meta_git / "hooks" / kind
        text = installed[kind]
        if old and kind == "post-receive":
            text = installed["pre-receive"].replace("pre-receive", "post-receive")
        lines = [
            f"PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}}"
            if ln.startswith("PYTHONPATH=")
            else ln
            for ln in text.splitlines()
        ]
        hook.write_text("\n".join(lines) + "\n")


def approvals(s: Swarm, pushes: int, old_root: Path | None) -> dict[str, dict[str, list[float]]]:
    """Approve ``pushes`` spawns by ``git push``; timings by which hooks ran ("new"/"old")."""
    layout_run = s.state / "run"
    manager = agent_client(s.state, "manager")
    s.git("clone", "-q", str(s.state / "meta.git"), str(s.tmp / "m"), cwd=s.tmp)
    out: dict[str, dict[str, list[float]]] = {}
    for i in range(pushes):
        root = old_root if old_root is not None and i % 2 == 1 else REPO
        which = "new" if root == REPO else "old"
        point_hooks_at(s.state / "meta.git", root, old=which == "old")
        name = f"b{i}"
        p = manager.post("/request_spawn", {"name": name})
        pid = p["id"]
        s.git("fetch", "-q", "--tags", "origin")
        s.git("tag", f"approved/{pid}", f"proposal/{pid}")
        watch = ProcWatch()
        web = layout_run / "agents" / name / "web.sock"
        t0 = time.monotonic()
        # watched while git push runs: the pass may start before the push returns
        push = subprocess.Popen(
            ["git", "push", "-q", "origin", f"approved/{pid}"],
            cwd=s.tmp / "m",
            env=s.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        t_push = t_run = t_ui = t_ready = None
        while (t_ready is None or t_push is None) and time.monotonic() - t0 < 30:
            now = time.monotonic() - t0
            if t_push is None and push.poll() is not None:
                if push.returncode != 0:
                    raise RuntimeError(f"git push approved/{pid} failed")
                t_push = now
            if t_run is None and watch.find(name):
                t_run = now
            if t_run is not None and t_ui is None and ui_answers(web):
                t_ui = time.monotonic() - t0
            if t_ui is not None and state_ready(web):
                t_ready = time.monotonic() - t0
            time.sleep(0.002)
        if t_push is None or t_run is None or t_ui is None or t_ready is None:
            raise RuntimeError(f"{name} not running/answering/ready 30 s after the push")
        row = out.setdefault(which, {"push": [], "running": [], "ui": [], "ready": []})
        row["push"].append(t_push)
        row["running"].append(t_run)
        row["ui"].append(t_ui)
        row["ready"].append(t_ready)
        print(
            f"  {which} approved/{pid}: push {t_push * 1000:4.0f} ms, running "
            f"{t_run * 1000:4.0f} ms, ui {t_ui * 1000:4.0f} ms, ready {t_ready * 1000:4.0f} ms",
            flush=True,
        )
    return out


def hooks_alone(s: Swarm, runs: int, old_root: Path | None) -> None:
    """Time meta.git's two hook scripts run by hand with an approval's stdin line.

    pre-receive judges ``approved/<id>`` for an open proposal (nothing is
    written: only git's receive-pack updates refs); post-receive pokes the
    running controller (a pass with nothing to do). Beside ``python -c pass``.
    """
    manager = agent_client(s.state, "manager")
    pid = manager.post("/request_spawn", {"name": "hookbench"})["id"]
    meta_git = s.state / "meta.git"
    commit = s.git("--git-dir", str(meta_git), "rev-parse", f"proposal/{pid}", cwd=s.tmp).strip()
    line = f"{'0' * 40} {commit} refs/tags/approved/{pid}\n"
    env = {**s.env, "GIT_DIR": str(meta_git)}
    floor_cpu: list[float] = []
    floor = statistics.median(wall([sys.executable, "-c", "pass"], env, runs, cpu=floor_cpu))
    fcpu = statistics.median(floor_cpu)
    print(f"  python -c pass         median {floor * 1000:5.0f} ms  cpu {fcpu * 1000:5.1f} ms")
    for which, root in (("new", REPO), ("old", old_root)):
        if root is None:
            continue
        point_hooks_at(meta_git, root, old=which == "old")
        for kind in ("pre-receive", "post-receive"):
            used: list[float] = []
            t = wall([str(meta_git / "hooks" / kind)], env, runs, line, cwd=meta_git, cpu=used)
            med, c = statistics.median(t), statistics.median(used)
            print(
                f"  {which} {kind:18} median {med * 1000:5.0f} ms  p95 {pct(t, 95) * 1000:5.0f} ms"
                f"  ×{med / floor:4.1f} the floor; cpu {c * 1000:5.1f} ms (×{c / fcpu:4.1f})"
            )
    point_hooks_at(meta_git, REPO)


def wall(
    argv: list[str],
    env: dict[str, str],
    runs: int,
    stdin: str = "",
    cwd: Path = Path("/"),
    cpu: list[float] | None = None,
) -> list[float]:
    """Wall times (s) of ``runs`` runs of ``argv`` fed ``stdin`` (each must exit 0); with
    ``cpu``, each run's CPU time (user + system of the process and its children, s) is
    appended to it: on a shared machine the CPU time is the steadier figure.

    ``cwd`` is never the repository: ``python -m`` puts the cwd first on
    ``sys.path``, and an ``--old-root`` run must import the old tree.
    """
    times = []
    for _ in range(runs):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        subprocess.run(
            argv, env=env, check=True, capture_output=True, cwd=cwd, input=stdin.encode()
        )
        times.append(time.monotonic() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if cpu is not None:
            cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return times


def cli(s: Swarm, runs: int, old_root: Path | None) -> None:
    """Print the CLI's wall times beside ``python -c pass``."""
    py = sys.executable
    hh = str(Path(py).parent / "hyperhive")
    state = ["--state-dir", str(s.state)]
    cases: list[tuple[str, list[str], dict[str, str]]] = [
        ("python -c pass", [py, "-c", "pass"], s.env),
        ("hyperhive --version", [hh, "--version"], s.env),
        ("hyperhive status", [hh, *state, "status"], s.env),
    ]
    if old_root is not None:
        old_env = {**s.env, "PYTHONPATH": str(old_root)}
        cases += [
            ("old: --version", [py, "-m", "controller.cli", "--version"], old_env),
            ("old: status", [py, "-m", "controller.cli", *state, "status"], old_env),
        ]
    wall(cases[2][1], cases[2][2], 3)  # warm the page cache and the controller's caches
    floor = floor_cpu = 0.0
    for label, argv, env in cases:
        used: list[float] = []
        t = wall(argv, env, runs, cpu=used)
        med, c = statistics.median(t), statistics.median(used)
        floor = floor or med
        floor_cpu = floor_cpu or c
        print(
            f"  {label:22} median {med * 1000:5.0f} ms  p95 {pct(t, 95) * 1000:5.0f} ms  "
            f"×{med / floor:4.1f} the floor; cpu {c * 1000:5.1f} ms (×{c / floor_cpu:4.1f})"
        )


def harness_alone(runs: int, old_root: Path | None) -> None:
    """Start ``python -m harness serve`` by hand ``runs`` times (a stand-in controller
    socket, no claude run) and time exec → its web UI answers, with the process' CPU time
    when it first answered (read from ``/proc``: steadier than wall time on a shared
    machine). With ``old_root``, the old tree's harness in alternate runs."""
    sys.path.insert(0, str(REPO / "tests" / "component" / "harness"))
    from standin import StandIn, harness_env, write_credential

    roots = [("new", REPO)] + ([("old", old_root)] if old_root is not None else [])
    walls: dict[str, list[float]] = {w: [] for w, _ in roots}
    cpus: dict[str, list[float]] = {w: [] for w, _ in roots}
    tick = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory(prefix="hh-harness-") as d:
        tmp = Path(d)
        sock = StandIn(tmp / "alice.sock", agent="alice").start()
        cred = write_credential(tmp / "credential")
        try:
            for i in range(runs):
                for which, root in roots:
                    state, web = tmp / f"state-{which}-{i}", tmp / f"web-{which}-{i}.sock"
                    state.mkdir()
                    env = harness_env(sock.path, cred, state, web, tmp / "home", root)
                    t0 = time.monotonic()
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "harness", "serve"],
                        env=env,
                        cwd=state,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    try:
                        while not ui_answers(web):
                            if time.monotonic() - t0 > 30:
                                raise RuntimeError(f"{which} harness: no web UI after 30 s")
                            time.sleep(0.002)
                        walls[which].append(time.monotonic() - t0)
                        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1]
                        utime, stime = fields.split()[11:13]
                        cpus[which].append((int(utime) + int(stime)) / tick)
                    finally:
                        proc.send_signal(signal.SIGTERM)
                        proc.wait(30)
        finally:
            sock.stop()
    for which, _ in roots:
        w, c = walls[which], cpus[which]
        print(
            f"  {which} exec → web UI answers  median {statistics.median(w) * 1000:5.0f} ms"
            f"  p95 {pct(w, 95) * 1000:5.0f} ms; cpu by then {statistics.median(c) * 1000:5.0f} ms"
        )


def main() -> int:
    """Run the bench; prints the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pushes", type=int, default=10)
    ap.add_argument("--cli-runs", type=int, default=20)
    ap.add_argument("--old-root", type=Path, help="also run the hooks of this older tree")
    args = ap.parse_args()
    claude = find_claude_cli(REPO)
    if claude is None:
        print("the claude CLI is not installed (npm ci, or HYPERHIVE_CLAUDE_BIN)", file=sys.stderr)
        return 2
    old_root = args.old_root.resolve() if args.old_root else None
    pushes = args.pushes * (2 if old_root else 1)
    api = FakeAnthropic(lambda req: reply_text("ok.")).start()
    with tempfile.TemporaryDirectory(prefix="hh-push-") as d:
        s = Swarm.prepare(Path(d), api, claude, agent_ports=pushes + 2)
        try:
            s.start()
            wait_for("the manager running", lambda: s.phase("manager") == "running", timeout=60)
            print(f"approval push → agent running / UI answering ({pushes} pushes)")
            res = approvals(s, pushes, old_root)
            for which, row in sorted(res.items()):
                for what in ("push", "running", "ui", "ready"):
                    print(f"  {which} {what:8} {describe(row[what])}")
            print(f"hooks alone ({args.cli_runs} runs each)")
            hooks_alone(s, args.cli_runs, old_root)
            print(f"CLI wall time ({args.cli_runs} runs each)")
            cli(s, args.cli_runs, old_root)
            print(f"the harness alone ({args.cli_runs} starts each)")
            harness_alone(args.cli_runs, old_root)
        finally:
            if s.proc is not None:
                s.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    s.proc.wait(timeout=30)
                if s.proc.poll() is None:
                    s.proc.kill()
            for pids in s.harness_procs().values():
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.killpg(os.getpgid(pid), signal.SIGKILL)
            api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
