"""Real OTLP receivers for tests, built from the official ``opentelemetry-proto`` messages.

``OTLPHttpReceiver`` (OTLP/HTTP protobuf, ``POST /v1/traces`` and ``/v1/logs``) and
``OTLPGrpcReceiver`` (the ``TraceService`` and ``LogsService`` gRPC services) listen on
127.0.0.1, decode every ``ExportTraceServiceRequest`` / ``ExportLogsServiceRequest`` and
keep the spans (``.spans``) and log records (``.logs``) as plain dicts. ``HungServer``
accepts connections and never answers; ``refused_endpoint()`` has nothing listening.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def any_value(value: AnyValue) -> Any:
    """A protobuf ``AnyValue`` as a Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def decode_request(request: trace_service_pb2.ExportTraceServiceRequest,
                   headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every span in an export request, flattened, with its resource and scope."""
    spans: list[dict[str, Any]] = []
    for rs in request.resource_spans:
        resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for sp in ss.spans:
                spans.append({
                    "name": sp.name,
                    "trace_id": sp.trace_id.hex(),
                    "span_id": sp.span_id.hex(),
                    "parent_span_id": sp.parent_span_id.hex() or None,
                    "kind": sp.kind,
                    "start_time_ns": sp.start_time_unix_nano,
                    "end_time_ns": sp.end_time_unix_nano,
                    "attributes": {kv.key: any_value(kv.value) for kv in sp.attributes},
                    "events": [{"name": e.name, "time_ns": e.time_unix_nano,
                                "attributes": {kv.key: any_value(kv.value) for kv in e.attributes}}
                               for e in sp.events],
                    "status_code": sp.status.code,
                    "status_message": sp.status.message,
                    "flags": sp.flags,
                    "resource": resource,
                    "scope": ss.scope.name,
                    "headers": dict(headers or {}),
                })
    return spans


def decode_logs(request: logs_service_pb2.ExportLogsServiceRequest) -> list[dict[str, Any]]:
    """Every log record in an export request, flattened, with its resource and scope."""
    records: list[dict[str, Any]] = []
    for rl in request.resource_logs:
        resource = {kv.key: any_value(kv.value) for kv in rl.resource.attributes}
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                records.append({
                    "body": any_value(rec.body),
                    "severity_number": rec.severity_number,
                    "severity_text": rec.severity_text,
                    "time_ns": rec.time_unix_nano,
                    "trace_id": rec.trace_id.hex(),
                    "span_id": rec.span_id.hex(),
                    "flags": rec.flags,
                    "attributes": {kv.key: any_value(kv.value) for kv in rec.attributes},
                    "resource": resource,
                    "scope": sl.scope.name,
                })
    return records


class _Store:
    def __init__(self, hold: bool = False) -> None:
        self.cond = threading.Condition()
        self.spans: list[dict[str, Any]] = []
        #: Decoded log records (``/v1/logs``, the ``LogsService``).
        self.logs: list[dict[str, Any]] = []
        self.log_requests = 0
        self.requests = 0
        #: Export requests that arrived and are being held unanswered (``hold=True``).
        self.held = 0
        self._released = threading.Event()
        if not hold:
            self._released.set()

    def _hold(self) -> None:
        """With ``hold=True``: keep the request unanswered until :meth:`release`."""
        if self._released.is_set():
            return
        with self.cond:
            self.held += 1
            self.cond.notify_all()
        self._released.wait(120)
        with self.cond:
            self.held -= 1

    def release(self) -> None:
        """Answer held requests (and every later one) normally."""
        self._released.set()

    def add(self, spans: list[dict[str, Any]]) -> None:
        with self.cond:
            self.requests += 1
            self.spans.extend(spans)
            self.cond.notify_all()

    def snapshot(self) -> list[dict[str, Any]]:
        with self.cond:
            return list(self.spans)

    def add_logs(self, records: list[dict[str, Any]]) -> None:
        with self.cond:
            self.log_requests += 1
            self.logs.extend(records)
            self.cond.notify_all()

    def wait_for_logs(self, predicate: Callable[[list[dict[str, Any]]], Any],
                      timeout: float = 15.0) -> Any:
        """Wait (bounded) until ``predicate(log records)`` is truthy; return it or raise."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate(list(self.logs))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    bodies = [r["body"] for r in self.logs]
                    raise AssertionError(f"OTLP receiver: condition not met within {timeout}s; "
                                         f"got {len(bodies)} log records: {bodies[:30]}")
                self.cond.wait(min(left, 0.2))

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float = 15.0) -> Any:
        """Wait (bounded) until ``predicate(spans)`` is truthy; return it or raise."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate(list(self.spans))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    names = [s["name"] for s in self.spans]
                    raise AssertionError(f"OTLP receiver: condition not met within {timeout}s; "
                                         f"got {len(names)} spans: {names[:30]}")
                self.cond.wait(min(left, 0.2))


class OTLPHttpReceiver(_Store):
    """An OTLP/HTTP (protobuf) trace receiver on 127.0.0.1; ``.endpoint`` is the base URL.
    With ``hold=True`` it accepts export requests and does not answer until :meth:`release`."""

    def __init__(self, hold: bool = False) -> None:
        super().__init__(hold)
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                store._hold()
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                path = self.path.rstrip("/")
                if path == "/v1/logs":
                    logs_request = logs_service_pb2.ExportLogsServiceRequest()
                    logs_request.ParseFromString(body)
                    store.add_logs(decode_logs(logs_request))
                    self._reply(logs_service_pb2.ExportLogsServiceResponse().SerializeToString())
                    return
                if path != "/v1/traces":
                    self.send_error(404)
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                store.add(decode_request(request, {k.lower(): v for k, v in self.headers.items()}))
                self._reply(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

            def _reply(self, reply: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


class OTLPGrpcReceiver(_Store):
    """An OTLP/gRPC trace receiver (the proto's ``TraceService``) on 127.0.0.1.
    With ``hold=True`` it accepts export calls and does not answer until :meth:`release`."""

    def __init__(self, hold: bool = False) -> None:
        super().__init__(hold)
        import grpc

        store = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - proto naming
                store._hold()
                store.add(decode_request(request, dict(context.invocation_metadata())))
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        class LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - proto naming
                store._hold()
                store.add_logs(decode_logs(request))
                return logs_service_pb2.ExportLogsServiceResponse()

        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(LogsServicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.release()
        self.server.stop(grace=None).wait(10)


class HungServer:
    """Accepts TCP connections, reads what arrives, never answers until :meth:`release`.

    Works against both OTLP/HTTP and OTLP/gRPC clients (neither ever gets a reply)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.connections: list[socket.socket] = []
        self.bytes_received = 0
        self.released = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self.released.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        try:
            while not self.released.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                with self.lock:
                    self.bytes_received += len(data)
        except OSError:
            return

    @property
    def open_connections(self) -> int:
        with self.lock:
            return sum(1 for c in self.connections if c.fileno() != -1)

    def release(self) -> None:
        """Close every held connection and stop listening."""
        self.released.set()
        with self.lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self.sock.close()

    stop = release


def refused_endpoint() -> str:
    """A 127.0.0.1 URL where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{_free_port()}"


def run_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run spans among decoded spans (they carry ``run.type``)."""
    return [s for s in spans if "run.type" in s["attributes"]]
