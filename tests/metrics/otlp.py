"""An OTLP/HTTP collector stand-in: receives what an OpenTelemetry exporter posts.

Shaped after the OTLP/HTTP spec: ``POST /v1/traces`` (``ExportTraceServiceRequest``),
``/v1/metrics`` and ``/v1/logs``, protobuf bodies (``Content-Type:
application/x-protobuf``) or their JSON mapping (``application/json``), gzip when
``Content-Encoding: gzip``, plain or chunked, answered with an empty export response in
the same encoding. Bodies are decoded with ``opentelemetry-proto``; a test reads the spans
(flattened, with their resource attributes) and the metric and log names.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
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
        self.errors: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    parts = []  # node's exporters (Claude Code's) stream chunked bodies
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self) -> None:
                body = self._body()
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                as_json = (self.headers.get("Content-Type") or "").startswith("application/json")
                try:
                    reply = receiver.take(self.path, body, as_json)
                except Exception as exc:  # a bad body is the exporter's bug: say so
                    receiver.errors.append(f"{self.path}: {exc!r} {self.headers.items()}")
                    self.send_response(400)
                    self.end_headers()
                    self.wfile.write(str(exc).encode())
                    return
                if reply is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                ctype = "application/json" if as_json else "application/x-protobuf"
                self.send_header("Content-Type", ctype)
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

    def take(self, path: str, body: bytes, as_json: bool = False) -> bytes | None:
        """Decode one export request; the serialized response, or None for an unknown path."""
        with self.lock:
            self.received.posts[path] = self.received.posts.get(path, 0) + 1

        def decode(cls: Any) -> Any:
            if as_json:
                return json_format.Parse(body, cls(), ignore_unknown_fields=True)
            return cls.FromString(body)

        def encode(msg: Any) -> bytes:
            return json_format.MessageToJson(msg).encode() if as_json else msg.SerializeToString()

        if path == "/v1/traces":
            req = decode(ExportTraceServiceRequest)
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
            return encode(ExportTraceServiceResponse())
        if path == "/v1/metrics":
            mreq = decode(ExportMetricsServiceRequest)
            with self.lock:
                for rm in mreq.resource_metrics:
                    self.received.metric_resources.append(_attrs(rm.resource.attributes))
                    for sm in rm.scope_metrics:
                        self.received.metric_names.update(m.name for m in sm.metrics)
            return encode(ExportMetricsServiceResponse())
        if path == "/v1/logs":
            lreq = decode(ExportLogsServiceRequest)
            with self.lock:
                for rl in lreq.resource_logs:
                    for sl in rl.scope_logs:
                        for rec in sl.log_records:
                            name = rec.event_name or str(_attrs(rec.attributes).get("event.name"))
                            self.received.log_names.add(name)
            return encode(ExportLogsServiceResponse())
        return None

    def spans(self) -> list[Span]:
        with self.lock:
            return list(self.received.spans)
