"""OpenTelemetry traces end to end, into an OTLP/HTTP collector stand-in served here.

A real ``hyperhive serve`` runs real harnesses (the real ``claude`` CLI against the fake
Messages API) with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at ``tests.metrics.otlp``,
which decodes the protobuf exports with ``opentelemetry-proto``. The operator asks the
manager to spawn bob and approves; then asks the manager to greet bob: the manager's turn
calls ``mcp__hyperhive__send``, and bob's turn wakes on that message. The test finds the
manager's ``invoke_agent`` span with its GenAI attributes, the ``execute_tool`` child of the
send, bob's ``invoke_agent`` span in the same trace as a child of that tool call, the
controller's ``reconcile`` span with the ``create bob`` deploy under it, and, with
``otel.claude_code`` on, Claude Code's own metrics.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.swarm import Swarm
from tests.fakeapi import Reply, Request, reply_text, reply_tool_use
from tests.metrics.otlp import OtlpReceiver, Span
from tests.realserve import wait_for
from tests.storyswarm import is_manager, require_claude, scripted_swarm, spawn_approved

pytestmark = pytest.mark.e2e

require_claude()  # skips this module without the claude CLI


def model(req: Request) -> Reply:
    text = req.last_user_text
    if req.tool_results:
        return reply_text("done.")
    if is_manager(req):
        if "please spawn bob" in text:
            return reply_tool_use("mcp__hyperhive__request_spawn", {"name": "bob"})
        if "greet bob" in text:
            return reply_tool_use("mcp__hyperhive__send", {"to": "bob", "body": "hello bob"})
        return reply_text("noted.")
    return reply_text("hi.")


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def swarm(tmp_path: Path, otlp: OtlpReceiver) -> Iterator[Swarm]:
    with scripted_swarm(tmp_path, model, agent_ports=9) as s:
        cfg = json.loads((tmp_path / "config.json").read_text())
        cfg["otel"] = {"endpoint": otlp.endpoint, "claude_code": True}
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        # export within a fraction of a second, not the SDKs' default 5 s / 60 s
        s.env.update(
            {
                "OTEL_BSP_SCHEDULE_DELAY": "200",
                "OTEL_METRIC_EXPORT_INTERVAL": "1000",
                "OTEL_LOGS_EXPORT_INTERVAL": "1000",
            }
        )
        yield s


def one(spans: list[Span], what: str) -> Span:
    assert len(spans) == 1, (what, spans)
    return spans[0]


def test_a_request_is_one_trace_across_agents(swarm: Swarm, otlp: OtlpReceiver) -> None:
    s = swarm
    s.start()
    wait_for("the manager running", lambda: s.phase("manager") == "running")
    spawn_approved(s, "bob")

    s.cli("send", "manager", "please greet bob")

    def the_chain() -> tuple[Span, Span, Span] | None:
        """bob's turn, the manager's send it continues, and the manager's turn, once all
        three are exported (the manager's turn ends after bob's may have)."""
        spans = otlp.spans()
        by_id = {sp.span_id: sp for sp in spans}
        for sp in spans:
            if sp.name == "invoke_agent bob" and sp.attributes.get("hyperhive.message.from") == (
                "manager"
            ):
                send = by_id.get(sp.parent_span_id)
                mgr = by_id.get(send.parent_span_id) if send is not None else None
                if send is not None and mgr is not None:
                    return sp, send, mgr
        return None

    bob, send, mgr = wait_for("the trace across agents", the_chain, timeout=90, interval=0.2)
    spans = otlp.spans()

    # bob's turn continues the manager's trace, as a child of the manager's send
    assert send.name == "execute_tool mcp__hyperhive__send"
    assert send.trace_id == bob.trace_id
    assert send.attributes["gen_ai.operation.name"] == "execute_tool"
    assert send.attributes["gen_ai.tool.name"] == "mcp__hyperhive__send"
    assert send.attributes["gen_ai.tool.call.id"].startswith("toolu_")
    assert send.start_ns <= bob.start_ns
    assert mgr.name == "invoke_agent manager"
    assert mgr.trace_id == bob.trace_id
    assert mgr.parent_span_id == ""  # the operator's message started the trace
    assert mgr.start_ns <= send.start_ns <= send.end_ns <= mgr.end_ns

    # the GenAI attributes of a turn
    for turn, agent in ((mgr, "manager"), (bob, "bob")):
        a = turn.attributes
        assert a["gen_ai.operation.name"] == "invoke_agent"
        assert a["gen_ai.provider.name"] == "anthropic"
        assert a["gen_ai.agent.name"] == agent
        assert a["gen_ai.request.model"] == "claude-test"
        assert a["gen_ai.usage.input_tokens"] > 0
        assert a["gen_ai.usage.output_tokens"] > 0
        assert "gen_ai.usage.cache_read.input_tokens" in a
        assert a["gen_ai.conversation.id"]
        assert a["hyperhive.turn.outcome"] == "ok"
        assert turn.resource["service.name"] == "hyperhive-agent"
        assert turn.resource["hyperhive.agent"] == agent
    # the manager's turn had exactly one tool call
    tools = [sp for sp in spans if sp.parent_span_id == mgr.span_id]
    assert [t.name for t in tools] == ["execute_tool mcp__hyperhive__send"]
    # bob's turn asked the figures of the message that woke it
    assert bob.attributes["hyperhive.message.kind"] == "message"

    # the controller: the pass that deployed bob, with the deploy as its child
    create = one([sp for sp in spans if sp.name == "create bob"], "create bob")
    passes = [sp for sp in spans if sp.span_id == create.parent_span_id]
    assert [p.name for p in passes] == ["reconcile"]
    assert passes[0].attributes["hyperhive.reconcile.trigger"] == "approval"
    assert passes[0].resource["service.name"] == "hyperhive"
    assert create.attributes["hyperhive.agent"] == "bob"

    # Claude Code's own telemetry, turned on by otel.claude_code, reached the same endpoint,
    # each series naming its agent
    wait_for(
        "claude code's metrics",
        lambda: "claude_code.token.usage" in otlp.received.metric_names,
        timeout=30,
    )
    assert "claude_code.cost.usage" in otlp.received.metric_names
    agents = {r.get("hyperhive.agent") for r in otlp.received.metric_resources}
    assert {"manager", "bob"} <= agents, agents
    assert "api_request" in otlp.received.log_names


def test_a_stored_trace_context_outlives_a_controller_restart(
    swarm: Swarm, otlp: OtlpReceiver
) -> None:
    """A message written with a ``traceparent`` while the controller is down (the broker's
    own ``send`` on its sqlite file: what ``POST /send`` calls) is received by the manager
    once the controller is back, and the manager's turn continues that trace: the trace
    context is in the broker's store, not in a controller's memory."""
    from controller.broker import Broker
    from controller.paths import Layout

    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    s = swarm
    s.start()
    wait_for("the manager running", lambda: s.phase("manager") == "running")
    s.stop()  # agents keep running; the manager's harness waits for the controller
    broker = Broker(Layout.for_state(s.state).broker_db)
    try:
        broker.send(
            "operator",
            "manager",
            "sent before the restart",
            traceparent=(f"00-{trace_id}-{parent}-01"),
        )
    finally:
        broker.close()
    s.start()

    def the_turn() -> Span | None:
        for sp in otlp.spans():
            if sp.name == "invoke_agent manager" and sp.trace_id == trace_id:
                return sp
        return None

    turn = wait_for("the manager's turn in the stored trace", the_turn, timeout=90, interval=0.2)
    assert turn.parent_span_id == parent
    assert turn.attributes["hyperhive.message.from"] == "operator"
