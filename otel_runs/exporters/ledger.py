"""Persist finished runs to the project's git ledger.

``LedgerSpanExporter`` is a plain OTel ``SpanExporter``: run spans become Runs,
spans opened inside a run are kept until their run ends and stored with it.
``configure()`` wires it through :func:`ledger_processor_for`, a run processor
that sees sampled and unsampled runs alike and hands each finished run to the
exporter synchronously, so the run is in the journal before the tracked block
returns (no queue, nothing dropped when busy).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .._attributes import RUN_ID, RUN_TYPE
from .._model import Run, span_to_dict
from .._output import add_output_sink, remove_output_sink
from .._ratelimit import RateLimitedLog
from ..ledger import JournalUnavailable, Ledger, LedgerError, ledger_for
from ..redaction import MAX_SPANS_BYTES, attributes_size
from ._live_spans import LiveSpans
from ._run_processor import (
    OpenRun,
    RunProcessor,
    child_run_id,
    is_run_span,
    note_dropped_span,
    run_project_root,
)

__all__ = ["LedgerRunProcessor", "LedgerSpanExporter", "ledger_processor_for"]

logger = logging.getLogger("otel_runs.exporters")
_errors = RateLimitedLog(logger)

#: Most child spans stored with one run; further ones are counted, logged and said by
#: an ``otel_runs.spans_dropped`` event on the run.
MAX_CHILD_SPANS = 2_000
#: Most bytes (about) of child spans stored with one run (``OTEL_RUNS_MAX_SPANS_BYTES``).
MAX_CHILD_SPANS_BYTES = MAX_SPANS_BYTES


def record_size(record: dict[str, Any]) -> int:
    """About how many bytes a ``span_to_dict`` record takes as JSON (its strings and
    a fixed part; its values are bounded already)."""
    size = 320 + len(record["name"]) + attributes_size(record["attributes"])
    for event in record["events"]:
        size += 48 + len(event["name"]) + attributes_size(event["attributes"])
    return size


class LedgerSpanExporter(SpanExporter):
    """Writes finished run spans to a :class:`~otel_runs.ledger.Ledger`, each with
    the spans that ended inside it. Every span passed in is used, sampled or not.

    ``ledger`` is a Ledger or a project root (its shared :func:`ledger_for`).
    """

    def __init__(self, ledger: Ledger | str | os.PathLike[str]) -> None:
        self.ledger = ledger if isinstance(ledger, Ledger) else ledger_for(ledger)
        self._children: dict[str, list[dict[str, Any]]] = {}
        self._sizes: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        self._lock = threading.Lock()
        self._shut_down = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Store run spans (with their children); keep other run-tagged spans
        until their run ends. FAILURE only if a run could not be recorded."""
        result = SpanExportResult.SUCCESS
        for span in spans:
            attrs = span.attributes or {}
            run_id = attrs.get(RUN_ID)
            if not isinstance(run_id, str):
                continue
            if RUN_TYPE in attrs:
                try:
                    self.record_run_span(span)
                except Exception:
                    _errors.exception("export", "otel-runs: could not record run %s", run_id)
                    result = SpanExportResult.FAILURE
            else:
                self.add_child_span(run_id, span)
        return result

    def add_child_span(self, run_id: str, span: ReadableSpan) -> None:
        """Keep ``span`` (ended inside run ``run_id``, scrubbed and bounded) until the run
        is recorded; beyond :data:`MAX_CHILD_SPANS` spans or :data:`MAX_CHILD_SPANS_BYTES`
        it is counted instead (the run's ``otel_runs.spans_dropped`` event says how many)."""
        with self._lock:
            full = len(self._children.get(run_id, ())) >= MAX_CHILD_SPANS
        record = None if full else span_to_dict(span)
        size = 0 if record is None else record_size(record)
        with self._lock:
            children = self._children.setdefault(run_id, [])
            used = self._sizes.get(run_id, 0)
            if record is not None and len(children) < MAX_CHILD_SPANS \
                    and used + size <= MAX_CHILD_SPANS_BYTES:
                children.append(record)
                self._sizes[run_id] = used + size
                return
            self._dropped[run_id] = self._dropped.get(run_id, 0) + 1
        note_dropped_span(run_id)

    def children_since(self, run_id: str, first: int) -> list[dict[str, Any]]:
        """The child spans kept for open run ``run_id`` so far, from the ``first``-th on."""
        with self._lock:
            return list(self._children.get(run_id, ())[first:])

    def _take_children(self, run_id: str) -> list[dict[str, Any]]:
        if run_id not in self._children and run_id not in self._dropped:
            return []  # (the common case; a run's child spans all ended before it)
        with self._lock:
            children = self._children.pop(run_id, [])
            self._sizes.pop(run_id, None)
            dropped = self._dropped.pop(run_id, 0)
        if dropped:
            logger.warning("otel-runs: run %s had %d more child spans than the ledger stores "
                           "(%d spans, about %d bytes per run)", run_id, dropped,
                           MAX_CHILD_SPANS, MAX_CHILD_SPANS_BYTES)
        return children

    def record_run_span(self, span: ReadableSpan) -> None:
        """Record the finished run span with the child spans kept for it (durable
        when this returns; the Run itself is built off the caller's time)."""
        run_id = str((span.attributes or {})[RUN_ID])
        self.ledger.record_span(span, self._take_children(run_id))

    def record_open_run(self, entry: OpenRun, span: ReadableSpan) -> None:
        """Record the finished run span of ``entry`` with its child spans, from the Run
        JSON the processors share (``OpenRun.end_json``: encoded once, also what the live
        feed sends); from the span's raw data when that JSON cannot be made."""
        output = entry.output.kept() if entry.output is not None else None
        text = entry.end_json(span)
        if text is None:
            run_id = str((span.attributes or {})[RUN_ID])
            self.ledger.record_span(span, self._take_children(run_id), output=output)
            return
        self.ledger.record_encoded(entry.run_id, text, self._take_children(entry.run_id),
                                   output=output)

    def record_run(self, run: Run) -> None:
        """Record a finished :class:`~otel_runs.Run` with the child spans kept for it."""
        self.ledger.record(run, self._take_children(run.run_id))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Commit everything recorded so far to git."""
        return self.ledger.flush(timeout_millis / 1000)

    def shutdown(self) -> None:
        """Commit what is pending and release the ledger's git processes."""
        if self._shut_down:
            return
        self._shut_down = True
        self.ledger.close()


