"""OpenTelemetry traces of an agent's turns (docs/observability.md), off by default.

On when the harness' environment names an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; the controller passes its own, or its config's
``otel.endpoint``) and neither ``OTEL_SDK_DISABLED=true`` nor ``OTEL_TRACES_EXPORTER=none``
says otherwise. Off, every method here is a no-op and the SDK is not even imported.

What is exported (OTLP/HTTP protobuf, batched; the SDK's ``OTEL_*`` settings apply), after
the OpenTelemetry GenAI semantic conventions:

- one span per turn, ``invoke_agent <agent>``: ``gen_ai.operation.name=invoke_agent``,
  ``gen_ai.provider.name=anthropic``, ``gen_ai.agent.name``, ``gen_ai.request.model`` (the
  setting) and ``gen_ai.response.model`` (what claude ran), ``gen_ai.conversation.id``
  (claude's session id), ``gen_ai.usage.input_tokens`` / ``output_tokens`` /
  ``cache_read.input_tokens`` / ``cache_creation.input_tokens``, and ``hyperhive.*``
  (message id and sender, outcome, cost in USD, compactions); status ERROR for a failed turn;
- one child span per tool call, ``execute_tool <tool>``: ``gen_ai.tool.name``,
  ``gen_ai.tool.call.id``, ``gen_ai.tool.type=function``; from the tool_use line of
  claude's stream to its tool_result line; status ERROR when the result is an error.

A turn's span continues the trace of the message that woke it (the message's
``traceparent``, W3C Trace Context), and the hyperhive MCP tools the turn calls (send, ask,
answer) stamp their messages with the ``traceparent`` of their ``execute_tool`` span
(:meth:`Telemetry.current_traceparent`), so one request can be followed across agents: the
recipient's ``invoke_agent`` span is a child of the sender's tool call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from schemas.otel import (
    ENDPOINT,
    TRACES_ENDPOINT,
    TracerHolder,
    mark_error,
    otlp_provider,
    traces_disabled,
    traces_url,
)

if TYPE_CHECKING:  # the SDK is imported only when telemetry is on
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

    from harness.stream import StreamEvent
    from harness.turnstats import TurnRow
    from schemas.wire import Message

log = logging.getLogger(__name__)

ENDPOINT_VARS = (TRACES_ENDPOINT, ENDPOINT)
SCOPE = "hyperhive.harness"


def enabled(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` turns traces on (see the module docstring)."""
    if traces_disabled(environ):
        return False
    return any(environ.get(v, "").strip() for v in ENDPOINT_VARS)


def claude_environ(agent: str, environ: Mapping[str, str]) -> dict[str, str]:
    """What claude's environment adds when Claude Code's own telemetry is on
    (``CLAUDE_CODE_ENABLE_TELEMETRY=1``, set by the controller's ``otel.claude_code``): the
    agent's name as the resource attribute ``hyperhive.agent``, so its
    ``claude_code.token.usage`` and ``claude_code.cost.usage`` series say whose they are."""
    if environ.get("CLAUDE_CODE_ENABLE_TELEMETRY", "") not in ("1", "true"):
        return {}
    attrs = environ.get("OTEL_RESOURCE_ATTRIBUTES", "").strip().strip(",")
    mine = f"hyperhive.agent={agent}"
    return {"OTEL_RESOURCE_ATTRIBUTES": f"{attrs},{mine}" if attrs else mine}


