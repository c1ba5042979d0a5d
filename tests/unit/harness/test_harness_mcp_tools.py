"""The MCP tool bodies with a scripted socket client: status line, retry note, errors."""

from __future__ import annotations

from typing import Any

import pytest
from mcp.server.mcpserver.exceptions import ToolError

from harness.mcp_server import Tools
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
    assert c.calls[1][:2] == ("GET", "/status")


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
