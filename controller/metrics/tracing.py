"""OpenTelemetry traces of the controller, and the OTEL settings it hands its agents.

Off by default. On when the config's ``otel.endpoint`` or ``$OTEL_EXPORTER_OTLP_ENDPOINT``
(``$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) names an OTLP/HTTP collector and neither
``OTEL_SDK_DISABLED=true`` nor ``OTEL_TRACES_EXPORTER=none`` says otherwise (as in the
harness: ``schemas.otel.traces_disabled``): each reconcile pass
of the serve loop is a span ``reconcile`` (``hyperhive.reconcile.trigger``, actions,
errors; status ERROR when it reported errors or raised) and each action it executes
(create, rebuild, apply_manifest, start, stop, destroy: the deploys) a child span
``<kind> <agent>`` timed around the driver call. Passes never overlap, so the running pass
span is kept here and the executor's worker threads parent their spans on it.

:func:`agent_environ` is what every harness gets on top of its usual environment: the
``OTEL_*`` variables of the controller's own environment that ``AGENT_OTEL`` names (where
to export and how, never the collector's credentials: ``OTEL_EXPORTER_OTLP_HEADERS`` and
the per-signal headers, client keys and certificates stay with the controller, an agent
runs arbitrary commands), ``OTEL_EXPORTER_OTLP_ENDPOINT`` from the config, and with
``otel.claude_code`` Claude Code's own telemetry (``CLAUDE_CODE_ENABLE_TELEMETRY=1``, OTLP
metrics and logs over HTTP/protobuf to the same endpoint) — docs/observability.md.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from controller.otel_env import AGENT_OTEL
from schemas.otel import (
    ENDPOINT,
    TRACES_ENDPOINT,
    TracerHolder,
    mark_error,
    otlp_provider,
    traces_disabled,
    traces_url,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from controller.config import Config

log = logging.getLogger(__name__)

SCOPE = "hyperhive.controller"


def endpoint_of(cfg: Config, environ: Mapping[str, str]) -> str | None:
    """The OTLP endpoint traces go to: the config's, else the environment's; None: off
    (none set, or ``environ`` disables traces: ``traces_disabled``)."""
    if traces_disabled(environ):
        return None
    return cfg.otel_endpoint or environ.get(TRACES_ENDPOINT) or environ.get(ENDPOINT) or None


def agent_environ(cfg: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """The telemetry variables every harness (and its claude) gets (see the module doc)."""
    out = {k: v for k, v in environ.items() if k in AGENT_OTEL}
    if cfg.otel_endpoint:
        out[ENDPOINT] = cfg.otel_endpoint
    if cfg.claude_code_telemetry and out.get(ENDPOINT):
        out["CLAUDE_CODE_ENABLE_TELEMETRY"] = "1"
        out.setdefault("OTEL_METRICS_EXPORTER", "otlp")
        out.setdefault("OTEL_LOGS_EXPORTER", "otlp")
        out.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    return out


class Tracing(TracerHolder):
    """The controller's spans; a no-op until :meth:`start` found an endpoint."""

    def __init__(self) -> None:
        super().__init__(SCOPE)
        self._lock = threading.Lock()
        self._pass: Span | None = None

    def start(self, cfg: Config, environ: Mapping[str, str]) -> bool:
        """Start exporting when an endpoint is configured; True when on. An SDK that fails to
        start is logged and leaves tracing off."""
        endpoint = endpoint_of(cfg, environ)
        if endpoint is None:
            return False
        url = traces_url(environ, endpoint)
        try:
            provider = otlp_provider({"service.name": "hyperhive"}, url)
        except Exception:
            log.exception("OpenTelemetry: cannot start the SDK; traces stay off")
            return False
        self._attach(provider)
        log.info("OpenTelemetry: exporting reconcile traces to %s", url)
        return True

    @contextlib.contextmanager
    def pass_span(self, trigger: str, reason: str) -> Iterator[Callable[[int, int], None]]:
        """The span of one pass around the block; yields ``done(actions, errors)`` to call
        with what the pass did. An exception in the block marks the span and goes on."""
        if self._tracer is None:
            yield lambda _a, _e: None
            return
        span = self._tracer.start_span(
            "reconcile",
            attributes={
                "hyperhive.reconcile.trigger": trigger,
                "hyperhive.reconcile.reason": reason,
            },
        )

        def done(actions: int, errors: int) -> None:
            span.set_attributes(
                {"hyperhive.reconcile.actions": actions, "hyperhive.reconcile.errors": errors}
            )
            if errors:
                mark_error(span, "reconcile_error", f"{errors} error(s)")

        with self._lock:
            self._pass = span
        try:
            yield done
        except BaseException as exc:
            span.record_exception(exc)
            mark_error(span, type(exc).__name__, str(exc))
            raise
        finally:
            with self._lock:
                self._pass = None
            span.end()

    def wrap(self, kind: str, agent: str, job: Callable[[], None]) -> Callable[[], None]:
        """``job`` (a driver call of the running pass) run inside a ``<kind> <agent>`` span,
        child of the pass span; ``job`` itself when tracing is off."""
        tracer = self._tracer
        if tracer is None:
            return job
        with self._lock:
            parent = self._pass

        def traced() -> None:
            from opentelemetry import trace

            ctx = trace.set_span_in_context(parent) if parent is not None else None
            attrs: dict[str, Any] = {"hyperhive.action": kind, "hyperhive.agent": agent}
            with tracer.start_as_current_span(f"{kind} {agent}", context=ctx, attributes=attrs):
                job()

        return traced


TRACING = Tracing()
"""The controller's tracing (``serve`` starts it; the executor wraps its driver calls)."""
