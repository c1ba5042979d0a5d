"""``hyperhive-agent mcp`` through the MCP SDK's own stdio client, against a stand-in socket."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import TOKEN, StandIn, write_credential

from harness.credential import broker_client
from schemas.client import ApiError
from schemas.wire import MessageKind

REPO = Path(__file__).resolve().parents[3]

AGENT_TOOLS = {"send", "recv", "ask", "answer", "remind", "recent", "status"}
MANAGER_TOOLS = AGENT_TOOLS | {
    "request_spawn",
    "request_apply_commit",
    "start",
    "kill",
    "restart",
    "update",
    "ask_operator",
    "list",
}


def _text(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def _session(
    sock: str, flavor: str, calls: list[tuple[str, dict[str, Any]]], cred: Path
) -> tuple[set[str], list[Any]]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "harness", "mcp"],
        env={
            "HYPERHIVE_SOCKET": sock,
            "HYPERHIVE_FLAVOR": flavor,
            "HYPERHIVE_AGENT": "alice",
            "HYPERHIVE_CREDENTIAL_FILE": str(cred),
            "PYTHONPATH": str(REPO),
        },
        cwd=str(REPO),
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        listed = await session.list_tools()
        names = {t.name for t in listed.tools}
        results = [await session.call_tool(name, args) for name, args in calls]
        return names, results


def run(sock: str, flavor: str, *calls: tuple[str, dict[str, Any]]) -> tuple[set[str], list[Any]]:
    """Start the MCP server on ``sock`` (credential: the file next to it) and call ``calls``."""
    cred = write_credential(Path(sock).parent / "credential")
    return anyio.run(_session, sock, flavor, list(calls), cred)


@pytest.fixture
def alice(tmp_path: Path) -> Iterator[StandIn]:
    with StandIn(tmp_path / "mcp.sock", agent="alice") as s:
        yield s


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[StandIn]:
    with StandIn(tmp_path / "m.sock", agent="manager") as s:
        yield s


def test_agent_tools_listed_and_send_ends_with_status(alice: StandIn) -> None:
    alice.deliver("bob", "unread one")
    names, (res,) = run(alice.path, "agent", ("send", {"to": "bob", "body": "hello bob"}))
    assert names == AGENT_TOOLS
    assert not res.is_error
    text = _text(res)
    assert "sent message #" in text
    assert (
        text.splitlines()[-1]
        == "[status] 1 unread message(s), 0 open thread(s), 0 pending reminder(s)"
    )
    [sent] = alice.sent
    key = sent.pop("idempotency_key")
    assert sent == {"to": "bob", "body": "hello bob"}
    assert len(key) == 32 and int(key, 16) >= 0  # one fresh key per tool call
    # the status line is the one /send answered with: no second round trip
    assert [c[:2] for c in alice.calls] == [("POST", "/send")]


def test_recv_returns_the_message_and_peeks_with_zero(alice: StandIn) -> None:
    mid = alice.deliver("bob", "what's up?", MessageKind.QUESTION, thread=4)
    _, (first, second) = run(alice.path, "agent", ("recv", {}), ("recv", {"wait_seconds": 0}))
    t1 = _text(first)
    assert f"#{mid} from bob" in t1 and "what's up?" in t1 and "answer(thread=4" in t1
    assert t1.splitlines()[-1].startswith("[status] 0 unread")
    assert "no message." in _text(second)
    assert alice.unauthorized == 0  # every call carried the agent's credential
    recv_bodies = [b for m, p, b in alice.calls if p == "/recv"]
    assert recv_bodies == [{"wait_seconds": 0.0}, {"wait_seconds": 0.0}]


def test_400_becomes_tool_error_with_server_message(alice: StandIn) -> None:
    _, (res,) = run(alice.path, "agent", ("send", {"to": "Not A Name!", "body": "x"}))
    assert res.is_error
    text = _text(res)
    # what the socket itself answers to the same body
    with pytest.raises(ApiError) as ei:
        broker_client(alice.path, TOKEN).post("/send", {"to": "Not A Name!", "body": "x"})
    expected = ei.value.message
    assert expected.startswith("to: does not match")
    # the SDK prefixes "Error executing tool send: "; the server's message follows verbatim
    first = text.splitlines()[0]
    assert first == f"Error executing tool send: {expected}", first
    assert text.splitlines()[-1].startswith("[status]")
    assert alice.sent == []


def test_manager_tools_and_bad_spawn_name(manager: StandIn) -> None:
    names, (bad, good, lst) = run(
        manager.path,
        "manager",
        ("request_spawn", {"name": "Bad_Name"}),
        ("request_spawn", {"name": "carol"}),
        ("list", {}),
    )
    assert names == MANAGER_TOOLS
    assert bad.is_error
    assert "invalid agent name 'Bad_Name'" in _text(bad)
    assert "lowercase letter first" in _text(bad)
    assert not good.is_error and "proposal #1" in _text(good)
    assert '"name": "alice"' in _text(lst)
    assert _text(lst).splitlines()[-1].startswith("[status]")


def test_argument_validation_is_a_tool_error(alice: StandIn) -> None:
    _, (res,) = run(alice.path, "agent", ("recv", {"wait_seconds": 999}))
    assert res.is_error
    assert not [c for c in alice.calls if c[1] == "/recv"]


def test_tools_list_without_a_socket(tmp_path: Path) -> None:
    """Listing tools needs no controller: claude can start the server before the socket exists."""
    names, _ = run(str(tmp_path / "missing.sock"), "agent")
    assert names == AGENT_TOOLS


def test_a_wrong_credential_is_refused_and_said(alice: StandIn) -> None:
    """The server sends what the file holds: a stale credential gets the controller's 401."""
    alice.token = "c29tZW9uZS1lbHNl"
    _, (res,) = run(alice.path, "agent", ("status", {}))
    assert res.is_error and "bearer" in _text(res)
    assert alice.unauthorized >= 1 and alice.calls == []


def test_a_missing_credential_file_stops_the_server_with_its_name(tmp_path: Path) -> None:
    env = {
        "HYPERHIVE_SOCKET": str(tmp_path / "s.sock"),
        "PYTHONPATH": str(REPO),
        "HYPERHIVE_CREDENTIAL_FILE": str(tmp_path / "nope"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "mcp"],
        env=env,
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert f"{tmp_path / 'nope'} does not exist" in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_server_exits_on_claudes_signal(tmp_path: Path, sig: signal.Signals) -> None:
    """claude stops a stdio server with SIGINT, then SIGTERM after 100 ms: the server leaves on
    the first, exit 0, without waiting for EOF on stdin."""
    env = {
        "HYPERHIVE_SOCKET": str(tmp_path / "s.sock"),
        "PYTHONPATH": str(REPO),
        "HYPERHIVE_CREDENTIAL_FILE": str(write_credential(tmp_path / "credential")),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.mcp_server"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline()) == {"jsonrpc": "2.0", "id": 1, "result": {}}
    proc.send_signal(sig)
    try:
        assert proc.wait(30) == 0  # stdin is still open: only the signal can end it
    finally:
        proc.kill()
        proc.stdin.close()
        proc.stdout.close()
