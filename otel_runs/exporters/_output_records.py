"""Output lines as OpenTelemetry log records (the part of ``otlp_logs`` that makes them).

One record per line: body = the text, timestamp = run start + ``t``, the run span's trace
context, severity from the level (``log`` lines) or the stream (``out``/``meta`` INFO,
``err`` WARN), attributes ``run.id``, ``run.output.stream``, ``run.output.line`` and
``log.iostream`` (stdout/stderr); a ``log`` line's instrumentation scope is its logger.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler, ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv._incubating.attributes.log_attributes import LOG_IOSTREAM
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from .. import _attributes as A  # noqa: N812 - as in the core
from .._output import remove_output_sink
from .._ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from .otlp_logs import OTLPLogProcessor

__all__ = ["MAX_PENDING_LINES", "MAX_SCOPES", "RUN_OUTPUT_LINE", "RUN_OUTPUT_STREAM", "SCOPE", "OutputLogs",
           "line_attributes", "line_record", "readable_records", "severity", "span_context"]


#: Attributes of each output log record (besides ``run.id`` and ``log.iostream``).
RUN_OUTPUT_STREAM = "run.output.stream"
RUN_OUTPUT_LINE = "run.output.line"
#: Instrumentation scope of lines that are not Python log records.
SCOPE = "otel_runs"
#: Distinct logger names used as scopes; further names share :data:`SCOPE`.
MAX_SCOPES = 256
#: Output lines waiting to become records; chunks past it are dropped (and counted).
MAX_PENDING_LINES = 16_384

logger = logging.getLogger("otel_runs.exporters.otlp")

_IOSTREAM = {"out": "stdout", "err": "stderr"}
_STREAM_SEVERITY = {"out": (SeverityNumber.INFO, "INFO"), "err": (SeverityNumber.WARN, "WARN"),
                    "meta": (SeverityNumber.INFO, "INFO")}
_LEVEL_SEVERITY = {"DEBUG": SeverityNumber.DEBUG, "INFO": SeverityNumber.INFO,
                   "WARNING": SeverityNumber.WARN, "WARN": SeverityNumber.WARN,
                   "ERROR": SeverityNumber.ERROR, "CRITICAL": SeverityNumber.FATAL,
                   "FATAL": SeverityNumber.FATAL}


def severity(line: dict[str, Any]) -> tuple[SeverityNumber, str]:
    """Severity number and text of an output line (see the module docstring)."""
    level = line.get("level")
    if level is not None:
        text = str(level).upper()
        return _LEVEL_SEVERITY.get(text, SeverityNumber.INFO), text
    return _STREAM_SEVERITY.get(str(line.get("stream")), (SeverityNumber.INFO, "INFO"))


def line_attributes(run_id: str, line: dict[str, Any]) -> dict[str, Any]:
    """The attributes of an output line's log record."""
    stream = str(line.get("stream", "out"))
    attrs: dict[str, Any] = {A.RUN_ID: run_id, RUN_OUTPUT_STREAM: stream,
                             RUN_OUTPUT_LINE: int(line.get("n", 0))}
    iostream = _IOSTREAM.get(stream)
    if iostream is not None:
        attrs[LOG_IOSTREAM] = iostream
    return attrs


def span_context(trace_id: int, span_id: int, trace_flags: int) -> Context:
    """A context whose current span is the run span (for a record's trace fields)."""
    ctx = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(trace_flags))
    return trace.set_span_in_context(NonRecordingSpan(ctx), Context())


def line_record(line: dict[str, Any], *, run_id: str, start_ns: int, context: Context) -> dict[str, Any]:
    """The keyword arguments of ``Logger.emit`` for one output line."""
    number, text = severity(line)
    return {"timestamp": start_ns + round(float(line.get("t", 0.0)) * 1e9), "context": context,
            "severity_number": number, "severity_text": text, "body": str(line.get("text", "")),
            "attributes": line_attributes(run_id, line)}


def readable_records(lines: list[dict[str, Any]], *, run_id: str, start_ns: int, trace_id: int,
                     span_id: int, resource: Resource,
                     trace_flags: int = TraceFlags.SAMPLED) -> list[ReadableLogRecord]:
    """Output lines as finished log records for an exporter (the backfill's way: no
    provider, the same records the live path emits)."""
    ctx = span_context(trace_id, span_id, trace_flags)
    scopes: dict[str, InstrumentationScope] = {}
    out: list[ReadableLogRecord] = []
    for line in lines:
        name = str(line.get("logger") or SCOPE) if line.get("stream") == "log" else SCOPE
        scope = scopes.get(name)
        if scope is None:
            scope = scopes[name] = InstrumentationScope(name)
        record = LogRecord(**line_record(line, run_id=run_id, start_ns=start_ns, context=ctx))
        out.append(ReadableLogRecord(log_record=record, resource=resource,
                                     instrumentation_scope=scope))
    return out


