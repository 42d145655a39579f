"""The base of every processor that consumes runs, and the dispatcher that feeds them
(the open-run registry they read is the core's ``otel_runs._open_runs``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from opentelemetry.context import Context, get_current
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from .. import _attributes as A
from .._context import LOCAL_RUN_KEY
from .._model import Run
from .._open_runs import (
    CHILD_OF,
    MAX_CHILD_SPANS,
    RUN_OF,
    OpenRun,
    child_run_id,
    child_spans,
    note_dropped_span,
    open_run_of,
    open_runs_by_span,
    run_closed,
    run_opening,
    run_project_root,
    starting_run,
)
from .._ratelimit import RateLimitedLog

__all__ = ["OpenRun", "RunProcessor", "RunSpanDispatcher", "child_run_id", "dispatches_directly",
           "flush_all", "is_run_span", "note_dropped_span", "open_run_of", "run_closed", "run_opening",
           "run_project_root", "shutdown_all", "starting_run"]

logger = logging.getLogger("otel_runs.exporters")
_errors = RateLimitedLog(logger)


def is_run_span(span: ReadableSpan) -> bool:
    """True for a span opened by ``tracked_run`` / ``@run_tracked``."""
    return bool(span.attributes) and A.RUN_TYPE in span.attributes  # type: ignore[operator]


class RunProcessor(SpanProcessor):
    """A ``SpanProcessor`` that sees only runs, sampled or not.

    Override :meth:`on_run_start`, :meth:`on_run_end` and, to receive the spans
    opened inside a run, :meth:`on_run_span_end`. :meth:`accepts` filters runs
    (e.g. by project). The ``Run`` a hook receives is shared with the other
    processors: treat it as read-only. An exception in a hook is logged
    (rate-limited) and never reaches the tracked action.
    """

    def accepts(self, span: ReadableSpan) -> bool:
        """Whether this processor handles the run (or child) span; default: all."""
        return True

    def on_run_start(self, run: Run) -> None:
        """A run started; ``run.status`` is ``running``."""

    def on_run_end(self, run: Run) -> None:
        """A run ended; called before the tracked block returns to its caller."""

    def on_run_span_end(self, run_id: str, span: ReadableSpan) -> None:
        """A span opened inside run ``run_id`` ended (before the run itself)."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        # Only when added to a provider directly: otel-runs' own dispatcher calls
        # the methods below with what it already looked up.
        entry = starting_run(span, parent_context)
        if entry is not None:
            self._run_started(entry, span)

    def on_end(self, span: ReadableSpan) -> None:
        entry = open_run_of(span)
        if entry is not None:
            self._run_ended(entry, span)
            return
        run_id = child_run_id(span)
        if run_id is not None:
            self._child_ended(run_id, span)

    def _only_root(self) -> str | None:
        """The one project (resolved root) whose runs this processor takes, when it takes
        no others whatever they are: the dispatcher then hands it no other project's run
        (start or end; child spans still go to every processor). None: any run may be
        its, as :meth:`accepts` decides."""
        return None

    def _run_started(self, entry: OpenRun, span: Span) -> None:
        """The run span of ``entry`` started."""
        if self._accepts(span):
            try:
                self.on_run_start(entry.start)
            except Exception:
                self._hook_failed("on_run_start")

    def _run_ended(self, entry: OpenRun, span: ReadableSpan) -> None:
        """The run span of ``entry`` ended."""
        if self._accepts(span):
            try:
                self.on_run_end(entry.end_run(span))
            except Exception:
                self._hook_failed("on_run_end")

    def _child_ended(self, run_id: str, span: ReadableSpan) -> None:
        """A span opened inside run ``run_id`` ended."""
        if self._accepts(span):
            try:
                self.on_run_span_end(run_id, span)
            except Exception:
                self._hook_failed("on_run_span_end")

    def _accepts(self, span: ReadableSpan) -> bool:
        if type(self).accepts is RunProcessor.accepts:
            return True
        try:
            return self.accepts(span)
        except Exception:
            self._hook_failed("accepts")
            return False

    def _hook_failed(self, name: str) -> None:
        cls = type(self).__name__
        _errors.exception(f"{cls}.{name}", "%s.%s failed", cls, name)

    def shutdown(self) -> None:
        """Release resources; default: nothing."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Finish pending work; default: nothing to do."""
        return True


#: The registry's tables (the same dict objects for the process's life).
_by_span_id = open_runs_by_span()
_child_spans = child_spans()