class LedgerRunProcessor(RunProcessor):
    """Feeds one project's runs (and the spans inside them) to a
    :class:`LedgerSpanExporter`, synchronously, unsampled ones included: a run is
    in the journal before its ``tracked_run`` block returns."""

    def __init__(self, project_root: str, exporter: LedgerSpanExporter) -> None:
        self.project_root = project_root
        self.exporter = exporter
        self._open: set[str] = set()
        add_output_sink(self._journal_output)
        self._live = LiveSpans(exporter.children_since, exporter.ledger.record_live_spans)

    def _journal_output(self, entry: OpenRun, lines: Sequence[dict[str, Any]], durable: bool) -> None:
        """A chunk of an open run's output: journaled. Not the last one, sent as the run
        ends: its end record, written next, holds the whole output."""
        if durable and entry.root == self.project_root and not self.exporter._shut_down \
                and not (entry.output is not None and entry.output.closed):
            self.exporter.ledger.record_output(entry.run_id, lines)

    def accepts(self, span: ReadableSpan) -> bool:
        if is_run_span(span):
            return run_project_root(span) == self.project_root
        return child_run_id(span) in self._open

    def _only_root(self) -> str | None:
        return self.project_root

    # The hooks below take the spans directly (not ``Run.from_span`` on the
    # request path); like RunProcessor's, they never let an error through. The one
    # deliberate exception: with ``OTEL_RUNS_ON_JOURNAL_ERROR=raise`` a journal failure
    # is noted on the open run, and ``RunScope`` raises it once every processor ran.

    def _run_started(self, entry: OpenRun, span: Span) -> None:
        if entry.root != self.project_root:
            return
        try:
            self._open.add(entry.run_id)
            self._live.run_started(entry.run_id, span)
            text = entry.start_json()
            if text is None:
                self.exporter.ledger.record_span_started(span)
            else:
                self.exporter.ledger.record_encoded(entry.run_id, text, started=True)
        except JournalUnavailable as exc:  # (already logged by the ledger)
            entry.journal_error = exc
        except Exception:
            _errors.exception("on_start", "otel-runs: could not journal the start of run %s",
                              entry.run_id)

    def _run_ended(self, entry: OpenRun, span: ReadableSpan) -> None:
        if entry.root != self.project_root:
            return
        try:
            self._open.discard(entry.run_id)
            self._live.run_ended(entry.run_id)
            self.exporter.record_open_run(entry, span)
        except JournalUnavailable as exc:  # (already logged by the ledger)
            entry.journal_error = exc
        except Exception:
            _errors.exception("on_end", "otel-runs: could not record run %s in the ledger",
                              entry.run_id)

    def _child_ended(self, run_id: str, span: ReadableSpan) -> None:
        if run_id not in self._open:
            return
        try:
            self.exporter.add_child_span(run_id, span)
        except Exception:
            _errors.exception("on_end", "otel-runs: could not record a span of run %s",
                              run_id)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        remove_output_sink(self._journal_output)
        self._live.close()
        self.exporter.shutdown()


def ledger_processor_for(resolved_root: str, *, durability: str) -> SpanProcessor | None:
    """The processor that records ``resolved_root``'s runs in its git ledger.

    When the root is not inside a git repository (or the ledger cannot be
    opened), logs one error naming the path and the fix and returns None: tracked
    code keeps working and other processors still get the runs.
    """
    try:
        ledger = ledger_for(resolved_root, durability=durability)
    except LedgerError as exc:
        logger.error("otel-runs: the git ledger is off for %s: %s", resolved_root, exc)
        return None
    except OSError as exc:
        logger.error("otel-runs: the git ledger is off for %s: %s (check that git is "
                     "installed and the repository is writable)", resolved_root, exc)
        return None
    return LedgerRunProcessor(resolved_root, LedgerSpanExporter(ledger))
