"""Harness overhead per turn, measured against the real claude CLI and the fake Messages API.

Run by hand: ``.venv/bin/python bench/turn.py [--turns N] [--mcp] [--gap S] [--stdio]``.

The headline: **turn overhead** = operator send → turn recorded (the message handed to the
stand-in socket → the turn-stats row written), over the floor: the very ``claude -p`` argv
the harness builds, run bare with an empty ``--mcp-config`` (no MCP server), to its exit.
Target ≤ +5 % (issue 10). ``--stdio`` makes claude start the stdio server instead of the
harness-served endpoint; ``--python WRAPPER`` runs another build of it (for before/after).

Two figures, both milliseconds, both pure harness overhead (claude's own work excluded):

- ``recv→spawn``: the recv long poll returned a message → the claude process is started
  (turn bookkeeping, wake prompt, --mcp-config written, argv/env built, fork/exec);
- ``result→recorded``: claude printed its result line → the turn-stats row is written
  (waiting for the process to exit, event-log writes, POST /ack, GET /status, sqlite insert).

The loop runs in-process (``harness.loop.TurnLoop.run_forever``) against a stand-in
socket; each turn is a one-request text reply (``--mcp`` adds a tool call through the
real ``hyperhive-agent mcp`` server, which makes claude's own start-up slower but not
the harness overhead). Also printed: whole-turn wall time, for scale. With ``--gap 0``
(a backlog) recv→spawn also includes waiting for the previous claude process to exit,
which the harness does in the background after recording the previous turn.

Beside them, the CLI's own start-up: ``claude --version`` and the very
``claude -p`` invocation the harness builds, run bare (no harness), wall time to its
result line and to its exit. Last, memory: ``python -m harness serve`` as its own process
(stand-in socket, fake API, its UI on its unix socket ``web.sock`` as in production), its
resident set size sampled while idle and while a turn streams (claude's process tree, which
is not the harness, shown apart). ``--no-memory`` skips that part.

The stand-in socket requires the agent's credential on every request, as the controller
does: the loop and ``serve`` find it at ``HYPERHIVE_CREDENTIAL_FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "component" / "harness"))

from standin import TOKEN, StandIn, UnixHTTPConnection, request, write_credential  # noqa: E402

from harness.config import HarnessEnv, parse_settings  # noqa: E402
from harness.events import Bus, EventLog  # noqa: E402
from harness.loop import Timings, TurnLoop  # noqa: E402
from harness.mcp_http import McpEndpoint  # noqa: E402
from harness.model import ModelStore  # noqa: E402
from harness.turnstats import TurnRow, TurnStats  # noqa: E402
from schemas.client import UnixClient  # noqa: E402
from tests.fakeapi import (  # noqa: E402
    FakeAnthropic,
    Rules,
    find_claude_cli,
    reply_text,
    reply_tool_use,
    rule,
)


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def describe(name: str, values: list[float]) -> str:
    """One table line: median, p95, min, max (ms)."""
    return (
        f"{name:<18} median {statistics.median(values):8.1f}  p95 {pct(values, 95):8.1f}  "
        f"min {min(values):8.1f}  max {max(values):8.1f}"
    )


def _run_bare(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """One ``claude -p`` run, prompt on stdin: ms to its result line and to its exit."""
    to_result = float("nan")
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, cwd=cwd, env=env)  # fmt: skip
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(b"go bare")
    p.stdin.close()
    for line in p.stdout:
        if line.startswith(b'{"type":"result"'):
            to_result = (time.monotonic() - t0) * 1000
    p.wait()
    return to_result, (time.monotonic() - t0) * 1000


def bare_cli(loop: TurnLoop, runs: int, root: Path) -> dict[str, list[float]]:
    """The CLI alone (ms): ``claude --version``; the harness' own ``claude -p`` argv run bare
    (to the result line, to the exit); and the floor: the same argv with an empty
    ``--mcp-config`` (no MCP server at all), to its exit. Runs interleave, so drift in the
    machine's load hits every figure alike."""
    out: dict[str, list[float]] = {k: [] for k in ("version", "result", "exit", "floor")}
    inv = loop._invocation(loop.models.current(), False)
    empty = root / "no-mcp.json"
    empty.write_text('{"mcpServers": {}}')
    floor_argv = [f"--mcp-config={empty}" if a.startswith("--mcp-config=") else a for a in inv.argv]
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([inv.argv[0], "--version"], capture_output=True, env=inv.env, check=True)
        out["version"].append((time.monotonic() - t0) * 1000)
        to_result, to_exit = _run_bare(inv.argv, inv.env, inv.cwd)
        out["result"].append(to_result)
        out["exit"].append(to_exit)
        out["floor"].append(_run_bare(floor_argv, inv.env, inv.cwd)[1])
    return out


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def _tree_rss_mb(pid: int) -> float:
    total = 0.0
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    for k in kids:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += k.memory_info().rss / 2**20
    return total


