"""The base of every processor that consumes runs."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from opentelemetry.context import Context, get_current
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from .. import _attributes as A
from .._context import LOCAL_RUN_KEY, STARTING_RUN_KEY
from .._model import Run, iso_from_ns, parse_metadata, span_events
from .._ratelimit import RateLimitedLog

__all__ = ["OpenRun", "RunProcessor", "RunSpanDispatcher", "child_run_id", "dispatches_directly",
           "flush_all", "is_run_span", "note_dropped_span", "open_run_of", "run_closed", "run_opening",
           "run_project_root", "shutdown_all", "starting_run"]

logger = logging.getLogger("otel_runs.exporters")
_errors = RateLimitedLog(logger)


def is_run_span(span: ReadableSpan) -> bool:
    """True for a span opened by ``tracked_run`` / ``@run_tracked``."""
    return bool(span.attributes) and A.RUN_TYPE in span.attributes  # type: ignore[operator]


class OpenRun:
    """What this process knows of one open run span, from just before it starts
    until just after it ends: its project, what its start Run is made of and, once
    it is ending, what its end Run is made of. Processors find it through the start
    context (``on_start``) or by span id (``on_end``), never by reading the span's
    attributes: every span passes through the processors, and most are not runs.
    The Runs are built on first use, once, and shared by every processor (so a
    process whose processors take spans, as the ledger's does, builds none)."""

    __slots__ = ("run_id", "root", "span_id", "journal_error", "spans_dropped", "_fields",
                 "_trace_id", "_resource", "_start", "_final", "_end")

    def __init__(self, root: str | None, run_id: str, run_type: str, subtype: str, summary: str,
                 start_ns: int, metadata_json: str, parent_run_id: str | None) -> None:
        self.run_id = run_id
        self.root = root
        self.span_id: int | None = None
        #: Set by the ledger's processor when the run's start or end could not be
        #: journaled and ``OTEL_RUNS_ON_JOURNAL_ERROR=raise``: ``RunScope`` raises it.
        self.journal_error: Exception | None = None
        #: Child spans of the run a processor did not keep (the ledger's limits):
        #: ``RunScope`` says how many in an event before the run ends.
        self.spans_dropped = 0
        self._fields = (run_type, subtype, summary, start_ns, metadata_json, parent_run_id)
        self._trace_id = 0
        self._resource: Resource | None = None
        self._start: Run | None = None
        self._final: tuple[str, str, str | None, int] | None = None
        self._end: Run | None = None

    def bind(self, span: Span) -> None:
        """The run span started: note its ids."""
        ctx = span.get_span_context()
        span_id = ctx.span_id
        self.span_id = span_id
        self._trace_id, self._resource = ctx.trace_id, span.resource
        _by_span_id[span_id] = self
        self._start = None  # (re)built with the ids on first use

    @property
    def start(self) -> Run:
        """The Run at start (status ``running``); read-only for processors."""
        run = self._start
        if run is None:
            run_type, subtype, summary, start_ns, meta, parent = self._fields
            bound = self.span_id is not None
            run = Run(self.run_id, run_type, subtype, "running", summary, iso_from_ns(start_ns),
                      None, None, {} if meta == "{}" else parse_metadata(meta),
                      format(self._trace_id, "032x") if bound else "",
                      format(self.span_id, "016x") if bound else "",
                      parent, _service_name(self._resource), [])
            self._start = run
        return run

    def ending(self, status: str, summary: str, metadata_json: str | None, end_ns: int) -> None:
        """What the run span is about to end with (``metadata_json`` None: unchanged)."""
        self._final = (status, summary, metadata_json, end_ns)

    def end_run(self, span: ReadableSpan) -> Run:
        """The Run of the ended span (built once; only events are read from the span)."""
        run = self._end
        if run is None:
            final = self._final
            if final is None:  # ended some other way than RunScope.finish: read the span
                run = Run.from_span(span)
            else:
                status, summary, meta, end_ns = final
                s = self.start
                run = Run(s.run_id, s.type, s.subtype, status, summary, s.started_at,
                          iso_from_ns(end_ns), round((end_ns - self._fields[3]) / 1e6, 3),
                          s.metadata if meta is None else parse_metadata(meta),
                          s.trace_id, s.span_id, s.parent_run_id, s.service,
                          span_events(span))
            self._end = run
        return run


#: Open run spans by run id and, once started, by span id; ``RunScope`` adds and
#: removes them (:func:`run_opening`, :func:`run_closed`).
_by_run_id: dict[str, OpenRun] = {}
_by_span_id: dict[int, OpenRun] = {}
#: Spans open inside a run (span id -> run id), noted at their start by
#: ``RunSpanDispatcher``, which hands the entry over to the ended span (the
#: object every processor's ``on_end`` receives) and drops it. Capped: a span that
#: is never ended must not grow it forever.
_child_spans: dict[int, str] = {}
_MAX_CHILD_SPANS = 100_000
#: What the dispatcher hands over on the span objects it passes on: the id of the
#: run a child span was opened in, the open run of a run span.
_CHILD_OF = "_otel_runs_child_of"
_RUN_OF = "_otel_runs_run_of"


def run_opening(entry: OpenRun) -> None:
    """Note a run whose span is about to start."""
    _by_run_id[entry.run_id] = entry


def note_dropped_span(run_id: str) -> None:
    """A processor did not keep a child span of open run ``run_id`` (see ``OpenRun.spans_dropped``)."""
    entry = _by_run_id.get(run_id)
    if entry is not None:
        entry.spans_dropped += 1


def run_closed(entry: OpenRun) -> None:
    """Forget an ended (or never started) run span."""
    _by_run_id.pop(entry.run_id, None)
    if entry.span_id is not None:
        _by_span_id.pop(entry.span_id, None)


def starting_run(span: Span, parent_context: Context | None) -> OpenRun | None:
    """The open run ``span`` is the run span of, in ``on_start``; None for other spans."""
    entry = parent_context.get(STARTING_RUN_KEY) if parent_context is not None else None
    if entry is None:
        return None
    if entry.span_id is None:  # the first processor to see it
        entry.bind(span)
    return entry  # type: ignore[no-any-return]


def open_run_of(span: ReadableSpan) -> OpenRun | None:
    """The open run ``span`` is the run span of (once it started; for the span objects
    the dispatcher handed to processors, also after it ended); None for other spans."""
    entry = getattr(span, _RUN_OF, None)  # handed over by the dispatcher
    if entry is not None or not _by_span_id:
        return entry  # type: ignore[no-any-return]
    ctx = span.context
    return _by_span_id.get(ctx.span_id) if ctx is not None else None


def child_run_id(span: ReadableSpan) -> str | None:
    """The id of the open run ``span`` was opened inside (not a run span itself)."""
    run_id = getattr(span, _CHILD_OF, None)
    if run_id is None and _child_spans:
        ctx = span.context
        run_id = _child_spans.get(ctx.span_id) if ctx is not None else None
    return run_id  # type: ignore[no-any-return]


def run_project_root(span: ReadableSpan) -> str | None:
    """The resolved project root of the run ``span`` belongs to (the run span itself or
    a span opened inside it) while that run is open in this process, else None (a run
    span object otel-runs handed to processors keeps it after the run ended).
    Processors that serve one project (the ledger's, the live feed's) filter with it."""
    entry = open_run_of(span)
    if entry is None:
        run_id = child_run_id(span)
        if run_id is None:  # e.g. a processor added ahead of otel-runs' own
            attrs = span.attributes
            value = attrs.get(A.RUN_ID) if attrs else None
            run_id = value if isinstance(value, str) else None
        entry = _by_run_id.get(run_id) if run_id is not None else None
    return entry.root if entry is not None else None


_services: dict[int, tuple[Resource, str]] = {}


def _service_name(resource: Resource | None) -> str:
    """``service.name`` of a resource (a provider has one: remembered by identity)."""
    if resource is None:
        return ""
    known = _services.get(id(resource))
    if known is not None and known[0] is resource:
        return known[1]
    name = str(resource.attributes.get("service.name", ""))
    if len(_services) < 64:
        _services[id(resource)] = (resource, name)
    return name


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

    @property
    def processors(self) -> tuple[RunProcessor, ...]:
        """The RunProcessors runs are handed to, in the order they were added."""
        return self._procs

    def add(self, proc: RunProcessor) -> None:
        """Hand runs to ``proc`` too (see :func:`dispatches_directly`)."""
        if proc not in self._procs:
            self._procs = (*self._procs, proc)

    def remove(self, proc: RunProcessor) -> None:
        """Stop handing runs to ``proc``."""
        self._procs = tuple(p for p in self._procs if p is not proc)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        entry = starting_run(span, parent_context)  # RunScope always passes the context
        if entry is not None:  # a run span: it carries its own id
            if self._procs:
                _hand_over(span, _RUN_OF, entry)
                for proc in self._procs:
                    proc._run_started(entry, span)
            return
        ctx = parent_context if parent_context is not None else get_current()
        run_id = ctx.get(LOCAL_RUN_KEY)
        if run_id is None:  # the common case (spans outside runs): no attribute access
            return
        span.set_attribute(A.RUN_ID, run_id)
        if len(_child_spans) < _MAX_CHILD_SPANS:
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
                _hand_over(span, _RUN_OF, entry)
                for proc in self._procs:
                    proc._run_ended(entry, span)
            return
        run_id = _child_spans.pop(span_id, None)
        if run_id is None:
            return
        # Processors after this one read it from the span, those before it from the dict.
        if not _hand_over(span, _CHILD_OF, run_id):  # pragma: no cover - a span with __slots__
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
