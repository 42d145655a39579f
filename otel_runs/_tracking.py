"""``tracked_run``: open a run span, let the body shape it, end it with a status."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import os
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import _attributes as A
from ._context import CURRENT_RUN, STARTING_RUN_KEY, parent_run_id, run_context
from ._ids import now_run_id
from ._open_runs import OpenRun, run_closed, run_opening
from ._output import RunOutput
from ._setup import project_root_for_run, run_tracer
from ._taxonomy import validate_run_type
from .redaction import (
    EVENTS_DROPPED,
    MAX_EVENT_BYTES,
    MAX_EVENTS,
    MAX_RUN_BYTES,
    SPANS_DROPPED,
    Budget,
    clean_metadata,
    clean_name,
    clean_summary,
    dropped_events_marker,
    exception_attributes,
    metadata_json,
)

__all__ = ["RunHandle", "current_run", "tracked_run"]

_SETTABLE_STATUSES = ("ok", "failed", "cancelled")
#: Events ``add_event`` keeps: three places of :data:`MAX_EVENTS` stay free for the
#: dropped-events and dropped-spans markers and the exception.
_EVENTS_KEPT = MAX_EVENTS - 3
_current: contextvars.ContextVar[RunHandle | None] = CURRENT_RUN
#: What activating a run returns: the OTel context token and the current-run token.
_Tokens = tuple[object, "contextvars.Token[RunHandle | None]"]


def current_run() -> RunHandle | None:
    """The innermost run open in this context (e.g. inside a ``@run_tracked`` view)."""
    return _current.get()


class RunHandle:
    """What the body of a run sees: its id at once, and status, summary,
    metadata and events to set. Everything lands on the run span."""

    def __init__(self, run_id: str, run_type: str, subtype: str, summary: str,
                 metadata: dict[str, Any], span: Span) -> None:
        self._run_id = run_id
        self.type = run_type
        self.subtype = subtype
        self._summary = summary
        self._summary_set = False
        self._status: str | None = None
        self.metadata: dict[str, Any] = metadata
        self.span = span
        self._events = 0  # added and kept
        self._events_dropped = 0
        self._event_bytes = 0
        self._entry: OpenRun | None = None  # set by RunScope
        self._output_file: _OutputFile | None = None

    @property
    def run_id(self) -> str:
        """The run's id (``20261127T101500123Z-3fa9c2d1e5``)."""
        return self._run_id

    @property
    def status(self) -> str | None:
        """The status the body reported (``ok``, ``failed``, ``cancelled``), or None."""
        return self._status

    @status.setter
    def status(self, value: str) -> None:
        if value not in _SETTABLE_STATUSES:
            raise ValueError(f"run status must be one of {_SETTABLE_STATUSES}, got {value!r}")
        self._status = value

    @property
    def summary(self) -> str:
        """One line saying what happened."""
        return self._summary

    @summary.setter
    def summary(self, value: str) -> None:
        self._summary = clean_summary(value)
        self._summary_set = True

    def add_event(self, name: str, /, **attributes: Any) -> None:
        """Record a timestamped event on the run (name and attributes scrubbed and
        bounded). Beyond the run's limits (``MAX_EVENTS`` events, ``MAX_EVENT_BYTES``
        bytes) events are only counted; one ``otel_runs.events_dropped`` event at the
        end says how many."""
        if self._events >= _EVENTS_KEPT or self._event_bytes >= MAX_EVENT_BYTES:
            self._events_dropped += 1
            return
        text = clean_name(name)
        budget = Budget(MAX_EVENT_BYTES - self._event_bytes - len(text))
        cleaned = clean_metadata(attributes, budget) if attributes else {}
        self._event_bytes += budget.used + len(text) + 64
        self._events += 1
        self.span.add_event(text, {k: _attr_value(v) for k, v in cleaned.items()})

    def log(self, text: str, stream: str = "out") -> None:
        """Append ``text`` (one line, or several separated by newlines) to the run's
        output; ``stream`` is ``out`` or ``err``."""
        if stream != "out" and stream != "err":
            raise ValueError(f"stream must be 'out' or 'err', got {stream!r}")
        out = self.output_buffer()
        if out is None:
            return
        # From now on ``run.log`` is the output's own (the same checks; a call less per
        # line); once the run ended, it writes nothing, as this does.
        self.log = out.log  # type: ignore[method-assign]
        out.log(text, stream)

    @property
    def output(self) -> _OutputFile:
        """A text file for the run's output: ``print(..., file=run.output)``."""
        if self._output_file is None:
            self._output_file = _OutputFile(self, "out")
        return self._output_file

    def output_buffer(self) -> RunOutput | None:
        """The run's :class:`~otel_runs._output.RunOutput` (made on first use; None once
        the run ended)."""
        entry = self._entry
        if entry is None:
            return None
        out = entry.output
        if out is None:
            if entry.outcome is not None:  # (ended)
                return None
            out = entry.output = RunOutput(entry, entry.start_ns)
        return None if out.closed else out

    def __repr__(self) -> str:
        return f"<RunHandle {self._run_id} {self.subtype} status={self._status!r}>"