def memory(cli: Path, root: Path) -> dict[str, Any]:
    """RSS of a ``serve`` process idle and while a turn streams (MiB)."""
    slow = reply_text("streaming " * 400, chunk_delay=0.05, chunk_chars=20)
    script = Rules(rule(slow, contains="stream"), default=reply_text("ok"))
    with FakeAnthropic(script) as api, StandIn(root / "m.sock", agent="alice") as sock:
        state = root / "mstate"
        state.mkdir()
        web = root / "mweb.sock"
        env = api.cli_env(root / "mhome")
        env.update(HYPERHIVE_AGENT="alice", HYPERHIVE_SOCKET=sock.path,
                   HYPERHIVE_STATE_DIR=str(state), HYPERHIVE_WEB_SOCKET=str(web),
                   HYPERHIVE_CREDENTIAL_FILE=str(write_credential(root / "mcredential")),
                   HYPERHIVE_CLAUDE_BIN=str(cli), PYTHONPATH=str(REPO),
                   HYPERHIVE_LOG_LEVEL="WARNING")  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "harness", "serve"], env=env, cwd=state,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

        def state_doc() -> Any:
            conn = UnixHTTPConnection(web, timeout=5)
            try:
                status, doc = request(conn, "GET", "/api/state")
            finally:
                conn.close()
            if status != 200:
                raise OSError(f"GET /api/state: {status} {doc}")
            return doc

        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    state_doc()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            sock.deliver("bob", "warm up")  # imports and caches of a first turn
            while state_doc()["last_turn_ms"] is None:
                time.sleep(0.1)
            time.sleep(1.0)
            idle = []
            for _ in range(20):
                idle.append(_rss_mb(proc.pid))
                time.sleep(0.1)
            sock.deliver("bob", "stream please")
            while state_doc()["turn_state"] != "thinking":
                time.sleep(0.02)
            busy: list[float] = []
            claude: list[float] = []
            while state_doc()["turn_state"] == "thinking":
                busy.append(_rss_mb(proc.pid))
                claude.append(_tree_rss_mb(proc.pid))
                time.sleep(0.1)
            return {
                "idle_mb": statistics.median(idle),
                "streaming_mb": max(busy) if busy else float("nan"),
                "claude_tree_mb": max(claude) if claude else float("nan"),
                "samples": len(busy),
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)


