"""harness.telemetry on its own: the SDK's in-memory exporter receives the turn and tool
spans the turn loop would make, for the paths the end-to-end test does not take (a failed
tool, a turn that raised, a trace continued from a message), and telemetry off is a no-op."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from harness.stream import SystemInit, ToolResult, ToolUse
from harness.telemetry import Telemetry, claude_environ, enabled
from harness.turnstats import TurnRow
from schemas.wire import Message

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def traced(agent: str = "alice") -> tuple[Telemetry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(agent, provider), exporter


def row(kind: str = "ok", **kw: object) -> TurnRow:
    return TurnRow(
        model="haiku", result_kind=kind, started_at=1.0, ended_at=2.0, duration_ms=1000, **kw
    )  # type: ignore[arg-type]


def test_a_turn_continues_the_messages_trace_and_ends_its_tools() -> None:
    t, exporter = traced()
    msg = Message(7, "bob", "alice", "hi", traceparent=PARENT)
    t.turn_started(msg, "haiku", 3)
    tp = t.current_traceparent()
    assert tp is not None and tp.split("-")[1] == PARENT.split("-")[1]  # same trace
    t.on_event(SystemInit("sess-1", "claude-haiku-x", "/", (), (), "2.0"))
    t.on_event(ToolUse("toolu_1", "Bash", {}, "m1", None))
    # one tool open: a message sent now is stamped with the tool's span
    assert t.current_traceparent() != tp
    t.on_event(ToolResult("toolu_1", "boom", True))
    assert t.current_traceparent() == tp
    t.on_event(ToolUse("toolu_2", "Read", {}, "m1", None))  # never answered
    t.turn_finished(row(input_tokens=5, output_tokens=2, session_id="sess-1"))
    assert t.current_traceparent() is None
    spans = {s.name: s for s in exporter.get_finished_spans()}
    turn = spans["invoke_agent alice"]
    assert turn.parent is not None and f"{turn.parent.span_id:016x}" == PARENT.split("-")[2]
    assert turn.attributes["gen_ai.response.model"] == "claude-haiku-x"
    assert turn.attributes["gen_ai.conversation.id"] == "sess-1"
    assert turn.attributes["gen_ai.usage.input_tokens"] == 5
    assert turn.attributes["hyperhive.message.id"] == 7
    bash = spans["execute_tool Bash"]
    assert bash.parent is not None and bash.parent.span_id == turn.context.span_id
    assert bash.status.status_code is StatusCode.ERROR
    assert spans["execute_tool Read"].attributes["error.type"] == "unfinished"


def test_a_failed_or_aborted_turn_is_an_error() -> None:
    t, exporter = traced()
    t.turn_started(Message(1, "operator", "alice", "x"), "haiku", 1)
    t.turn_finished(row("failed", note="claude exited 1"))
    t.turn_started(Message(2, "operator", "alice", "y"), "haiku", 2)
    t.turn_aborted()
    t.turn_aborted()  # twice: nothing left to end
    failed, aborted = exporter.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "claude exited 1"
    assert failed.parent is None  # no traceparent on the message: a new trace
    assert aborted.attributes["error.type"] == "aborted"


def test_off_unless_an_endpoint_is_set() -> None:
    assert not enabled({})
    assert enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"})
    assert not enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"})
    off = Telemetry.from_environ("alice", {})
    assert not off.on
    off.turn_started(Message(1, "operator", "alice", "x"), "haiku", 1)
    assert off.current_traceparent() is None
    off.turn_finished(row())


def test_claude_code_telemetry_names_its_agent() -> None:
    assert claude_environ("alice", {}) == {}
    on = {"CLAUDE_CODE_ENABLE_TELEMETRY": "1", "OTEL_RESOURCE_ATTRIBUTES": "team=a"}
    assert claude_environ("alice", on) == {
        "OTEL_RESOURCE_ATTRIBUTES": "team=a,hyperhive.agent=alice"
    }


def test_a_silent_collector_does_not_hold_up_exit(caplog: object) -> None:
    import logging
    import socket

    import pytest

    assert isinstance(caplog, pytest.LogCaptureFixture)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    try:
        port = silent.getsockname()[1]
        t = Telemetry.from_environ(
            "alice", {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
        )
        assert t.on
        t.turn_started(Message(1, "operator", "alice", "x"), "haiku", 1)
        t.turn_finished(row())
        with caplog.at_level(logging.WARNING, logger="harness.telemetry"):
            t.shutdown(timeout=0.5)
        assert "not exported" in caplog.text
        assert not t.on
    finally:
        silent.close()
