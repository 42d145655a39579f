"""OTLP export of every span (runs, their requests, their child spans), bounded and quiet.

The official ``opentelemetry-exporter-otlp`` exporters do the sending (they read
``OTEL_EXPORTER_OTLP_HEADERS``, ``..._CERTIFICATE``, ``..._COMPRESSION`` themselves)
inside the SDK's ``BatchSpanProcessor``, handed scrubbed copies of the spans
(:class:`~otel_runs.exporters._scrubbing.ScrubbingSpanExporter`: no secret leaves over
OTLP, from any span), so exporting honours sampling and a
tracked request only ever appends a span to a bounded in-memory queue. A collector
that is down or hangs costs an export thread its time, never a request; failures
are summarised once per interval instead of once per span or batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from .. import _settings
from .._ratelimit import RateLimitedLog
from ._scrubbing import ScrubbingSpanExporter

__all__ = [
    "DEFAULT_PROTOCOL",
    "DEFAULT_TIMEOUT_S",
    "OTLPSpanProcessor",
    "QuietExporter",
    "ScrubbingSpanExporter",
    "otlp_exporter",
    "otlp_processor",
    "otlp_protocol",
    "otlp_requested",
    "otlp_timeout",
]

logger = logging.getLogger("otel_runs.exporters.otlp")

#: The standard variable naming the trace exporters (``none`` turns OTLP export off).
OTEL_TRACES_EXPORTER = "OTEL_TRACES_EXPORTER"

#: The OTLP spec's default protocol.
DEFAULT_PROTOCOL = "http/protobuf"
PROTOCOLS = ("grpc", "http/protobuf")
#: Per-export timeout in seconds when ``OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT`` is unset
#: (the Python exporters read these variables as seconds, not milliseconds).
DEFAULT_TIMEOUT_S = 10.0
#: How often a recurring export failure is logged (seconds).
ERROR_LOG_INTERVAL_S = 60.0

#: The OTel loggers that report each failed export (or dropped span) individually.
_NOISY_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
)


def otlp_requested(endpoint: str | None = None) -> bool:
    """Whether anything asks for OTLP: ``endpoint``, or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (unless ``OTEL_TRACES_EXPORTER`` excludes ``otlp``)."""
    if endpoint:
        return True
    if not (_settings.env_str(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
            or _settings.env_str(OTEL_EXPORTER_OTLP_ENDPOINT)):
        return False
    exporters = _settings.env_str(OTEL_TRACES_EXPORTER)
    if exporters is not None and "otlp" not in [e.strip().lower() for e in exporters.split(",")]:
        logger.info("otel-runs: %s=%s does not include 'otlp'; not exporting over OTLP",
                    OTEL_TRACES_EXPORTER, exporters)
        return False
    return True


def otlp_protocol() -> str:
    """``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``, else
    ``http/protobuf``; an unsupported value falls back to ``http/protobuf`` with a warning."""
    for name in (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL):
        value = _settings.env_str(name)
        if value is None:
            continue
        value = value.lower()
        if value in PROTOCOLS:
            return value
        logger.warning("otel-runs: %s=%r is not supported (choose one of %s); using %s",
                       name, value, ", ".join(PROTOCOLS), DEFAULT_PROTOCOL)
        return DEFAULT_PROTOCOL
    return DEFAULT_PROTOCOL


def otlp_timeout() -> float:
    """Seconds one export may take (all retries included): ``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT``,
    else ``OTEL_EXPORTER_OTLP_TIMEOUT``, else 10. Seconds, as the Python exporters read them."""
    for name in (OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, OTEL_EXPORTER_OTLP_TIMEOUT):
        value = _settings.env_str(name)
        if value is None:
            continue
        try:
            timeout = float(value)
        except ValueError:
            timeout = -1.0
        if timeout > 0:
            return timeout
        logger.warning("otel-runs: %s=%r is not a positive number of seconds; using %s",
                       name, value, DEFAULT_TIMEOUT_S)
        return DEFAULT_TIMEOUT_S
    return DEFAULT_TIMEOUT_S


def _http_traces_url(endpoint: str) -> str:
    """A base endpoint (like ``OTEL_EXPORTER_OTLP_ENDPOINT``) as the traces URL."""
    path = urlparse(endpoint).path.rstrip("/")
    if path.endswith("/v1/traces"):
        return endpoint
    return endpoint.rstrip("/") + "/v1/traces"


def otlp_exporter(endpoint: str | None = None, *, protocol: str | None = None,
                  timeout: float | None = None) -> SpanExporter:
    """The official OTLP span exporter (not wrapped) for ``protocol`` (default:
    :func:`otlp_protocol`). ``endpoint`` is a base URL like ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (``http://collector:4318``; ``/v1/traces`` is added for HTTP); None lets the exporter
    read the ``OTEL_EXPORTER_OTLP_*`` variables itself."""
    protocol = protocol or otlp_protocol()
    if protocol not in PROTOCOLS:
        raise ValueError(f"OTLP protocol must be one of {PROTOCOLS}, got {protocol!r}")
    timeout = timeout if timeout is not None else otlp_timeout()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter(endpoint=endpoint or None, timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter(endpoint=_http_traces_url(endpoint) if endpoint else None,
                            timeout=timeout)


def exporter_endpoint(exporter: SpanExporter) -> str:
    """Where an official OTLP exporter sends to (for messages); through a
    :class:`ScrubbingSpanExporter`, where the exporter it wraps sends to."""
    while isinstance(exporter, ScrubbingSpanExporter):
        exporter = exporter.exporter
    return str(getattr(exporter, "_endpoint", "") or type(exporter).__name__)


class _ExportLogFilter(logging.Filter):
    """Taming of the OTel exporters' loggers.

    While *this thread* runs an export through :func:`capture_export_logs`, their
    records are kept (the last one becomes part of otel-runs' own summary) and
    not emitted. Elsewhere (e.g. "Queue full, dropping span" on a request thread,
    or an exporter the application installed itself) each distinct message passes
    at most once per interval."""

    def __init__(self, interval: float) -> None:
        super().__init__("otel_runs.otlp")
        self.interval = interval
        self._local = threading.local()
        self._lock = threading.Lock()
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        captured: list[str] | None = getattr(self._local, "captured", None)
        if captured is not None:
            if record.levelno >= logging.WARNING:
                try:
                    captured.append(record.getMessage())
                except Exception:  # a broken record: keep its template
                    captured.append(str(record.msg))
                del captured[:-3]
            return False
        key = (record.name, record.msg)
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                return False
            self._last[key] = now
        return True

    @contextmanager
    def capture(self) -> Iterator[list[str]]:
        previous = getattr(self._local, "captured", None)
        captured: list[str] = []
        self._local.captured = captured
        try:
            yield captured
        finally:
            self._local.captured = previous


_filter = _ExportLogFilter(ERROR_LOG_INTERVAL_S)
_filter_installed = False
_filter_lock = threading.Lock()


def _install_log_filter() -> None:
    global _filter_installed
    with _filter_lock:
        if _filter_installed:
            return
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).addFilter(_filter)
        _filter_installed = True


@contextmanager
def capture_export_logs() -> Iterator[list[str]]:
    """Within the block, on this thread, the OTel exporters' log records are not emitted
    but collected (last three WARNING+ messages) into the yielded list."""
    _install_log_filter()
    with _filter.capture() as captured:
        yield captured


class QuietExporter(SpanExporter):
    """Wraps an OTLP exporter: a failed or raising export is summarised by one log
    record per interval (with the exporter's own reason and how many spans were
    dropped), never once per span or batch."""

    def __init__(self, exporter: SpanExporter, *, error_interval: float = ERROR_LOG_INTERVAL_S) -> None:
        self.exporter = exporter
        self.endpoint = exporter_endpoint(exporter)
        self._errors = RateLimitedLog(logger, interval=error_interval)
        self._lock = threading.Lock()
        self.exports = 0
        self.failures = 0
        self.dropped_spans = 0
        self.in_flight = 0
        self._shut_down = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.exports += 1
            self.in_flight += 1
        reason = ""
        try:
            with capture_export_logs() as captured:
                try:
                    result = self.exporter.export(spans)
                except Exception as exc:  # the SDK would log a traceback per batch
                    result, reason = SpanExportResult.FAILURE, f"{type(exc).__name__}: {exc}"
            if result is SpanExportResult.SUCCESS:
                return result
            reason = reason or " / ".join(dict.fromkeys(captured)) or "export failed"
            with self._lock:
                self.failures += 1
                self.dropped_spans += len(spans)
                dropped = self.dropped_spans
            self._errors.warning(
                f"otlp-export:{self.endpoint}",
                "otel-runs: OTLP export to %s failed (%s); %d span(s) dropped so far. "
                "Runs are still recorded by the ledger and the live feed.",
                self.endpoint, reason, dropped,
            )
            return SpanExportResult.FAILURE
        finally:
            with self._lock:
                self.in_flight -= 1

    def shutdown(self) -> None:
        """Shut the wrapped exporter down (once); aborts its pending retries."""
        with self._lock:
            if self._shut_down:
                return
            self._shut_down = True
        with capture_export_logs():
            self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class BoundedFlush:
    """``force_flush`` / ``shutdown`` that never wait longer than about one (two) export
    timeout(s) for a collector that hangs: the SDK's flush runs in a thread of its own,
    one at a time. Mixed into the span and log batch processors (before the SDK class)."""

    timeout: float
    quiet_exporter: Any
    _batch_processor: Any
    _flush_what = "OTLP"

    def _init_bounded_flush(self) -> None:
        self._flush_lock = threading.Lock()
        self._flush_done: threading.Event | None = None

    def _sdk_flush(self) -> None:
        """The SDK processor's own (unbounded) flush."""
        raise NotImplementedError

    def force_flush(self, timeout_millis: int | None = None) -> bool:
        """Export what is queued; waits at most ``min(timeout_millis, export timeout)``.
        True when everything queued was handed to the exporter in time."""
        wait_s = self.timeout if timeout_millis is None else min(timeout_millis / 1000, self.timeout)
        with self._flush_lock:
            done = self._flush_done
            if done is None or done.is_set():
                done = self._flush_done = threading.Event()
                threading.Thread(target=self._flush_in_background, args=(done,),
                                 name="otel-runs-otlp-flush", daemon=True).start()
        return done.wait(max(wait_s, 0.0))

    def _flush_in_background(self, done: threading.Event) -> None:
        try:
            self._sdk_flush()
        except Exception:
            logger.debug("otel-runs: %s flush failed", self._flush_what, exc_info=True)
        finally:
            done.set()

    def shutdown(self) -> None:
        """Export what is queued and stop; waits at most about two export timeouts
        (a collector that hangs: the pending export is abandoned, its data dropped)."""
        if not self.force_flush():
            # Still stuck on the collector: make the exporter give up its retries now
            # (the SDK would only do so after waiting for its worker thread).
            self.quiet_exporter.shutdown()
        self._batch_processor.shutdown(timeout_millis=int(self.timeout * 1000))


class OTLPSpanProcessor(BoundedFlush, BatchSpanProcessor):
    """The SDK's ``BatchSpanProcessor`` (bounded queue, ``OTEL_BSP_*`` settings,
    sampled spans only) with a :class:`QuietExporter` and bounded flush/shutdown:
    neither waits longer than one export timeout for a collector that hangs.
    ``exporter`` gets scrubbed copies of the spans (:class:`ScrubbingSpanExporter`)."""

    def __init__(self, exporter: SpanExporter, *, timeout: float | None = None,
                 error_interval: float = ERROR_LOG_INTERVAL_S) -> None:
        _install_log_filter()
        if not isinstance(exporter, ScrubbingSpanExporter):
            exporter = ScrubbingSpanExporter(exporter)
        self.quiet_exporter = QuietExporter(exporter, error_interval=error_interval)
        self.timeout = timeout if timeout is not None else otlp_timeout()
        queue_size = BatchSpanProcessor._default_max_queue_size()  # OTEL_BSP_MAX_QUEUE_SIZE
        batch_size = min(BatchSpanProcessor._default_max_export_batch_size(), queue_size)
        super().__init__(self.quiet_exporter, max_queue_size=queue_size,
                         max_export_batch_size=batch_size)
        self._init_bounded_flush()

    def _sdk_flush(self) -> None:
        BatchSpanProcessor.force_flush(self)

    @property
    def max_queue_size(self) -> int:
        """How many spans may wait for export; more are dropped (memory stays bounded)."""
        return int(self._batch_processor._max_queue_size)

    @property
    def queued(self) -> int:
        """Spans currently waiting for export."""
        return len(self._batch_processor._queue)


def otlp_processor(endpoint: str | None) -> OTLPSpanProcessor | None:
    """The span processor exporting every sampled span over OTLP, or None when nothing
    asks for OTLP (no ``endpoint`` and no ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``).

    ``endpoint`` is a base URL like ``OTEL_EXPORTER_OTLP_ENDPOINT``; the protocol comes
    from ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` (default ``http/protobuf``)."""
    if not otlp_requested(endpoint):
        return None
    protocol = otlp_protocol()
    timeout = otlp_timeout()
    exporter = otlp_exporter(endpoint, protocol=protocol, timeout=timeout)
    proc = OTLPSpanProcessor(exporter, timeout=timeout)
    logger.info("otel-runs: exporting spans over OTLP (%s) to %s", protocol,
                proc.quiet_exporter.endpoint)
    return proc
