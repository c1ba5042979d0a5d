"""harness.stream on real stream-json lines captured from claude 2.1.197 (data/*.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

from harness.stream import (
    LIVE_ONLY_KINDS,
    MAX_TOOL_RESULT_CHARS,
    AssistantText,
    MessageStart,
    Result,
    SystemEvent,
    SystemInit,
    TextDelta,
    ToolResult,
    ToolUse,
    Unknown,
    Usage,
    UserText,
    event_json,
    parse_line,
)

DATA = Path(__file__).parent / "data"


def events(name: str) -> list[object]:
    out: list[object] = []
    for line in (DATA / f"{name}.jsonl").read_text().splitlines():
        out.extend(parse_line(line))
    return out


def test_tool_turn_shapes() -> None:
    evs = events("tool_turn")
    kinds = [type(e).__name__ for e in evs]
    assert kinds == [
        "SystemInit",
        "AssistantText",
        "ToolUse",
        "ToolUse",
        "ToolResult",
        "ToolResult",
        "AssistantText",
        "Result",
    ]
    init = evs[0]
    assert isinstance(init, SystemInit)
    assert init.version == "2.1.197"
    assert init.tools == ("Bash", "Edit", "Glob", "Grep", "Read", "Write", "mcp__hyperhive__echo")
    assert init.mcp_servers == (("hyperhive", "connected"),)
    assert init.session_id
    text = evs[1]
    assert isinstance(text, AssistantText) and text.text == "calling tools"
    assert text.usage == Usage(50, 1, 0, 0)  # the message_start usage: output_tokens 1
    echo, write = evs[2], evs[3]
    assert (
        isinstance(echo, ToolUse)
        and echo.name == "mcp__hyperhive__echo"
        and echo.input == {"text": "hi"}
    )
    assert isinstance(write, ToolUse) and write.name == "Write"
    assert write.input == {"file_path": "notes.md", "content": "a\nb\n"}
    assert echo.message_id == write.message_id == text.message_id
    r1, r2 = evs[4], evs[5]
    assert isinstance(r1, ToolResult) and r1.tool_use_id == echo.id and r1.text == "echo: hi"
    assert not r1.is_error
    assert isinstance(r2, ToolResult) and r2.tool_use_id == write.id and "File created" in r2.text
    res = evs[-1]
    assert isinstance(res, Result)
    assert not res.is_error and res.terminal_reason == "completed" and not res.prompt_too_long
    assert res.text == "all done"
    # usage sums both API calls: 50 + 100 input; output from message_delta: 10 + 20
    assert res.usage == Usage(150, 30, 30, 40)
    assert res.cost_usd > 0 and res.duration_ms > 0 and res.num_turns >= 2
    assert res.session_id == init.session_id


def test_prompt_too_long() -> None:
    evs = events("prompt_too_long")
    res = evs[-1]
    assert isinstance(res, Result)
    assert res.is_error and res.prompt_too_long and res.api_error_status == 400
    synthetic = [e for e in evs if isinstance(e, AssistantText)]
    assert synthetic and synthetic[0].text.startswith("Prompt is too long")
    assert synthetic[0].usage is None  # the CLI's own error text carries no real usage


def test_compact_run() -> None:
    evs = events("compact")
    statuses = [e for e in evs if isinstance(e, SystemEvent)]
    assert [s.subtype for s in statuses] == ["status", "status", "compact_boundary"]
    assert statuses[0].data["status"] == "compacting"
    assert statuses[1].data["compact_result"] == "success"
    assert statuses[2].data["compact_metadata"]["trigger"] == "manual"
    users = [e for e in evs if isinstance(e, UserText)]
    assert users[0].text.startswith("This session is being continued") and users[0].synthetic
    res = evs[-1]
    assert isinstance(res, Result) and not res.is_error and res.num_turns == 0


def test_garbage_never_raises() -> None:
    assert parse_line("") == []
    assert parse_line("   \n") == []
    (u,) = parse_line("not json at all")
    assert isinstance(u, Unknown) and u.reason.startswith("not JSON")
    (u,) = parse_line("[1, 2]")
    assert isinstance(u, Unknown) and u.reason == "not a JSON object"
    assert parse_line('{"type": "stream_event", "event": {}}') == []
    assert parse_line('{"type": "stream_event", "event": 3}') == []
    (u,) = parse_line('{"type": "mystery_event"}')
    assert isinstance(u, Unknown) and "mystery_event" in u.reason
    (u,) = parse_line('{"type": "assistant"}')
    assert isinstance(u, Unknown)
    assert parse_line(b'{"type":"assistant","message":{"content":"plain"}}')[0] == AssistantText(
        "plain", "", None
    )
    (r,) = parse_line('{"type":"result"}')
    assert isinstance(r, Result) and r.usage == Usage() and not r.is_error


def test_long_tool_result_is_cut() -> None:
    line = json.dumps(
        {
            "type": "user",
            "message": {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": "x" * (MAX_TOOL_RESULT_CHARS + 5),
                        "is_error": True,
                    }
                ],
            },
        }
    )
    (r,) = parse_line(line)
    assert isinstance(r, ToolResult)
    assert r.truncated and r.is_error and len(r.text) == MAX_TOOL_RESULT_CHARS


def test_event_json_is_serialisable_and_has_kind() -> None:
    for name in ("tool_turn", "prompt_too_long", "compact"):
        for ev in events(name):
            d = event_json(ev)  # type: ignore[arg-type]
            json.dumps(d)
            assert d["kind"] == ev.kind  # type: ignore[attr-defined]
    init = events("tool_turn")[0]
    d = event_json(init)  # type: ignore[arg-type]
    assert d["mcp_servers"] == [{"name": "hyperhive", "status": "connected"}]


def test_usage_context_tokens() -> None:
    u = Usage(
        input_tokens=3, output_tokens=7, cache_read_input_tokens=100, cache_creation_input_tokens=20
    )
    assert u.context_tokens == 123
    assert (u + u).output_tokens == 14
    assert Usage.from_json({"input_tokens": True, "output_tokens": "x"}) == Usage()


def test_partial_messages_stream_text_then_the_complete_block() -> None:
    """``--include-partial-messages`` (captured from claude 2.1.197, data/partial_turn.jsonl):
    a text block arrives as text_delta pieces, then as the complete assistant line."""
    evs = events("partial_turn")
    kinds = [e.kind for e in evs]  # type: ignore[attr-defined]
    assert kinds == [
        "system_init",
        "system",  # status: requesting
        "message_start",
        "text_delta",
        "assistant_text",
        "tool_use",
        "tool_result",
        "system",
        "message_start",
        "text_delta",
        "text_delta",
        "text_delta",
        "text_delta",
        "assistant_text",
        "result",
    ]
    starts = [e for e in evs if isinstance(e, MessageStart)]
    assert starts[0].message_id.startswith("msg_fake") and starts[0].model == "claude-test"
    assert starts[0].usage == Usage(30, 1, 100, 20)  # the input side is known at once
    deltas = [e for e in evs if isinstance(e, TextDelta)]
    assert deltas[0] == TextDelta(0, "Let me check.")
    assert "".join(d.text for d in deltas[1:]) == "All done: it printed hi."
    final = [e for e in evs if isinstance(e, AssistantText)][-1]
    assert final.text == "All done: it printed hi."
    assert {"message_start", "text_delta"} == LIVE_ONLY_KINDS


def test_stream_event_shapes_that_carry_nothing_new() -> None:
    def line(ev: dict[str, object]) -> str:
        return json.dumps({"type": "stream_event", "event": ev})

    assert parse_line(line({"type": "content_block_stop", "index": 0})) == []
    assert parse_line(line({"type": "message_stop"})) == []
    tool_json = {"type": "input_json_delta", "partial_json": "{"}
    assert parse_line(line({"type": "content_block_delta", "index": 1, "delta": tool_json})) == []
    thinking = {"type": "thinking_delta", "thinking": "hm"}
    assert parse_line(line({"type": "content_block_delta", "index": 0, "delta": thinking})) == []
    empty = {"type": "text_delta", "text": ""}
    assert parse_line(line({"type": "content_block_delta", "index": 0, "delta": empty})) == []
    (d,) = parse_line(line({"type": "content_block_delta", "delta": {"type": "text_delta",
                                                                     "text": "x"}}))  # fmt: skip
    assert d == TextDelta(0, "x")
    (m,) = parse_line(line({"type": "message_start", "message": {"id": "m1"}}))
    assert m == MessageStart("m1", "", None)


def test_init_lists_plugins() -> None:
    line = json.dumps(
        {
            "type": "system",
            "subtype": "init",
            "session_id": "s",
            "plugins": [{"name": "hello", "path": "/p", "source": "hello@hh-test"}, "bare", 3],
        }
    )
    (init,) = parse_line(line)
    assert isinstance(init, SystemInit) and init.plugins == ("hello@hh-test", "bare")
    assert event_json(init)["plugins"] == ["hello@hh-test", "bare"]
