"""Run output as OpenTelemetry logs: each line a log record in the run span's trace.

With OTLP export configured, every output line a run writes (``run.log``, ``run.output``,
captured ``logging`` records, ``run_command``) is also emitted through the OpenTelemetry
logs SDK, with the trace id, span id and trace flags of the run span (so a backend links
a trace to its output); the records are made by :mod:`._output_records`.

Which LoggerProvider: the application's, when it installed an SDK ``LoggerProvider``
(never replaced; otel-runs adds its OTLP exporter to it only for an explicit
``otlp_endpoint``, as for spans); else one of otel-runs' own (not installed globally)
with the resource of the tracer provider. The official OTLP log exporter sends
(``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT``, else the endpoint otel-runs was given, else
``OTEL_EXPORTER_OTLP_ENDPOINT``; protocol ``OTEL_EXPORTER_OTLP_(LOGS_)PROTOCOL``) from the
SDK's ``BatchLogRecordProcessor`` (bounded queue, ``OTEL_BLRP_*``): a run only queues
its lines (bounded); a collector that is down costs the export thread its time, and
failures are summarised once per interval. ``OTEL_LOGS_EXPORTER=none``
turns it off. When the application already exports Python ``logging`` as OTel logs (an
SDK ``LoggingHandler`` on the root logger), captured ``log`` lines are not emitted again.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Sequence
from urllib.parse import urlparse

from opentelemetry._logs import get_logger_provider
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.resources import Resource

from .. import _settings
from .._output import add_output_sink
from .._ratelimit import RateLimitedLog
from ._output_records import (
    RUN_OUTPUT_LINE,
    RUN_OUTPUT_STREAM,
    OutputLogs,
    line_record,
    readable_records,
)
from .otlp import (
    DEFAULT_PROTOCOL,
    DEFAULT_TIMEOUT_S,
    ERROR_LOG_INTERVAL_S,
    PROTOCOLS,
    BoundedFlush,
    _install_log_filter,
    capture_export_logs,
)

__all__ = ["RUN_OUTPUT_LINE", "RUN_OUTPUT_STREAM", "OTLPLogProcessor", "OutputLogs",
           "QuietLogExporter", "flush", "line_record", "logs_requested", "otlp_log_exporter",
           "otlp_log_processor", "output_logs", "readable_records", "shutdown", "start"]

logger = logging.getLogger("otel_runs.exporters.otlp")

OTEL_LOGS_EXPORTER = "OTEL_LOGS_EXPORTER"
OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_EXPORTER_OTLP_LOGS_ENDPOINT = "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"
OTEL_EXPORTER_OTLP_LOGS_PROTOCOL = "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL"
OTEL_EXPORTER_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
OTEL_EXPORTER_OTLP_LOGS_TIMEOUT = "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT"
OTEL_EXPORTER_OTLP_TIMEOUT = "OTEL_EXPORTER_OTLP_TIMEOUT"



def _exporters_named() -> list[str] | None:
    value = _settings.env_str(OTEL_LOGS_EXPORTER)
    return None if value is None else [e.strip().lower() for e in value.split(",")]


def logs_off() -> bool:
    """``OTEL_LOGS_EXPORTER=none``: no run output as OTel logs at all."""
    return (_exporters_named() or [""]) == ["none"]


def logs_requested(endpoint: str | None = None) -> bool:
    """Whether otel-runs should export output logs over OTLP itself: ``endpoint``,
    ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``, unless
    ``OTEL_LOGS_EXPORTER`` excludes ``otlp``."""
    named = _exporters_named()
    if named is not None and "otlp" not in named:
        return False
    return bool(endpoint or _settings.env_str(OTEL_EXPORTER_OTLP_LOGS_ENDPOINT)
                or _settings.env_str(OTEL_EXPORTER_OTLP_ENDPOINT))


def logs_protocol() -> str:
    """``OTEL_EXPORTER_OTLP_LOGS_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``, else
    ``http/protobuf`` (an unsupported value: ``http/protobuf``)."""
    for name in (OTEL_EXPORTER_OTLP_LOGS_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL):
        value = _settings.env_str(name)
        if value is not None:
            return value.lower() if value.lower() in PROTOCOLS else DEFAULT_PROTOCOL
    return DEFAULT_PROTOCOL


def logs_timeout() -> float:
    """Seconds one export may take: ``OTEL_EXPORTER_OTLP_(LOGS_)TIMEOUT``, else 10."""
    for name in (OTEL_EXPORTER_OTLP_LOGS_TIMEOUT, OTEL_EXPORTER_OTLP_TIMEOUT):
        value = _settings.env_str(name)
        if value is not None:
            try:
                timeout = float(value)
            except ValueError:
                timeout = -1.0
            return timeout if timeout > 0 else DEFAULT_TIMEOUT_S
    return DEFAULT_TIMEOUT_S


def _http_logs_url(endpoint: str) -> str:
    path = urlparse(endpoint).path.rstrip("/")
    return endpoint if path.endswith("/v1/logs") else endpoint.rstrip("/") + "/v1/logs"


def otlp_log_exporter(endpoint: str | None = None, *, protocol: str | None = None,
                      timeout: float | None = None) -> LogRecordExporter:
    """The official OTLP log exporter. ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` wins; else
    ``endpoint`` is a base URL (``/v1/logs`` is added for HTTP); None lets the exporter
    read ``OTEL_EXPORTER_OTLP_ENDPOINT`` itself."""
    protocol = protocol or logs_protocol()
    timeout = timeout if timeout is not None else logs_timeout()
    if _settings.env_str(OTEL_EXPORTER_OTLP_LOGS_ENDPOINT):
        endpoint = None  # the exporters read the signal's own variable
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
            OTLPLogExporter as GrpcLogExporter,
        )

        return GrpcLogExporter(endpoint=endpoint or None, timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (
        OTLPLogExporter as HttpLogExporter,
    )

    return HttpLogExporter(endpoint=_http_logs_url(endpoint) if endpoint else None,
                           timeout=timeout)


class QuietLogExporter(LogRecordExporter):
    """Wraps an OTLP log exporter: a failed or raising export is summarised by one log
    record per interval, never once per line or batch."""

    def __init__(self, exporter: LogRecordExporter, *,
                 error_interval: float = ERROR_LOG_INTERVAL_S) -> None:
        self.exporter = exporter
        self.endpoint = str(getattr(exporter, "_endpoint", "") or type(exporter).__name__)
        self._errors = RateLimitedLog(logger, interval=error_interval)
        self._lock = threading.Lock()
        self.exports = self.failures = self.dropped_records = self.in_flight = 0
        self._shut_down = False

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        with self._lock:
            self.exports += 1
            self.in_flight += 1
        reason = ""
        try:
            with capture_export_logs() as captured:
                try:
                    result = self.exporter.export(batch)
                except Exception as exc:
                    result, reason = LogRecordExportResult.FAILURE, f"{type(exc).__name__}: {exc}"
            if result is LogRecordExportResult.SUCCESS:
                return result
            reason = reason or " / ".join(dict.fromkeys(captured)) or "export failed"
            with self._lock:
                self.failures += 1
                self.dropped_records += len(batch)
                dropped = self.dropped_records
            self._errors.warning(
                f"otlp-logs-export:{self.endpoint}",
                "otel-runs: OTLP log export to %s failed (%s); %d output line(s) dropped so "
                "far. Output is still kept by the ledger and the live feed.",
                self.endpoint, reason, dropped)
            return LogRecordExportResult.FAILURE
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
        return bool(self.exporter.force_flush(timeout_millis))


class OTLPLogProcessor(BoundedFlush, BatchLogRecordProcessor):
    """The SDK's ``BatchLogRecordProcessor`` (bounded queue) with a
    :class:`QuietLogExporter`; flush and shutdown wait at most about one (two) export
    timeout(s) for a collector that hangs."""

    def __init__(self, exporter: LogRecordExporter, *, timeout: float | None = None,
                 error_interval: float = ERROR_LOG_INTERVAL_S) -> None:
        _install_log_filter()  # "Queue full, dropping Log": at most once per interval
        self.quiet_exporter = QuietLogExporter(exporter, error_interval=error_interval)
        self.timeout = timeout if timeout is not None else logs_timeout()
        queue_size = BatchLogRecordProcessor._default_max_queue_size()
        batch_size = min(BatchLogRecordProcessor._default_max_export_batch_size(), queue_size)
        super().__init__(self.quiet_exporter, max_queue_size=queue_size,
                         max_export_batch_size=batch_size)
        self._init_bounded_flush()

    _flush_what = "OTLP log"

    def _sdk_flush(self) -> None:
        BatchLogRecordProcessor.force_flush(self)

    @property
    def max_queue_size(self) -> int:
        """How many records may wait for export; more are dropped."""
        return int(self._batch_processor._max_queue_size)

    @property
    def queued(self) -> int:
        """Records currently waiting for export."""
        return len(self._batch_processor._queue)


def otlp_log_processor(endpoint: str | None) -> OTLPLogProcessor:
    """The processor exporting output records over OTLP (see :func:`otlp_log_exporter`)."""
    protocol, timeout = logs_protocol(), logs_timeout()
    proc = OTLPLogProcessor(otlp_log_exporter(endpoint, protocol=protocol, timeout=timeout),
                            timeout=timeout)
    logger.info("otel-runs: exporting run output as OTLP logs (%s) to %s", protocol,
                proc.quiet_exporter.endpoint)
    return proc


_lock = threading.Lock()
_pipeline: OutputLogs | None = None
_atexit_registered = False


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    if _pipeline is not None:
        _pipeline.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def output_logs() -> OutputLogs | None:
    """The running output-logs pipeline, if any."""
    return _pipeline


def start(endpoint: str | None, resource: Resource | None = None) -> OutputLogs | None:
    """Emit run output as OTel logs from now on (once; see the module docstring):
    into the application's SDK LoggerProvider (with otel-runs' OTLP exporter only for
    an explicit ``endpoint``), else, when OTLP is asked for, into otel-runs' own."""
    global _pipeline, _atexit_registered
    with _lock:
        if _pipeline is not None or logs_off():
            return _pipeline
        current = get_logger_provider()
        app = isinstance(current, LoggerProvider)
        wanted = bool(endpoint) if app else True
        proc = otlp_log_processor(endpoint) if wanted and logs_requested(endpoint) else None
        if not app and proc is None:
            return None
        if app:
            provider: LoggerProvider = current  # type: ignore[assignment]
        else:
            provider = LoggerProvider(resource=resource or Resource.create({}))
        if proc is not None:
            provider.add_log_record_processor(proc)
        _pipeline = OutputLogs(provider, proc, owns=not app)
        add_output_sink(_pipeline.sink)
        if not _atexit_registered:  # lines still queued at exit are emitted and exported
            atexit.register(shutdown)
            _atexit_registered = True
        return _pipeline


def flush(timeout_millis: int = 30_000) -> bool:
    """Export the queued output records (bounded); True when done in time."""
    pipeline = _pipeline
    return True if pipeline is None else pipeline.flush(timeout_millis)


def shutdown() -> None:
    """Stop emitting output as logs; flush and stop otel-runs' own pipeline. Idempotent."""
    global _pipeline
    with _lock:
        pipeline, _pipeline = _pipeline, None
    if pipeline is not None:
        pipeline.shutdown()
