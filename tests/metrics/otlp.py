"""An OTLP/HTTP collector stand-in: receives what an OpenTelemetry exporter posts.

Shaped after the OTLP/HTTP spec: ``POST /v1/traces`` (``ExportTraceServiceRequest``),
``/v1/metrics`` and ``/v1/logs``, protobuf bodies (``Content-Type:
application/x-protobuf``, gzip when ``Content-Encoding: gzip``), answered with an empty
export response. Bodies are decoded with ``opentelemetry-proto``; a test reads the spans
(flattened, with their resource attributes) and the metric and log names.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    raw = getattr(v, kind)
    if kind == "array_value":
        return [_value(x) for x in raw.values]
    if kind == "kvlist_value":
        return _attrs(raw.values)
    return raw


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


@dataclass(frozen=True)
class Span:
    """One received span; ids as hex, times in unix nanoseconds."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int


@dataclass
class Received:
    """What the stand-in has received so far."""

    spans: list[Span] = field(default_factory=list)
    metric_names: set[str] = field(default_factory=set)
    metric_resources: list[dict[str, Any]] = field(default_factory=list)
    log_names: set[str] = field(default_factory=set)
    posts: dict[str, int] = field(default_factory=dict)


class OtlpReceiver:
    """``start()`` serves on a free loopback port (``endpoint``); ``stop()`` ends it."""

    def __init__(self) -> None:
        self.received = Received()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                try:
                    reply = receiver.take(self.path, body)
                except Exception as exc:  # a bad body is the exporter's bug: say so
                    self.send_response(400)
                    self.end_headers()
                    self.wfile.write(str(exc).encode())
                    return
                if reply is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def take(self, path: str, body: bytes) -> bytes | None:
        """Decode one export request; the serialized response, or None for an unknown path."""
        with self.lock:
            self.received.posts[path] = self.received.posts.get(path, 0) + 1
        if path == "/v1/traces":
            req = ExportTraceServiceRequest.FromString(body)
            spans = []
            for rs in req.resource_spans:
                resource = _attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        spans.append(
                            Span(
                                name=s.name,
                                trace_id=s.trace_id.hex(),
                                span_id=s.span_id.hex(),
                                parent_span_id=s.parent_span_id.hex(),
                                start_ns=s.start_time_unix_nano,
                                end_ns=s.end_time_unix_nano,
                                attributes=_attrs(s.attributes),
                                resource=resource,
                                status_code=int(s.status.code),
                            )
                        )
            with self.lock:
                self.received.spans.extend(spans)
            return ExportTraceServiceResponse().SerializeToString()
        if path == "/v1/metrics":
            mreq = ExportMetricsServiceRequest.FromString(body)
            with self.lock:
                for rm in mreq.resource_metrics:
                    self.received.metric_resources.append(_attrs(rm.resource.attributes))
                    for sm in rm.scope_metrics:
                        self.received.metric_names.update(m.name for m in sm.metrics)
            return ExportMetricsServiceResponse().SerializeToString()
        if path == "/v1/logs":
            lreq = ExportLogsServiceRequest.FromString(body)
            with self.lock:
                for rl in lreq.resource_logs:
                    for sl in rl.scope_logs:
                        for rec in sl.log_records:
                            name = rec.event_name or str(_attrs(rec.attributes).get("event.name"))
                            self.received.log_names.add(name)
            return ExportLogsServiceResponse().SerializeToString()
        return None

    def spans(self) -> list[Span]:
        with self.lock:
            return list(self.received.spans)
