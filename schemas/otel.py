"""The OpenTelemetry trace SDK set-up shared by the controller and the harness.

Both export spans the same way (OTLP/HTTP protobuf, batched, the SDK's ``OTEL_*`` settings
apply) and stop the same way at exit; only the resource and the scope differ. The SDK is
imported inside the functions, so a process with traces off never loads it.
Used by ``controller/metrics/tracing.py`` and ``harness/telemetry.py`` (docs/observability.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the SDK is imported only when traces are on
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)


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


def mark_error(span: Span, kind: str, description: str | None = None) -> None:
    """Mark ``span`` failed: attribute ``error.type=kind`` and status ERROR (``description``
    its message), after the OpenTelemetry semantic conventions."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, description))
