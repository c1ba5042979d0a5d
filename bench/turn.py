"""Harness overhead per turn, measured against the real claude CLI and the fake Messages API.

Run by hand: ``.venv/bin/python bench/turn.py [--turns N] [--mcp]``.

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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "component" / "harness"))

from standin import StandIn  # noqa: E402

from harness.config import HarnessEnv, parse_settings  # noqa: E402
from harness.events import Bus, EventLog  # noqa: E402
from harness.loop import Timings, TurnLoop  # noqa: E402
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
                0,
                str(cli),
                Path(environ["CLAUDE_CONFIG_DIR"]),
            )
            settings = parse_settings({"model": "haiku"}, agent="alice", flavor="agent")
            models = ModelStore(state / "hyperhive-model", "haiku")
            bus = Bus(EventLog(state / "hyperhive-events.sqlite"), "haiku")
            stats = TurnStats(state / "hyperhive-turn-stats.sqlite")
            loop = TurnLoop(
                env, settings, bus, stats, models, environ=environ, client=UnixClient(sock.path)
            )
            done: list[tuple[TurnRow, Timings]] = []
            got = threading.Event()

            def recorded(row: TurnRow, t: Timings) -> None:
                done.append((row, t))
                got.set()

            loop.on_turn_recorded = recorded
            worker = threading.Thread(target=loop.run_forever, daemon=True)
            worker.start()
            spawn: list[float] = []
            record: list[float] = []
            wall: list[float] = []
            for i in range(args.turns + 1):
                time.sleep(args.gap if i else 0)
                got.clear()
                sock.deliver("bob", f"go {i}")
                if not got.wait(120):
                    print("turn timed out", file=sys.stderr)
                    return 1
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
            loop.stop()
            loop.wait_idle(10)

    mcp = " · one MCP tool call each" if args.mcp else ""
    print(f"claude {cli} · {args.turns} turns{mcp} · gap {args.gap:g} s (ms)")
    print(describe("recv→spawn", spawn))
    print(describe("result→recorded", record))
    print(describe("whole turn (wall)", wall))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
