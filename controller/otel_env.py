"""Which OpenTelemetry settings of the controller's environment an agent may get.

Its own module (no imports) so that the local driver and ``controller.metrics.tracing``
share it without the driver loading the metrics package. Trust: an agent runs arbitrary
commands, so whatever reaches its environment is the agent's; the collector's credential
(headers, mTLS client key and certificate) must not (docs/observability.md).
"""

from __future__ import annotations

_SIGNALS = ("", "TRACES_", "METRICS_", "LOGS_")
_EXPORT = ("ENDPOINT", "PROTOCOL", "COMPRESSION", "TIMEOUT", "CERTIFICATE")

AGENT_OTEL = frozenset(
    {
        *(f"OTEL_EXPORTER_OTLP_{s}{what}" for s in _SIGNALS for what in _EXPORT),
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
        "OTEL_METRICS_EXPORTER",
        "OTEL_LOGS_EXPORTER",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_METRIC_EXPORT_INTERVAL",
        "OTEL_LOGS_EXPORT_INTERVAL",
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "OTEL_BSP_EXPORT_TIMEOUT",
    }
)
"""The ``OTEL_*`` variables an agent gets from the controller's environment: where and how
to export (``CERTIFICATE`` is the CA that checks the collector, public). Not the headers
(``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TRACES_HEADERS``: the collector's credential), not
``CLIENT_KEY`` / ``CLIENT_CERTIFICATE`` (mTLS), not ``OTEL_SERVICE_NAME`` (the controller's
name; the harness names itself ``hyperhive-agent``)."""
