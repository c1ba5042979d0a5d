"""An MCP tool call inside a real claude turn, hop by hop, beside the broker's own ``send``.

Run by hand: ``.venv/bin/python bench/mcp_call.py [--calls N] [--turns T] [--direct N]``.

Issue 10's target for the server half of a tool call is ≤ 2 ms p50. This bench measures
the whole call as claude sees it and each hop under it, on real components:

- a real ``hyperhive serve`` (local runtime, stand-in agents, the sandbox off) whose
  manager spawned ``alice`` and ``bob``; its agent API also on TCP (``api:`` on loopback,
  plain HTTP) for the ``HYPERHIVE_API_URL`` figures;
- alice's turn loop (``harness.loop.TurnLoop``, what ``serve`` runs) in this process, with
  the harness-served MCP tools (``harness.mcp_http.McpEndpoint``), driving the real claude
  CLI against the fake Messages API (``tests/fakeapi``), which answers each turn's prompt
  with ``--calls`` ``mcp__hyperhive__send`` tool calls in a row, then "done".

Figures (milliseconds unless said; median, p95, min over all samples):

1. ``Broker.send`` in process (the floor: one sqlite commit), µs;
2. ``POST /send`` on alice's unix socket from a keep-alive ``ApiClient``;
3. the same over TCP (``HYPERHIVE_API_URL``);
4. ``tools/call send`` on the harness' MCP endpoint from a keep-alive HTTP client: the
   harness' tool (argument checks, a worker thread, the socket call) without claude;
5. **in a claude turn**: claude's ``tool_use`` line → its ``tool_result`` line, as the
   harness reads them from claude's stdout (``tool_use`` / ``tool_result`` events): claude
   → hyperhive tool → broker → result → claude, all of it; with the socket and with
   ``HYPERHIVE_API_URL``.

The gap between 5 and 4 is claude's own work around a tool call (permission check,
hooks, its MCP client); the gap between 4 and 2 is the harness' MCP layer.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.broker import Broker  # noqa: E402
from controller.paths import Layout  # noqa: E402
from harness.config import HarnessEnv, parse_settings  # noqa: E402
from harness.events import Bus, EventLog  # noqa: E402
from harness.loop import Timings, TurnLoop  # noqa: E402
from harness.mcp_http import McpEndpoint  # noqa: E402
from harness.model import ModelStore  # noqa: E402
from harness.turnstats import TurnRow, TurnStats  # noqa: E402
from schemas.client import ApiClient  # noqa: E402
from tests.fakeapi import (  # noqa: E402
    FakeAnthropic,
    Reply,
    Request,
    find_claude_cli,
    reply_text,
    reply_tool_use,
)
from tests.realserve import (  # noqa: E402
    free_port,
    wait_for,
)
from tests.standinserve import (  # noqa: E402
    admin_client,
    credential,
    launch,
    request_and_approve,
    shut,
)

AGENTS = ("alice", "bob", "carol")
"""alice's loop runs on the socket, carol's on TCP; both send to bob (a stand-in: his inbox
only fills)."""


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def describe(name: str, values: list[float], unit: str = "ms") -> str:
    """One table line: n, median, p95, min."""
    return (
        f"{name:<46} n {len(values):4d}  median {statistics.median(values):8.3f}  "
        f"p95 {pct(values, 95):8.3f}  min {min(values):8.3f} {unit}"
    )


def timed(fn: Callable[[], Any], n: int, scale: float = 1000.0) -> list[float]:
    """``fn()`` ``n`` times after 20 warm-up calls; each call's wall time × ``scale``."""
    for _ in range(20):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * scale)
    return out


def tool_calls_then_done(calls: int) -> Callable[[Request], Reply]:
    """The fake model: answer a prompt with ``calls`` sends to bob, one per response."""

    def model(req: Request) -> Reply:
        done = 0
        for msg in reversed(req.messages):  # the trailing tool results of this turn
            content = msg.get("content") if isinstance(msg, dict) else None
            blocks = content if isinstance(content, list) else []
            if msg.get("role") == "assistant":
                continue
            if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks):
                done += 1
                continue
            break
        if done < calls:
            return reply_tool_use("mcp__hyperhive__send", {"to": "bob", "body": f"hi {done}"})
        return reply_text("done")

    return model