def _hand_over(span: ReadableSpan, name: str, value: object) -> bool:
    """Note ``value`` on the span object the processors receive (False if it has no room)."""
    try:
        setattr(span, name, value)
    except AttributeError:
        return False
    return True


def dispatches_directly(proc: SpanProcessor) -> bool:
    """Whether :class:`RunSpanDispatcher` can stand in for ``proc``'s ``on_start`` /
    ``on_end``: a RunProcessor that does not override them."""
    cls = type(proc)
    return (isinstance(proc, RunProcessor) and cls.on_start is RunProcessor.on_start
            and cls.on_end is RunProcessor.on_end)


class RunSpanDispatcher(SpanProcessor):
    """otel-runs' one processor on the provider. Stamps every span opened inside a
    run with the run's id (``run.id``) and notes it (see :func:`child_run_id`);
    binds each run span to its open run; hands runs and their spans to the
    RunProcessors otel-runs was given. Every span of the application passes
    through here once, instead of through each RunProcessor in turn."""

    def __init__(self) -> None:
        self._procs: tuple[RunProcessor, ...] = ()
        #: project root -> the processors that may take its runs (see ``_only_root``).
        self._by_root: dict[str | None, tuple[RunProcessor, ...]] = {}

    @property
    def processors(self) -> tuple[RunProcessor, ...]:
        """The RunProcessors runs are handed to, in the order they were added."""
        return self._procs

    def add(self, proc: RunProcessor) -> None:
        """Hand runs to ``proc`` too (see :func:`dispatches_directly`)."""
        if proc not in self._procs:
            self._procs = (*self._procs, proc)
            self._by_root = {}

    def remove(self, proc: RunProcessor) -> None:
        """Stop handing runs to ``proc``."""
        self._procs = tuple(p for p in self._procs if p is not proc)
        self._by_root = {}

    def _for_root(self, root: str | None) -> tuple[RunProcessor, ...]:
        """The processors a run of ``root`` goes to (in the order they were added)."""
        cache = self._by_root  # (before the processors: see add)
        procs = cache.get(root)
        if procs is None:
            procs = tuple(p for p in self._procs if p._only_root() in (None, root))
            if len(cache) < 64:
                cache[root] = procs
        return procs

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        entry = starting_run(span, parent_context)  # RunScope always passes the context
        if entry is not None:  # a run span: it carries its own id
            if self._procs:
                _hand_over(span, RUN_OF, entry)
                for proc in self._for_root(entry.root):
                    proc._run_started(entry, span)
            return
        ctx = parent_context if parent_context is not None else get_current()
        run_id = ctx.get(LOCAL_RUN_KEY)
        if run_id is None:  # the common case (spans outside runs): no attribute access
            return
        span.set_attribute(A.RUN_ID, run_id)
        if len(_child_spans) < MAX_CHILD_SPANS:
            _child_spans[span.get_span_context().span_id] = run_id

    def on_end(self, span: ReadableSpan) -> None:
        if not _by_span_id and not _child_spans:  # no run open: not a span of ours
            return
        ctx = span.context
        if ctx is None:
            return
        span_id = ctx.span_id
        entry = _by_span_id.get(span_id)
        if entry is not None:
            if self._procs:
                _hand_over(span, RUN_OF, entry)
                for proc in self._for_root(entry.root):
                    proc._run_ended(entry, span)
            return
        run_id = _child_spans.pop(span_id, None)
        if run_id is None:
            return
        # Processors after this one read it from the span, those before it from the dict.
        if not _hand_over(span, CHILD_OF, run_id):  # pragma: no cover - a span with __slots__
            _child_spans[span_id] = run_id
        for proc in self._procs:
            proc._child_ended(run_id, span)

    # The provider's shutdown/force_flush reach the processors behind this one, as
    # they would if each were on the provider itself.

    def shutdown(self) -> None:
        shutdown_all(self._procs)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return flush_all(self._procs, timeout_millis)


def flush_all(procs: Iterable[SpanProcessor], timeout_millis: int) -> bool:
    """``force_flush`` each processor; one that fails is logged and makes it False."""
    ok = True
    for proc in procs:
        try:
            ok = proc.force_flush(timeout_millis) and ok
        except Exception:
            logger.exception("otel-runs: flushing %r failed", proc)
            ok = False
    return ok


def shutdown_all(procs: Iterable[SpanProcessor]) -> None:
    """``shutdown`` each processor; one that fails is logged, the others still run."""
    for proc in procs:
        try:
            proc.shutdown()
        except Exception:
            logger.exception("otel-runs: shutting down %r failed", proc)