def main() -> int:
    """Run the benchmark; print the table; exit 1 when no claude CLI is installed."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--turns", type=int, default=10, help="measured turns (after one warm-up turn)")
    ap.add_argument("--mcp", action="store_true", help="each turn calls mcp__hyperhive__send once")
    ap.add_argument(
        "--gap",
        type=float,
        default=0.5,
        help="seconds between a turn being recorded and the next message (0 = a backlog: the next "
        "spawn then also waits for the previous claude process to finish exiting)",
    )
    ap.add_argument("--bare", type=int, default=5, help="bare claude runs for the start-up figures")
    ap.add_argument("--no-memory", action="store_true", help="skip the resident-memory part")
    ap.add_argument(
        "--stdio",
        action="store_true",
        help="claude starts the stdio MCP server (hyperhive-agent mcp) each turn instead of "
        "using the harness-served endpoint",
    )
    ap.add_argument(
        "--python",
        default=None,
        help="the interpreter the --mcp-config names for the hyperhive server (default: this "
        "one); a wrapper script here compares another server build",
    )
    args = ap.parse_args()
    cli = find_claude_cli(REPO)
    if cli is None:
        print(
            "no claude CLI found (./hh test installs it, or set HYPERHIVE_CLAUDE_BIN)",
            file=sys.stderr,
        )
        return 1
    rules = [rule(reply_text("done"), tool_result=True)]
    if args.mcp:
        rules.append(
            rule(reply_tool_use("mcp__hyperhive__send", {"to": "bob", "body": "hi"}), contains="go")
        )
    script = Rules(*rules, default=reply_text("ok"))

    with tempfile.TemporaryDirectory() as tmp, FakeAnthropic(script) as api:
        root = Path(tmp)
        state = root / "state"
        state.mkdir()
        with StandIn(root / "a.sock", agent="alice") as sock:
            environ = api.cli_env(root / "home")
            env = HarnessEnv(
                "alice",
                "agent",
                sock.path,
                state,
                None,
                "127.0.0.1",
                None,
                str(cli),
                Path(environ["CLAUDE_CONFIG_DIR"]),
                web_socket=str(root / "web.sock"),
                # the --mcp server the loop starts reads it too
                credential_file=write_credential(root / "credential"),
            )
            settings = parse_settings({"model": "haiku"}, agent="alice", flavor="agent")
            models = ModelStore(state / "hyperhive-model", "haiku")
            bus = Bus(EventLog(state / "hyperhive-events.sqlite"), "haiku")
            stats = TurnStats(state / "hyperhive-turn-stats.sqlite")
            loop = TurnLoop(
                env,
                settings,
                bus,
                stats,
                models,
                environ=environ,
                client=UnixClient(sock.path, token=TOKEN),
            )
            done: list[tuple[TurnRow, Timings]] = []
            got = threading.Event()

            def recorded(row: TurnRow, t: Timings) -> None:
                done.append((row, t))
                got.set()

            if args.python:
                loop.python = args.python
            if not args.stdio:  # what serve does: the harness serves the MCP tools itself
                loop.mcp = McpEndpoint("agent", UnixClient(sock.path, token=TOKEN)).start()
            loop.on_turn_recorded = recorded
            worker = threading.Thread(target=loop.run_forever, daemon=True)
            worker.start()
            spawn: list[float] = []
            record: list[float] = []
            wall: list[float] = []
            send: list[float] = []
            floor_paired: list[float] = []
            empty = root / "no-mcp.json"
            empty.write_text('{"mcpServers": {}}')
            for i in range(args.turns + 1):
                time.sleep(args.gap if i else 0)
                got.clear()
                sent_at = time.monotonic()
                sock.deliver("bob", f"go {i}")
                if not got.wait(120):
                    print("turn timed out", file=sys.stderr)
                    return 1
                took = (time.monotonic() - sent_at) * 1000
                row, t = done[-1]
                if row.result_kind != "ok":
                    print(f"turn {i} {row.result_kind}: {row.note}", file=sys.stderr)
                    return 1
                if i == 0:
                    continue  # warm-up: first session, cold caches
                assert t.recv_to_spawn_ms is not None and t.result_to_recorded_ms is not None
                spawn.append(t.recv_to_spawn_ms)
                record.append(t.result_to_recorded_ms)
                wall.append(float(row.duration_ms))
                send.append(took)
                # the floor right after, so the machine's drifting load hits both alike: the
                # argv of the next turn (--continue, same cwd and session), no MCP server
                inv = loop._invocation(loop.models.current(), True)
                argv = [f"--mcp-config={empty}" if a.startswith("--mcp-config=") else a
                        for a in inv.argv]  # fmt: skip
                floor_paired.append(_run_bare(argv, inv.env, inv.cwd)[1])
            loop.stop()
            loop.wait_idle(10)
            loop.runner.reap(10)
            bare = bare_cli(loop, args.bare, root)
        mem = None if args.no_memory else memory(cli, root)

    mcp = " · one MCP tool call each" if args.mcp else ""
    mcp += " · stdio MCP server" if args.stdio else " · MCP served by the harness"
    print(f"claude {cli} · {args.turns} turns{mcp} · gap {args.gap:g} s (ms)")
    print(describe("recv→spawn", spawn))
    print(describe("result→recorded", record))
    print(describe("whole turn (wall)", wall))
    print(describe("send→recorded", send))
    print(f"the CLI alone, {args.bare} runs (ms):")
    print(describe("claude --version", bare["version"]))
    print(describe("claude -p → result", bare["result"]))
    print(describe("claude -p → exit", bare["exit"]))
    print(describe("floor: no MCP", bare["floor"]))
    print(describe("floor, paired", floor_paired))
    ratios = [t / f for t, f in zip(send, floor_paired, strict=True)]
    ratio = statistics.median(ratios)
    print(
        f"turn overhead: send→recorded {statistics.median(send):.0f} ms over the floor (the "
        f"turn's claude -p argv run bare right after it, no MCP) "
        f"{statistics.median(floor_paired):.0f} ms: median of per-turn ratios ×{ratio:.3f} "
        f"({(ratio - 1) * 100:+.1f} %; target ≤ +5 %)"
    )
    if mem is not None:
        print(
            f"harness RSS: idle {mem['idle_mb']:.1f} MiB · while streaming "
            f"{mem['streaming_mb']:.1f} MiB ({mem['samples']} samples) · claude process tree "
            f"then {mem['claude_tree_mb']:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