def _logging_exported() -> bool:
    """Whether an SDK ``LoggingHandler`` on the root logger exports ``logging`` already."""
    return any(isinstance(h, LoggingHandler) for h in logging.getLogger().handlers)


class OutputLogs:
    """The output sink emitting log records into ``provider`` (``processor``: otel-runs'
    OTLP processor on it, if any; ``owns``: the provider is otel-runs' own). The sink only
    queues a chunk (bounded: :data:`MAX_PENDING_LINES`); one thread makes the records, so
    a run's own thread never pays for them."""

    def __init__(self, provider: LoggerProvider, processor: OTLPLogProcessor | None,
                 owns: bool) -> None:
        self.provider, self.processor, self.owns = provider, processor, owns
        self._loggers: dict[str, Any] = {}
        self._cond = threading.Condition()
        self._pending: deque[tuple[tuple[str, int, Context], list[dict[str, Any]]]] = deque()
        self._pending_lines = 0
        self._busy = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._drops = RateLimitedLog(logger)
        self.emitted = 0
        self.dropped = 0

    def after_fork(self) -> None:
        """In a forked child: fresh lock, no queued lines, a thread of its own on first use."""
        self._cond = threading.Condition()
        self._pending.clear()
        self._pending_lines, self._busy, self._thread = 0, False, None

    def _logger(self, name: str) -> Any:
        found = self._loggers.get(name)
        if found is None:
            if len(self._loggers) >= MAX_SCOPES:
                return self._logger(SCOPE)
            found = self._loggers[name] = self.provider.get_logger(name or SCOPE)
        return found

    def sink(self, run: Any, lines: Sequence[dict[str, Any]], durable: bool) -> None:
        """``add_output_sink`` hook: queue the chunk for the emitting thread (``durable``
        is ignored: every line is exported)."""
        trace_id, span_id = getattr(run, "trace_id", 0), getattr(run, "span_id", None)
        if not trace_id or span_id is None or not lines:
            return
        ctx = span_context(trace_id, span_id, getattr(run, "trace_flags", TraceFlags.SAMPLED))
        with self._cond:
            if self._stopped:
                return
            if self._pending_lines + len(lines) > MAX_PENDING_LINES:
                self.dropped += len(lines)
                dropped = self.dropped
            else:
                dropped = 0
                self._pending.append(((run.run_id, run.start_ns, ctx), lines))
                self._pending_lines += len(lines)
                if self._thread is None or self._pid != os.getpid():  # (a forked child too)
                    self._pid = os.getpid()
                    self._thread = threading.Thread(target=self._work, daemon=True,
                                                    name="otel-runs-otlp-logs")
                    self._thread.start()
                self._cond.notify_all()
        if dropped:
            self._drops.warning("otlp-logs-pending", "otel-runs: run output is written faster "
                                "than it is exported as logs; %d line(s) not exported so far",
                                dropped)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    if self._stopped:
                        return
                    self._cond.wait()
                (run_id, start_ns, ctx), lines = self._pending.popleft()
                self._busy = True
            try:
                self._emit(run_id, start_ns, ctx, lines)
            except Exception:  # noqa: BLE001 - never let one chunk stop the thread
                logger.debug("otel-runs: emitting output log records failed", exc_info=True)
            finally:
                with self._cond:
                    self._pending_lines -= len(lines)
                    self._busy = False
                    self._cond.notify_all()

    def _emit(self, run_id: str, start_ns: int, ctx: Context, lines: list[dict[str, Any]]) -> None:
        skip_log = _logging_exported()
        for line in lines:
            if line.get("stream") == "log":
                if skip_log:
                    continue
                emitter = self._logger(str(line.get("logger") or SCOPE))
            else:
                emitter = self._logger(SCOPE)
            emitter.emit(**line_record(line, run_id=run_id, start_ns=start_ns, context=ctx))
            self.emitted += 1

    def drain(self, timeout_s: float) -> bool:
        """Wait (bounded) until every queued chunk was emitted; True if it was."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def flush(self, timeout_millis: int) -> bool:
        """Emit what is queued, then flush otel-runs' processor (each bounded)."""
        drained = self.drain(timeout_millis / 1000)
        flushed = True if self.processor is None else self.processor.force_flush(timeout_millis)
        return drained and flushed

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop taking output; emit what is queued (bounded); stop otel-runs' processor."""
        remove_output_sink(self.sink)
        self.drain(timeout_s)
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self.owns:
            self.provider.shutdown()
            return
        if self.processor is not None:  # on the application's provider: take it off again
            self.processor.shutdown()
            multi = getattr(self.provider, "_multi_log_record_processor", None)
            procs = getattr(multi, "_log_record_processors", None)
            if isinstance(procs, tuple):
                multi._log_record_processors = tuple(p for p in procs if p is not self.processor)
