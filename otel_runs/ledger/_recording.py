"""Recording runs in the journal: ``Recording``, the part of :class:`~otel_runs.ledger.Ledger`
that writes a run's start record, its end record (durable when it returns), chunks of its
output and what a long run did so far; the end record then waits in the pending queue for
the committer."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from .. import _settings
from .._attributes import RUN_ID
from .._ids import is_run_id, validate_run_id
from .._model import Run
from .._ratelimit import RateLimitedLog
from ._journal import JournalUnavailable, JournalWriter
from ._journal_records import encode_record, encoded_line, output_line, raw_span, spans_line
from ._pending import Pending, PendingQueue

__all__ = ["Recording"]

#: This process's pid, kept by the ledger's at-fork hook (``getpid()`` is a system call:
#: the request path compares with this instead, twice a run).
_process = [os.getpid()]


def _shown(value: object) -> str:
    return value if isinstance(value, str) and len(value) <= 80 else repr(value)[:80]


class Recording:
    """The journal-writing methods of a Ledger (a mixin: the Ledger holds the state)."""

    _pid: int
    _journal: JournalWriter
    _log: RateLimitedLog
    journal_dir: Path
    pending: PendingQueue
    _cond: Any
    _helper_min_batch: int
    _sizer: Any
    _thread: Any
    _next_journal_retry: float
    # (methods of the Ledger and of its committer, declared here for their types only)
    _after_fork_in_child: Callable[[], None]
    _start_thread: Callable[[], None]
    _reject: Callable[..., None]

    def record_started(self, run: Run) -> None:
        """Note that ``run`` started, so that it is recorded as ``interrupted`` if
        this process dies before it finishes. Not a durability point."""
        self._start(validate_run_id(run.run_id), {"run": run.to_dict()})

    def record(self, run: Run, spans: Sequence[dict[str, Any]] = (),
               output: Sequence[dict[str, Any]] = ()) -> None:
        """Record a finished run with its child spans (``span_to_dict`` records) and its
        output lines (``{"n", "t", "stream", "text"}``, see :meth:`output`).

        Durable when it returns; committed to git in the background. A run id
        already on the branch is not written again (the first write wins).
        """
        self._end(validate_run_id(run.run_id), {"run": run.to_dict()}, list(spans),
                  output=list(output) or None)

    def record_span_started(self, span: ReadableSpan) -> None:
        """:meth:`record_started` for a run span (cheap: the Run is built later)."""
        self._start((span.attributes or {})[RUN_ID], {"span": raw_span(span)})

    def record_span(self, span: ReadableSpan, spans: Sequence[dict[str, Any]] = (), *,
                    output: Sequence[dict[str, Any]] | None = None) -> None:
        """:meth:`record` for a finished run span: only its raw data is journaled on
        the caller's time; the Run is built off the request path."""
        self._end((span.attributes or {})[RUN_ID], {"span": raw_span(span)}, list(spans),
                  output=output)

    def record_encoded(self, run_id: str, run_json: str,
                       spans: Sequence[dict[str, Any]] | None = None, *,
                       started: bool = False,
                       output: Sequence[dict[str, Any]] | None = None) -> None:
        """:meth:`record` (or, ``started``, :meth:`record_started`) of a run otel-runs'
        processors encoded already (``OpenRun.start_json``: scrubbed, bounded, strict
        JSON): the journal line is built around that text, which the live feed sends too."""
        if started:
            line = encoded_line("start", run_json, None)
            assert line is not None
            self._start(run_id, {}, line)
            return
        children = list(spans or ())
        line = encoded_line("end", run_json, children, output)
        if line is None:  # child spans to normalise: the slow path
            self._end(run_id, {"run": json.loads(run_json)}, children, output=output)
            return
        self._end(run_id, {}, children, line)

    def record_output(self, run_id: str, lines: Sequence[dict[str, Any]]) -> None:
        """Journal a chunk of an open run's output (``otel_runs._output`` lines), so that
        it is kept with the run if this process dies before the run ends, and readable by
        every process of the host meanwhile. Not a durability point: failures are logged."""
        if self._pid != _process[0]:  # pragma: no cover - the at-fork hook does this
            self._after_fork_in_child()
        if not is_run_id(run_id) or not lines:
            return
        try:
            self._journal.append_output(run_id, output_line(run_id, lines))
        except (OSError, ValueError, TypeError) as exc:
            self._log.warning("journal-output", "otel-runs: could not journal output of run %s "
                              "in %s: %s", run_id, self.journal_dir, exc)

    def record_live_spans(self, run_id: str, spans: list[dict[str, Any]],
                          events: list[dict[str, Any]] | None = None) -> None:
        """Journal child spans an open run ended and (``events``) every event it has so
        far, while it runs, so that every process of the host shows its timeline and
        events so far; its end record holds all of them. Not a durability point:
        failures are logged."""
        if not is_run_id(run_id) or (not spans and events is None):
            return
        try:
            self._journal.append_output(run_id, spans_line(run_id, spans, events))
        except (OSError, ValueError, TypeError) as exc:
            self._log.warning("journal-output", "otel-runs: could not journal spans of run %s "
                              "in %s: %s", run_id, self.journal_dir, exc)

    def _start(self, run_id: Any, record: dict[str, Any], line: bytes | None = None) -> None:
        if self._pid != _process[0]:  # pragma: no cover - the at-fork hook does this
            self._after_fork_in_child()
        if not is_run_id(run_id):
            return  # its end record is quarantined
        if line is None:
            line, _ = encode_record({"e": "start", **record})
        try:
            self._journal.append_start(run_id, line)
        except OSError as exc:
            self._log.exception("journal-start", "otel-runs: could not journal the start of run "
                              "%s in %s (if this process dies before it ends, it is not recorded "
                              "as interrupted)", run_id, self.journal_dir)
            if _settings.on_journal_error() == "raise":
                raise JournalUnavailable(run_id, self.journal_dir, exc, "start") from exc

    def _end(self, run_id: Any, record: dict[str, Any], spans: list[dict[str, Any]],
             line: bytes | None = None, output: Sequence[dict[str, Any]] | None = None) -> None:
        if self._pid != _process[0]:  # pragma: no cover - the at-fork hook does this
            self._after_fork_in_child()
        normalised = False
        if line is None:
            extra = {"output": list(output)} if output else {}  # (a chunk is no list)
            line, normalised = encode_record({"e": "end", **record, "spans": spans, **extra})
        if normalised:
            self._log.warning("normalised", "otel-runs: run %s held values the ledger cannot "
                            "store as they are (times out of range, NaN/Infinity, ...); they "
                            "were normalised", _shown(run_id))
        if not is_run_id(run_id):
            self._reject(Pending(_shown(run_id), line, -1),
                         f"malformed run id {_shown(run_id)!r}", queued=False)
            return
        error: OSError | None = None
        offset = -1
        try:
            segment, offset = self._journal.append_end_at(run_id, line)
        except OSError as exc:
            segment, error = -1, exc
        with self._cond:
            if not len(self.pending):
                self.pending.first_at = time.monotonic()
            if segment >= 0:
                count = self.pending.add_journaled(run_id, line, segment, offset, self._journal)
            else:
                count = self.pending.add(Pending(run_id, line, -1))
            memory = self.pending.unjournaled
            if count in (1, self._helper_min_batch) or count >= self._sizer.limit:
                self._cond.notify_all()
        if self._thread is None:
            self._start_thread()
        if error is not None:
            self._log.exception("journal", "otel-runs: could not journal run %s in %s: %s; %d "
                              "run(s) are now only in this process's memory (kept, journaled "
                              "again when writing works, committed when possible)",
                              run_id, self.journal_dir, error, memory)
            if _settings.on_journal_error() == "raise":
                raise JournalUnavailable(run_id, self.journal_dir, error, "end") from error
        elif memory:  # writing works again: the committer journals the others now
            with self._cond:
                self._next_journal_retry = 0.0
                self._cond.notify_all()
