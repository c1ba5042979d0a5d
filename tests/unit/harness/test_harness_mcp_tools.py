"""The MCP tool bodies with a scripted socket client: status line, retry note, errors; the
published tool table (pinned to what the MCP SDK server published) and argument checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.mcp_server import McpHandler, ToolError, Tools, check_arguments, tool_specs
from schemas.client import ApiError, Result, Unreachable

STATUS = {"unread": 2, "open_threads": 1, "pending_reminders": 0}


class FakeClient:
    def __init__(self, answers: dict[str, Any], retries: int = 0) -> None:
        self.answers = answers
        self.retries = retries
        self.calls: list[tuple[str, str, Any, bool]] = []

    def call(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        retry: bool = False,
    ) -> Result:
        self.calls.append((method, url, body, retry))
        ans = self.answers[url]
        if isinstance(ans, Exception):
            raise ans
        return Result(ans, self.retries if url != "/status" else 0)

    def get(self, url: str, **kw: Any) -> Any:
        return self.call("GET", url, **kw).data


def tools(answers: dict[str, Any], retries: int = 0) -> tuple[Tools, FakeClient]:
    c = FakeClient({"/status": STATUS, **answers}, retries)
    return Tools(c), c  # type: ignore[arg-type]


def test_result_ends_with_status_line() -> None:
    t, c = tools({"/send": {"id": 9, "status": STATUS}})
    out = t.send("bob", "hi")
    assert out.splitlines() == [
        "sent message #9 to bob.",
        "[status] 2 unread message(s), 1 open thread(s), 0 pending reminder(s)",
    ]
    method, path, body, retry = c.calls[0]
    key = body.pop("idempotency_key")
    assert (method, path, body, retry) == ("POST", "/send", {"to": "bob", "body": "hi"}, True)
    assert isinstance(key, str) and len(key) == 32
    assert len(c.calls) == 1  # the status line is the answer's: no second round trip


def test_status_line_peeked_when_the_answer_carries_none() -> None:
    t, c = tools({"/send": {"id": 9}})
    assert t.send("bob", "hi").splitlines()[-1] == (
        "[status] 2 unread message(s), 1 open thread(s), 0 pending reminder(s)"
    )
    assert [call[:2] for call in c.calls] == [("POST", "/send"), ("GET", "/status")]


def test_retry_note_when_the_call_needed_retries() -> None:
    t, _ = tools({"/send": {"id": 9, "status": STATUS}}, retries=2)
    lines = t.send("bob", "hi").splitlines()
    assert "succeeded after 2 retries" in lines[1] and "do not repeat it" in lines[1]
    assert lines[-1].startswith("[status]")


def test_4xx_is_a_tool_error_with_the_message_verbatim() -> None:
    t, _ = tools(
        {"/send": ApiError(403, "forbidden", "alice may not message carol (allowed: bob)", "to")}
    )
    with pytest.raises(ToolError) as ei:
        t.send("carol", "hi")
    assert str(ei.value).splitlines()[0] == "alice may not message carol (allowed: bob)"
    assert str(ei.value).splitlines()[-1].startswith("[status]")


def test_unreachable_is_a_tool_error_saying_nothing_happened() -> None:
    t, _ = tools({"/send": Unreachable("gone")})
    with pytest.raises(ToolError, match="nothing was done"):
        t.send("bob", "hi")


def test_status_unavailable_placeholder() -> None:
    t, _ = tools({"/send": {"id": 1}, "/status": Unreachable("gone")})
    assert t.send("bob", "x").splitlines()[-1].startswith("[status] unavailable")


def test_recv_clamps_and_formats() -> None:
    msg = {
        "id": 3,
        "from": "bob",
        "to": "alice",
        "body": "yo",
        "kind": "answer",
        "thread": 2,
        "event": None,
        "sent_at": "2026-11-22T10:00:00.000Z",
    }
    t, c = tools({"/recv": {"message": msg, "status": STATUS}})
    out = t.recv(500)
    assert c.calls[0][2] == {"wait_seconds": 180.0}
    assert out.startswith(
        "#3 from bob to alice (answer, thread 2, sent 2026-11-22T10:00:00.000Z):\nyo"
    )
    t2, _ = tools({"/recv": {"message": None, "status": STATUS}})
    assert t2.recv(0).startswith("no message.")
    assert t2.recv(5).startswith("no message arrived within 5 s.")


def test_status_tool_is_just_the_line() -> None:
    t, c = tools({})
    assert t.status() == "[status] 2 unread message(s), 1 open thread(s), 0 pending reminder(s)"
    assert len(c.calls) == 1


DATA = Path(__file__).parent / "data"


def _normalised(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # the SDK published docstrings with their source indentation; only whitespace differs
    return [dict(t, description=" ".join(t["description"].split())) for t in tools]


@pytest.mark.parametrize("flavor", ["agent", "manager"])
def test_tools_list_is_what_the_sdk_server_published(flavor: str) -> None:
    """Same names, order, descriptions and input schemas as the mcp SDK server (mcp 2.3.0)
    answered to tools/list before it was replaced (tests/unit/harness/data/)."""
    pinned = json.loads((DATA / f"mcp_tools_{flavor}.json").read_text())
    listed = McpHandler(flavor, FakeClient({})).list_tools()  # type: ignore[arg-type]
    assert _normalised(listed) == _normalised(pinned)


def _spec(name: str) -> Any:
    return next(s for s in tool_specs("manager") if s.name == name)


@pytest.mark.parametrize(
    ("tool", "args", "field"),
    [
        ("recv", {"wait_seconds": 999}, "wait_seconds: must be at most 180"),
        ("recv", {"wait_seconds": -1}, "wait_seconds: must be at least 0"),
        ("recv", {"wait_seconds": "5"}, "wait_seconds: must be a number"),
        ("send", {"to": "bob"}, "body: required"),
        ("send", {"to": 3, "body": "x"}, "to: must be a string"),
        ("answer", {"thread": 0, "body": "x"}, "thread: must be at least 1"),
        ("answer", {"thread": 1.5, "body": "x"}, "thread: must be an integer"),
        ("answer", {"thread": True, "body": "x"}, "thread: must be an integer"),
        ("ask_operator", {"question": "q", "options": ["a", 1]}, "options[1]: must be a string"),
        ("ask_operator", {"question": "q", "multi": "yes"}, "multi: must be true or false"),
        ("status", [], "arguments: must be an object"),
    ],
)
def test_bad_arguments_name_the_field(tool: str, args: Any, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        check_arguments(_spec(tool), args)


def test_arguments_are_normalised_and_unknown_keys_dropped() -> None:
    assert check_arguments(_spec("answer"), {"thread": 4.0, "body": "x", "extra": 1}) == {
        "thread": 4,
        "body": "x",
    }
    assert check_arguments(_spec("ask_operator"), {"question": "q", "ttl_seconds": None}) == {
        "question": "q",
        "ttl_seconds": None,
    }
    assert check_arguments(_spec("status"), None) == {}


def test_handler_speaks_json_rpc() -> None:
    h = McpHandler("agent", FakeClient({"/send": {"id": 7}, "/status": STATUS}))  # type: ignore[arg-type]
    init = h.handle(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-06-18"},
        }
    )
    assert init is not None and init["result"]["protocolVersion"] == "2025-06-18"
    assert init["result"]["serverInfo"]["name"] == "hyperhive"
    assert h.handle({"jsonrpc": "2.0", "method": "notifications/initialized"}) is None
    call = h.handle(
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "send", "arguments": {"to": "bob", "body": "hi"}},
        }
    )
    assert call is not None and call["result"]["isError"] is False
    assert call["result"]["content"][0]["text"].startswith("sent message #7 to bob.")
    bad = h.handle(
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "recv", "arguments": {"wait_seconds": 999}},
        }
    )
    assert bad is not None and bad["result"]["isError"] is True
    assert bad["result"]["content"][0]["text"].startswith("Error executing tool recv: wait_seconds")
    missing = h.handle({"jsonrpc": "2.0", "id": 4, "method": "nope"})
    assert missing is not None and missing["error"]["code"] == -32601
    manager_only = h.handle(
        {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "tools/call",
            "params": {"name": "kill", "arguments": {"name": "bob"}},
        }
    )
    assert manager_only is not None and manager_only["result"]["isError"] is True