class _OutputFile(io.TextIOBase):
    """``run.output``: what is written goes to the run's output, line by line."""

    def __init__(self, handle: RunHandle, stream: str) -> None:
        super().__init__()
        # (weakly: the handle holds this file, and a cycle would outlive the run until
        # the garbage collector ran; the run's scope holds the handle while it runs)
        self._handle, self._stream = weakref.ref(handle), stream

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        handle = self._handle()
        out = handle.output_buffer() if handle is not None else None
        if out is not None and text:
            out.write(self._stream, text, partial=True)
        return len(text)


def _attr_value(value: Any) -> Any:
    """An OTel attribute value: primitives as they are, anything else as JSON text."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value

    return json.dumps(value, ensure_ascii=False)


def classify(exc: BaseException | None, reported: str | None) -> str:
    """The run status for how its block ended (the SDK's own rules are not used:
    its decorator and ``Span.__exit__`` disagree on ``BaseException``)."""
    if exc is None:
        return reported or "ok"
    if isinstance(exc, SystemExit):
        return (reported or "ok") if exc.code in (0, None) else "failed"
    if isinstance(exc, (KeyboardInterrupt, GeneratorExit, asyncio.CancelledError)):
        return "cancelled"
    return "failed"


class RunScope:
    """A started run span and its context; ended exactly once by :meth:`finish`."""

    def __init__(self, project_root: str | os.PathLike[str] | None, run_type: str, subtype: str,
                 summary: str = "", metadata: dict[str, Any] | None = None, *,
                 validated: bool = False) -> None:
        if not validated:
            validate_run_type(run_type, subtype)
        root = project_root_for_run(project_root)
        run_id, now_ns = now_run_id()
        parent_ctx = otel_context.get_current()
        meta = dict(metadata) if metadata else {}
        self._initial_metadata = metadata_json(meta) if meta else "{}"
        if summary:
            summary = clean_summary(summary)
        # Only what is known and non-empty: every span attribute costs (status
        # "running" is implied until the run ends).
        attributes: dict[str, Any] = {A.RUN_ID: run_id, A.RUN_TYPE: run_type, A.RUN_SUBTYPE: subtype,
                                      A.CICD_PIPELINE_NAME: subtype, A.CICD_PIPELINE_RUN_ID: run_id}
        if summary:
            attributes[A.RUN_SUMMARY] = summary
        if meta:
            attributes[A.RUN_METADATA] = self._initial_metadata
        parent = parent_run_id(parent_ctx)
        if parent is not None:
            attributes[A.RUN_PARENT_ID] = parent
        # The run as processors will see it (its Run is built if one asks), and its
        # project: processors find both through the start context.
        entry = OpenRun(root, run_id, run_type, subtype, summary, now_ns, self._initial_metadata,
                        parent)
        run_opening(entry)
        try:
            span = run_tracer().start_span(
                subtype, context=Context({**parent_ctx, STARTING_RUN_KEY: entry}),
                kind=SpanKind.INTERNAL, attributes=attributes, start_time=now_ns,
            )
            if entry.span_id is None and span.is_recording():  # no processor saw it start
                entry.bind(span)  # type: ignore[arg-type]
        except BaseException:
            run_closed(entry)
            raise
        self._entry = entry
        self.run_id = run_id
        self.handle = RunHandle(run_id, run_type, subtype, summary, meta, span)
        self.handle._entry = entry
        self.context = run_context(run_id, span, parent_ctx)
        self.finished = False
        if entry.journal_error is not None:  # OTEL_RUNS_ON_JOURNAL_ERROR=raise: refuse it
            error, entry.journal_error = entry.journal_error, None
            self.finish(error)
            raise error

    def activate(self) -> _Tokens:
        """Make the run current (for spans opened inside it); pass the result to
        :meth:`deactivate`."""
        return otel_context.attach(self.context), _current.set(self.handle)

    @staticmethod
    def deactivate(tokens: _Tokens) -> None:
        """Undo :meth:`activate`."""
        _current.reset(tokens[1])
        otel_context.detach(tokens[0])  # type: ignore[arg-type]

    @contextmanager
    def activated(self) -> Iterator[RunHandle]:
        """:meth:`activate` for the duration of a ``with`` block."""
        tokens = self.activate()
        try:
            yield self.handle
        finally:
            self.deactivate(tokens)

    def finish(self, exc: BaseException | None = None, derived_status: str | None = None,
               derived_summary: str | None = None) -> str:
        """End the run. Status: what the body reported, else ``derived_status``
        (from a response), else ``ok``; an exception decides as in :func:`classify`.
        Raises ``JournalUnavailable`` when the block did not raise but its run could not
        be journaled and ``OTEL_RUNS_ON_JOURNAL_ERROR=raise``."""
        if self.finished:
            return self.handle.status or "ok"
        self.finished = True
        h = self.handle
        span = h.span
        status = classify(exc, h._status or derived_status)
        summary = h._summary
        if not h._summary_set and derived_summary:
            summary = clean_summary(derived_summary)
        exc_attributes: dict[str, str] | None = None
        if exc is not None and status != "ok":
            if not h._summary_set and (status == "failed" or not summary):
                summary = clean_summary(_exc_text(exc))
            exc_attributes = exception_attributes(exc)
        used = h._event_bytes
        if h._events_dropped or self._entry.spans_dropped:
            self._add_markers(h)
        if exc_attributes is not None:
            # (escaped: the exception leaves the run's block; tracked_run re-raises it)
            span.record_exception(exc, attributes=exc_attributes, escaped=True)
            used += sum(len(v) for v in exc_attributes.values())
        final: dict[str, Any] = {A.RUN_STATUS: status,
                                 A.CICD_PIPELINE_RESULT: A.RESULT_OF_STATUS[status]}
        if status == "failed":
            final[A.ERROR_TYPE] = A.error_type(exc)
        if summary:
            final[A.RUN_SUMMARY] = summary
        meta = metadata_json(h.metadata, MAX_RUN_BYTES - used - len(summary)) \
            if h.metadata else "{}"
        changed_meta = meta if meta != self._initial_metadata else None
        if changed_meta is not None:
            final[A.RUN_METADATA] = changed_meta
        span.set_attributes(final)
        if status == "failed":
            span.set_status(Status(StatusCode.ERROR, summary or "failed"))
        # Otherwise the span status stays UNSET, as OpenTelemetry asks of
        # instrumentation (``run.status`` says ``ok`` or ``cancelled``).
        h._status = status
        h._summary = summary
        if self._entry.output is not None:  # its last lines reach the sinks before the end
            self._entry.output.close()
        end_ns = time.time_ns()
        self._entry.ending(status, summary, changed_meta, end_ns)
        try:
            span.end(end_ns)
        finally:
            run_closed(self._entry)
            if self._entry.output is not None:  # every sink has it: no cycle left for the
                self._entry.output.run = None   # garbage collector to find (run <-> output)
        error = self._entry.journal_error
        if error is not None and exc is None:  # OTEL_RUNS_ON_JOURNAL_ERROR=raise
            self._entry.journal_error = None
            raise error
        return status

    def _add_markers(self, h: RunHandle) -> None:
        """Add the events saying what was dropped."""
        if h._events_dropped:
            h.span.add_event(EVENTS_DROPPED, dropped_events_marker(
                h._events_dropped, h._events,
                f"limits: {_EVENTS_KEPT} events, {MAX_EVENT_BYTES} bytes per run"))
        spans_dropped = self._entry.spans_dropped
        if spans_dropped:
            h.span.add_event(SPANS_DROPPED, {
                "dropped": spans_dropped,
                "message": f"{spans_dropped} child spans not stored (the ledger's limits per run)"})


def _exc_text(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"exit status {exc.code}"
    if isinstance(exc, (KeyboardInterrupt, GeneratorExit, asyncio.CancelledError)):
        return {KeyboardInterrupt: "interrupted (KeyboardInterrupt)",
                GeneratorExit: "client went away"}.get(type(exc), "cancelled")
    return str(exc) or type(exc).__name__


class tracked_run:  # noqa: N801 - used like a function: ``with tracked_run(...)``
    """Track a block as a run: ``with tracked_run(root, "deploy", "deploy:k8s") as run:``.

    Works with ``with`` and ``async with``. The run span is a child of the
    current span (e.g. the Flask request span). An exception marks the run
    ``failed`` and is re-raised unchanged; ``KeyboardInterrupt``, a closed
    generator and task cancellation mark it ``cancelled``; ``SystemExit(0)`` is
    ``ok``. ``project_root=None`` means the configured default. With
    ``OTEL_RUNS_ON_JOURNAL_ERROR=raise``, ``otel_runs.ledger.JournalUnavailable`` is
    raised on entry (the block does not run) or on exit when the run cannot be journaled.
    """

    def __init__(self, project_root: str | os.PathLike[str] | Path | None, run_type: str,
                 subtype: str, *, summary: str = "", **metadata: Any) -> None:
        validate_run_type(run_type, subtype)
        self._args = (project_root, run_type, subtype, summary, metadata)
        self._open: list[tuple[RunScope, _Tokens]] = []  # a stack: it may be entered again

    def __enter__(self) -> RunHandle:
        project_root, run_type, subtype, summary, metadata = self._args
        scope = RunScope(project_root, run_type, subtype, summary, metadata, validated=True)
        self._open.append((scope, scope.activate()))
        return scope.handle

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._open, "tracked_run exited before it was entered"
        scope, tokens = self._open.pop()
        try:
            scope.finish(exc)
        finally:
            scope.deactivate(tokens)

    async def __aenter__(self) -> RunHandle:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)