class Telemetry(TracerHolder):
    """The turn and tool spans of one harness; thread-safe (the loop thread starts and ends
    turns and feeds stream events, MCP tool threads read the current traceparent)."""

    def __init__(self, agent: str, provider: TracerProvider | None = None) -> None:
        super().__init__(SCOPE, provider)
        self.agent = agent
        self._lock = threading.Lock()
        self._turn: Span | None = None
        self._traceparent: str | None = None
        self._tools: dict[str, Span] = {}

    @classmethod
    def from_environ(cls, agent: str, environ: Mapping[str, str]) -> Telemetry:
        """On with an OTLP/HTTP exporter when ``environ`` says so, else a no-op instance.
        An SDK that fails to start is logged and leaves telemetry off: never a failed turn."""
        if not enabled(environ):
            return cls(agent)
        url = traces_url(environ, environ.get(ENDPOINT, ""))
        try:
            provider = otlp_provider(
                {"service.name": "hyperhive-agent", "hyperhive.agent": agent}, url
            )
        except Exception:
            log.exception("OpenTelemetry: cannot start the SDK; traces stay off")
            return cls(agent)
        log.info("OpenTelemetry: exporting turn traces to %s", url)
        return cls(agent, provider)

    def turn_started(self, msg: Message, model: str, turn: int | None) -> None:
        """Open the turn's span, continuing the trace of ``msg`` when it carries one."""
        if self._tracer is None:
            return
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        prop = TraceContextTextMapPropagator()
        parent_tp = getattr(msg, "traceparent", None)
        parent = prop.extract({"traceparent": parent_tp}) if parent_tp else None
        span = self._tracer.start_span(
            f"invoke_agent {self.agent}",
            context=parent,
            kind=trace.SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.provider.name": "anthropic",
                "gen_ai.agent.name": self.agent,
                "gen_ai.request.model": model,
                "hyperhive.turn": turn if turn is not None else -1,
                "hyperhive.message.id": msg.id,
                "hyperhive.message.from": msg.sender,
                "hyperhive.message.kind": str(msg.kind),
            },
        )
        carrier: dict[str, str] = {}
        prop.inject(carrier, context=trace.set_span_in_context(span))
        with self._lock:
            self._end_open_locked()
            self._turn = span
            self._traceparent = carrier.get("traceparent")

    def current_traceparent(self) -> str | None:
        """The ``traceparent`` a message sent now should carry: the open tool call's span when
        exactly one is open (the hyperhive tool being called is that one), else the turn's;
        None between turns or when off."""
        with self._lock:
            if len(self._tools) == 1 and self._traceparent is not None:
                from opentelemetry import trace
                from opentelemetry.trace.propagation.tracecontext import (
                    TraceContextTextMapPropagator,
                )

                (tool,) = self._tools.values()
                carrier: dict[str, str] = {}
                TraceContextTextMapPropagator().inject(
                    carrier, context=trace.set_span_in_context(tool)
                )
                return carrier.get("traceparent", self._traceparent)
            return self._traceparent

    def on_event(self, ev: StreamEvent) -> None:
        """Feed one event of claude's stream: tool calls open and close child spans; the
        first line names the model and the session."""
        if self._tracer is None:
            return
        from harness.stream import Result, SystemInit, ToolResult, ToolUse

        with self._lock:
            turn = self._turn
            if turn is None:
                return
            if isinstance(ev, ToolUse):
                from opentelemetry import trace

                self._tools[ev.id] = self._tracer.start_span(
                    f"execute_tool {ev.name}",
                    context=trace.set_span_in_context(turn),
                    kind=trace.SpanKind.INTERNAL,
                    attributes={
                        "gen_ai.operation.name": "execute_tool",
                        "gen_ai.tool.name": ev.name,
                        "gen_ai.tool.call.id": ev.id,
                        "gen_ai.tool.type": "function",
                    },
                )
            elif isinstance(ev, ToolResult):
                span = self._tools.pop(ev.tool_use_id, None)
                if span is not None:
                    if ev.is_error:
                        mark_error(span, "tool_error")
                    span.end()
            elif isinstance(ev, SystemInit):
                if ev.model:
                    turn.set_attribute("gen_ai.response.model", ev.model)
                if ev.session_id:
                    turn.set_attribute("gen_ai.conversation.id", ev.session_id)
            elif isinstance(ev, Result) and ev.session_id:
                turn.set_attribute("gen_ai.conversation.id", ev.session_id)

    def turn_finished(self, row: TurnRow) -> None:
        """Close the turn's span with its figures (``row``: what turn stats recorded)."""
        if self._tracer is None:
            return
        with self._lock:
            span = self._turn
            if span is None:
                return
            attrs: dict[str, Any] = {
                "gen_ai.usage.input_tokens": row.input_tokens,
                "gen_ai.usage.output_tokens": row.output_tokens,
                "gen_ai.usage.cache_read.input_tokens": row.cache_read_tokens,
                "gen_ai.usage.cache_creation.input_tokens": row.cache_creation_tokens,
                "hyperhive.turn.outcome": row.result_kind,
                "hyperhive.cost_usd": row.cost_usd,
                "hyperhive.tool_calls": row.tool_calls,
                "hyperhive.compactions": row.compactions,
            }
            if row.session_id:
                attrs["gen_ai.conversation.id"] = row.session_id
            span.set_attributes(attrs)
            if row.result_kind != "ok":
                mark_error(span, row.result_kind, row.note)
            self._end_open_locked()

    def turn_aborted(self) -> None:
        """The turn raised before it was recorded: close what is open."""
        if self._tracer is None:
            return
        with self._lock:
            if self._turn is not None:
                mark_error(self._turn, "aborted")
            self._end_open_locked()

    def _end_open_locked(self) -> None:
        for span in self._tools.values():
            mark_error(span, "unfinished")
            span.end()
        self._tools.clear()
        if self._turn is not None:
            self._turn.end()
        self._turn = None
        self._traceparent = None
