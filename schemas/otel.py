"""The OpenTelemetry trace SDK set-up shared by the controller and the harness.

Both read the same switches from the environment (``traces_disabled``, ``traces_url``),
export spans the same way (OTLP/HTTP protobuf, batched, the SDK's ``OTEL_*`` settings
apply) and stop the same way at exit (``TracerHolder``); only the resource, the scope and
where the endpoint may come from differ. The SDK is imported inside the functions, so a
process with traces off never loads it.
Used by ``controller/metrics/tracing.py`` and ``harness/telemetry.py`` (docs/observability.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the SDK is imported only when traces are on
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
SHUTDOWN_SECONDS = 3.0
"""How long a process waits at exit for its last spans to be exported."""


def traces_disabled(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` turns traces off whatever the endpoint: ``OTEL_SDK_DISABLED=true``
    (the whole SDK) or ``OTEL_TRACES_EXPORTER=none`` (no trace exporter), after the
    OpenTelemetry SDK environment variable specification (values case-insensitive)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return True
    return environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none"


def traces_url(environ: Mapping[str, str], base: str) -> str:
    """The OTLP/HTTP traces URL: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` as is when set (the
    specification's per-signal endpoint), else ``base`` (an endpoint without the signal's
    path, e.g. ``http://collector:4318``) + ``/v1/traces``."""
    explicit = environ.get(TRACES_ENDPOINT, "").strip()
    return explicit or base.strip().rstrip("/") + "/v1/traces"


def otlp_provider(resource: Mapping[str, str], url: str) -> TracerProvider:
    """A tracer provider with resource attributes ``resource`` that batches its spans to the
    OTLP/HTTP traces endpoint ``url`` (e.g. ``http://collector:4318/v1/traces``).
    Raises whatever the SDK raises when it cannot start (callers log it and stay off)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create(dict(resource)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    return provider


def shutdown_provider(provider: TracerProvider, timeout: float) -> None:
    """Export what ``provider`` has queued and stop it, giving up after ``timeout`` seconds:
    a collector that does not answer must not hold up the process' exit (the export goes on
    in a daemon thread that dies with the process). Never raises."""

    def stop() -> None:
        try:
            provider.shutdown()
        except Exception:
            log.exception("OpenTelemetry: shutdown failed")

    t = threading.Thread(target=stop, name="otel-shutdown", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        log.warning("OpenTelemetry: spans not exported within %.0f s; dropped", timeout)


class TracerHolder:
    """A tracer provider and its tracer of instrumentation scope ``scope``, or neither (off:
    every span method of a subclass returns at once). Not thread-safe by itself: attach
    before other threads trace, shut down after they stop."""

    def __init__(self, scope: str, provider: TracerProvider | None = None) -> None:
        self._scope = scope
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        if provider is not None:
            self._attach(provider)

    def _attach(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer(self._scope)

    @property
    def on(self) -> bool:
        """Whether spans are exported."""
        return self._tracer is not None

    def shutdown(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        """Export what is queued and stop (at exit), giving up after ``timeout`` seconds
        (``shutdown_provider``); tracing is off afterwards. No-op when off."""
        provider = self._provider
        if provider is None:
            return
        self._provider = None
        self._tracer = None
        shutdown_provider(provider, timeout)


def mark_error(span: Span, kind: str, description: str | None = None) -> None:
    """Mark ``span`` failed: attribute ``error.type=kind`` and status ERROR (``description``
    its message), after the OpenTelemetry semantic conventions."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, description))