class Hive:
    """A ``hyperhive serve`` with stand-in agents, alice and bob spawned, TCP API on."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = Layout(root / "state", root / "run")
        self.api_port = free_port()
        self.proc, self.log = launch(
            root, resync_seconds=60, api={"listen": f"127.0.0.1:{self.api_port}"}
        )
        manager = ApiClient(str(self.layout.manager_sock), token=self.credential("manager"))
        request_and_approve(manager, self.admin, AGENTS)
        for name in AGENTS:
            wait_for(name, lambda n=name: self.layout.agent_credential(n).exists())

    @property
    def admin(self) -> ApiClient:
        return admin_client(self.layout)

    def credential(self, agent: str) -> str:
        return credential(self.layout, agent)

    def client(self, agent: str, tcp: bool) -> ApiClient:
        target = f"http://127.0.0.1:{self.api_port}" if tcp else str(self.layout.agent_sock(agent))
        return ApiClient(target, token=self.credential(agent))

    def close(self) -> None:
        shut(self.proc, self.log, self.layout.state)


def mcp_direct(endpoint: McpEndpoint, n: int) -> list[float]:
    """``tools/call send`` on the endpoint from one keep-alive connection (ms each)."""
    token = endpoint.issue()
    port = int(endpoint.url.split(":")[2].split("/")[0])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Host": "127.0.0.1"}  # fmt: skip
    seq = iter(range(10**9))

    def call() -> None:
        params = {"name": "send", "arguments": {"to": "bob", "body": "x"}}
        body = json.dumps(
            {"jsonrpc": "2.0", "id": next(seq), "method": "tools/call", "params": params}
        )
        conn.request("POST", "/mcp", body, headers)
        resp = conn.getresponse()
        doc = json.loads(resp.read())
        if resp.status != 200 or doc.get("result", {}).get("isError"):
            raise RuntimeError(f"tools/call: {resp.status} {doc}")

    try:
        return timed(call, n)
    finally:
        conn.close()


class TimedEndpoint(McpEndpoint):
    """The harness' MCP endpoint, noting how long each ``tools/call`` took from its arrival
    to its answer (ms): the hyperhive side of an in-turn tool call."""

    def __init__(self, flavor: str, client: ApiClient) -> None:
        super().__init__(flavor, client)
        self.calls: list[float] = []

    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        """``McpEndpoint.asgi``, timed when the body is a ``tools/call``."""
        t0 = time.perf_counter()
        seen: list[bytes] = []

        async def peek() -> Any:
            message = await receive()
            seen.append(message.get("body", b"")[:64])
            return message

        await super().asgi(scope, peek, send)
        if b'"tools/call"' in b"".join(seen):
            self.calls.append((time.perf_counter() - t0) * 1000)


class Agent:
    """An agent's turn loop in this process (what ``serve`` runs), reaching the controller
    over its socket or over TCP, with the harness-served MCP tools and its own fake API."""

    def __init__(self, hive: Hive, cli: Path, root: Path, calls: int, tcp: bool) -> None:
        self.hive = hive
        self.name = name = "carol" if tcp else "alice"
        tag = "tcp" if tcp else "unix"
        state = root / f"state-{tag}"
        state.mkdir()
        self.api = FakeAnthropic(tool_calls_then_done(calls)).start()
        environ = self.api.cli_env(root / f"home-{tag}")
        env = HarnessEnv(
            name, "agent", str(hive.layout.agent_sock(name)), state, None, "127.0.0.1",
            None, str(cli), Path(environ["CLAUDE_CONFIG_DIR"]),
            web_socket=str(root / f"web-{tag}.sock"),
            credential_file=hive.layout.agent_credential(name),
            api_url=f"http://127.0.0.1:{hive.api_port}" if tcp else None,
        )  # fmt: skip
        settings = parse_settings({"model": "haiku"}, agent=name, flavor="agent")
        models = ModelStore(state / "hyperhive-model", "haiku")
        self.events = state / "hyperhive-events.sqlite"
        self.bus = Bus(EventLog(self.events), "haiku")
        stats = TurnStats(state / "hyperhive-turn-stats.sqlite")
        client = hive.client(name, tcp)
        self.loop = TurnLoop(env, settings, self.bus, stats, models, environ=environ,
                             client=client)  # fmt: skip
        self.endpoint = TimedEndpoint("agent", hive.client(name, tcp))
        self.loop.mcp = self.endpoint.start()
        self.done: list[tuple[TurnRow, Timings]] = []
        self.got = threading.Event()
        self.loop.on_turn_recorded = self._recorded
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.turns = 0

    def _recorded(self, row: TurnRow, t: Timings) -> None:
        self.done.append((row, t))
        self.got.set()

    def turn(self) -> None:
        """One turn: a message from the operator, answered by the tool calls."""
        self.got.clear()
        self.hive.admin.post("/send", {"to": self.name, "body": f"go {self.turns}"})
        self.turns += 1
        if not self.got.wait(300):
            raise RuntimeError("a turn timed out")
        row = self.done[-1][0]
        if row.result_kind != "ok":
            raise RuntimeError(f"turn {self.turns}: {row.result_kind} {row.note}")

    def close(self) -> tuple[list[float], list[float]]:
        """Stop; every tool call's claude-side round trip and the endpoint's part of it (ms),
        after the first turn."""
        self.loop.stop()
        self.loop.wait_idle(10)
        self.loop.runner.reap(10)
        assert self.loop.mcp is not None
        self.loop.mcp.stop()
        self.bus.log.close()
        self.api.stop()
        con = sqlite3.connect(self.events)
        rows = con.execute("SELECT ts, kind, turn, data FROM events ORDER BY id").fetchall()
        con.close()
        first_turn = min(t for _, _, t, _ in rows if t is not None)
        started: dict[str, float] = {}
        out: list[float] = []
        for ts, kind, turn, data in rows:
            if turn is None or turn == first_turn:
                continue  # the first turn warms up
            doc = json.loads(data)
            if kind == "tool_use" and doc.get("name") == "mcp__hyperhive__send":
                started[doc["id"]] = ts
            elif kind == "tool_result" and doc.get("tool_use_id") in started:
                if doc.get("is_error"):
                    raise RuntimeError(f"a tool call failed: {doc}")
                out.append((ts - started.pop(doc["tool_use_id"])) * 1000)
        first = len(self.endpoint.calls) - len(out)  # the warm-up turn's calls came first
        return out, self.endpoint.calls[first:]


def main() -> int:
    """Run the bench and print the table; 1 without a claude CLI."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--calls", type=int, default=20, help="tool calls per claude turn")
    ap.add_argument("--turns", type=int, default=3, help="measured turns per transport")
    ap.add_argument("--direct", type=int, default=500, help="samples of each direct hop")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the loops' "unreachable" when the hive stops
    cli = find_claude_cli(REPO)
    if cli is None:
        print("no claude CLI found (./hh test installs it)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="hh-mcpbench-", dir="/tmp") as tmp:
        root = Path(tmp)
        broker = Broker(root / "floor.sqlite")
        floor = timed(lambda: broker.send("alice", "bob", "x"), args.direct, 1e6)
        broker.close()
        hive = Hive(root)
        try:
            unix, tcp = hive.client("alice", False), hive.client("alice", True)
            body = {"to": "bob", "body": "x"}
            sock = timed(lambda: unix.post("/send", body), args.direct)
            over_tcp = timed(lambda: tcp.post("/send", body), args.direct)
            ep = McpEndpoint("agent", hive.client("alice", False)).start()
            direct = mcp_direct(ep, args.direct)
            ep.stop()
            ep = McpEndpoint("agent", hive.client("alice", True)).start()
            direct_tcp = mcp_direct(ep, args.direct)
            ep.stop()
            # the two transports' turns alternate, so drift in the machine's load hits both
            agents = [Agent(hive, cli, root, args.calls, tcp) for tcp in (False, True)]
            for _ in range(args.turns + 1):
                for agent in agents:
                    agent.turn()
            (turn_unix, server_unix), (turn_tcp, server_tcp) = (a.close() for a in agents)
        finally:
            hive.close()
    print(f"claude {cli} · {args.calls} tool calls × {args.turns} turns per transport")
    print(describe("1. Broker.send, in process", floor, "µs"))
    print(describe("2. POST /send, unix socket", sock))
    print(describe("3. POST /send, TCP (HYPERHIVE_API_URL)", over_tcp))
    print(describe("4. MCP tools/call send, harness endpoint", direct))
    print(describe("4'. the same, the harness on TCP", direct_tcp))
    print(describe("5. in a claude turn: tool_use → tool_result", turn_unix))
    print(describe("   of it: the harness endpoint, arrival → answer", server_unix))
    print(describe("5'. the same, the harness on HYPERHIVE_API_URL", turn_tcp))
    print(describe("   of it: the harness endpoint, arrival → answer", server_tcp))
    med, ours = statistics.median(turn_unix), statistics.median(server_unix)
    print(
        f"in-turn round trip p50 {med:.2f} ms; the hyperhive side of it (harness endpoint → "
        f"tool → broker → answer) p50 {ours:.2f} ms (target ≤ 2 ms: "
        f"{'met' if ours <= 2 else 'missed'}); claude's own part ≈ {med - ours:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
