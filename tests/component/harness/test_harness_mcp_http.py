"""The harness-served MCP endpoint (``harness.mcp_http``) through the MCP SDK's own Streamable
HTTP client, against a stand-in socket: the same tools as the stdio server, its credential and
Host checks, and a tool call in flight while the controller restarts."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import TOKEN, StandIn
from test_harness_mcp import AGENT_TOOLS, MANAGER_TOOLS

from harness.mcp_http import McpEndpoint
from schemas.client import UnixClient


def _text(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def _session(
    ep: McpEndpoint, token: str, calls: list[tuple[str, dict[str, Any]]]
) -> tuple[set[str], list[Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        streamable_http_client(ep.url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        listed = await session.list_tools()
        results = [await session.call_tool(name, args) for name, args in calls]
        return {t.name for t in listed.tools}, results


def run(ep: McpEndpoint, *calls: tuple[str, dict[str, Any]]) -> tuple[set[str], list[Any]]:
    """One SDK client session with a fresh credential: list the tools, call ``calls``."""
    return anyio.run(_session, ep, ep.issue(), list(calls))


def endpoint(sock: StandIn, flavor: str = "agent", **kw: Any) -> McpEndpoint:
    return McpEndpoint(flavor, UnixClient(sock.path, token=TOKEN, **kw)).start()


@pytest.fixture
def alice(tmp_path: Path) -> Iterator[StandIn]:
    with StandIn(tmp_path / "mcp.sock", agent="alice") as s:
        yield s


def raw(
    ep: McpEndpoint, method: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, bytes]:
    """One plain HTTP request to the endpoint (no SDK), ``Host`` as given or 127.0.0.1."""
    port = int(ep.url.rsplit(":", 1)[1].split("/")[0])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, "/mcp", body, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


LIST = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()


def test_same_tools_as_stdio_and_send_ends_with_status(alice: StandIn) -> None:
    ep = endpoint(alice)
    try:
        alice.deliver("bob", "unread one")
        names, (res, bad) = run(
            ep, ("send", {"to": "bob", "body": "hello bob"}), ("recv", {"wait_seconds": 999})
        )
    finally:
        ep.stop()
    assert names == AGENT_TOOLS
    assert not res.is_error and "sent message #" in _text(res)
    assert _text(res).splitlines()[-1].startswith("[status] 1 unread message(s)")
    [sent] = alice.sent
    assert len(sent.pop("idempotency_key")) == 32 and sent == {"to": "bob", "body": "hello bob"}
    assert bad.is_error and "wait_seconds" in _text(bad)
    assert alice.unauthorized == 0


def test_manager_flavor_lists_the_manager_tools(tmp_path: Path) -> None:
    with StandIn(tmp_path / "m.sock", agent="manager") as sock:
        ep = endpoint(sock, "manager")
        try:
            names, (lst,) = run(ep, ("list", {}))
        finally:
            ep.stop()
    assert names == MANAGER_TOOLS and '"name": "alice"' in _text(lst)


def test_only_the_current_credential_and_host_get_in(alice: StandIn) -> None:
    ep = endpoint(alice)
    try:
        json_ct = {"Content-Type": "application/json"}
        assert raw(ep, "POST", LIST, json_ct)[0] == 401  # no credential
        old = ep.issue()
        new = ep.issue()  # the next claude run: the previous credential stops working
        assert raw(ep, "POST", LIST, {**json_ct, "Authorization": f"Bearer {old}"})[0] == 401
        ok = {**json_ct, "Authorization": f"Bearer {new}"}
        status, body = raw(ep, "POST", LIST, ok)
        assert status == 200 and len(json.loads(body)["result"]["tools"]) == len(AGENT_TOOLS)
        # DNS rebinding: a page on some name that resolves to 127.0.0.1
        assert (
            raw(ep, "POST", LIST, {**ok, "Host": f"evil.example:{ep.url.split(':')[2]}"})[0] == 403
        )
        assert raw(ep, "POST", LIST, {**ok, "Content-Type": "text/plain"})[0] == 415
        assert raw(ep, "POST", b"[1, 2]", ok)[0] == 400  # not one JSON-RPC object
        assert raw(ep, "GET", None, ok)[0] == 405  # no server-to-client stream
        note = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
        assert raw(ep, "POST", note, ok) == (202, b"")
        ep.revoke()
        assert raw(ep, "POST", LIST, ok)[0] == 401
    finally:
        ep.stop()
    assert alice.calls == []


def test_a_call_in_flight_when_the_controller_restarts_gets_a_retryable_error(
    tmp_path: Path,
) -> None:
    """The controller dies with a recv parked on its socket (the connection drops unanswered,
    the socket file goes) and is not back within the socket client's retry budget: the tool
    call ends with an error saying nothing was done and to try again, rather than hanging.
    Once the controller is back, the next call in the same MCP session works."""
    path = tmp_path / "mcp.sock"
    controller = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    controller.bind(str(path))
    controller.listen(1)
    ep = McpEndpoint("agent", UnixClient(str(path), token=TOKEN, sleep=lambda s: None))
    ep.start()  # (the real budget is 60 s of backoff; the retries themselves are real)
    restarted = threading.Event()
    out: dict[str, Any] = {}

    async def session() -> None:
        headers = {"Authorization": f"Bearer {ep.issue()}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=60) as http,
            streamable_http_client(ep.url, http_client=http) as (read, write),
            ClientSession(read, write) as s,
        ):
            await s.initialize()
            out["first"] = await s.call_tool("recv", {"wait_seconds": 60})
            await anyio.to_thread.run_sync(lambda: restarted.wait(30))
            out["second"] = await s.call_tool("send", {"to": "bob", "body": "back?"})

    client = threading.Thread(target=anyio.run, args=(session,), daemon=True)
    standin: StandIn | None = None
    try:
        client.start()
        controller.settimeout(30)
        conn, _ = controller.accept()
        conn.settimeout(30)
        assert b"POST /recv" in conn.recv(65536)  # parked: the controller now dies
        conn.close()
        controller.close()
        path.unlink()
        client.join(0.1)
        deadline = time.monotonic() + 30
        while "first" not in out and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "first" in out, "the tool call hung"
        standin = StandIn(path, agent="alice").start()
        restarted.set()
        client.join(30)
    finally:
        ep.stop()
        if standin is not None:
            standin.stop()
    first, second = out["first"], out["second"]
    assert first.is_error
    text = _text(first)
    assert "unreachable" in text and "nothing was done" in text and "Try again" in text
    assert not second.is_error and "sent message #" in _text(second)
    assert standin is not None and [b["body"] for b in standin.sent] == ["back?"]


def test_tool_calls_reuse_their_worker_thread_and_stop_ends_it(alice: StandIn) -> None:
    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "mcp-tool"]

    before = len(workers())
    ep = endpoint(alice)
    try:
        _, results = run(ep, *[("send", {"to": "bob", "body": f"#{i}"}) for i in range(5)])
        assert [r.is_error for r in results] == [False] * 5
        # one call at a time: one worker took them all, and waits for the next
        assert len(workers()) == before + 1
    finally:
        ep.stop()
    deadline = time.monotonic() + 10
    while len(workers()) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(workers()) == before  # the idle worker ended with the endpoint
