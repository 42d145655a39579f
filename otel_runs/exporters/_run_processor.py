"""The base of every processor that consumes runs."""

from __future__ import annotations

import logging

from opentelemetry.context import Context, get_value
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import format_span_id, format_trace_id

from .. import _attributes as A
from .._context import STARTING_RUN_KEY, local_run_id
from .._model import Run
from .._ratelimit import RateLimitedLog

__all__ = ["RunProcessor", "is_run_span", "run_closed", "run_of", "run_opening", "run_project_root"]

logger = logging.getLogger("otel_runs.exporters")
_errors = RateLimitedLog(logger)


def is_run_span(span: ReadableSpan) -> bool:
    """True for a span opened by ``tracked_run`` / ``@run_tracked``."""
    return bool(span.attributes) and A.RUN_TYPE in span.attributes  # type: ignore[operator]


#: The Run each open run span had at start, by span id, until the span ends: the
#: span handed to ``on_end`` is a fresh ``ReadableSpan``, so this is how the end
#: Run borrows the fields a span cannot change. ``RunScope`` drops its entry after
#: ``end()`` in case no processor did; the cap bounds spans ended some other way.
_started_runs: dict[int, Run] = {}
_MAX_STARTED = 10_000
#: The resolved project root of each open run, by run id, from just before its span
#: starts until just after it ends (kept off the span: a local path is no business
#: of a trace backend).
_open_roots: dict[str, str] = {}


def run_project_root(span: ReadableSpan) -> str | None:
    """The resolved project root of the run ``span`` belongs to (the run span itself or
    a span opened inside it) while that run is open in this process, else None.
    Processors that serve one project (the ledger's, the live feed's) filter with it."""
    attrs = span.attributes
    run_id = attrs.get(A.RUN_ID) if attrs else None
    return _open_roots.get(run_id) if isinstance(run_id, str) else None


def run_opening(run_id: str, project_root: str | None) -> None:
    """Note the project of a run whose span is about to start (see :func:`run_project_root`)."""
    if project_root is not None:
        _open_roots[run_id] = project_root


def run_closed(run_id: str, span_id: int) -> None:
    """Forget an ended (or never started) run span: its project and its start Run."""
    _open_roots.pop(run_id, None)
    _started_runs.pop(span_id, None)


def run_of(span: ReadableSpan, parent_context: Context | None = None) -> Run:
    """``Run.from_span(span)``, built once per span state and shared by every
    processor (so hooks must treat the Run as read-only). At start, the Run the
    opener put in ``parent_context`` is completed instead (cheaper, same fields)."""
    key = span.end_time
    cached = getattr(span, "_otel_runs_run", None)
    if cached is not None and cached[0] == key:
        return cached[1]  # type: ignore[no-any-return]
    ctx = span.context
    span_id = ctx.span_id if ctx is not None else 0
    if key is None:
        run = _starting_run(span, parent_context) or Run.from_span(span)
        if len(_started_runs) < _MAX_STARTED:
            _started_runs[span_id] = run
    else:  # the Run of the span's start, if any, lends the fields a span cannot change
        run = Run.from_span(span, started=_started_runs.pop(span_id, None))
    try:
        span._otel_runs_run = (key, run)  # type: ignore[attr-defined]
    except AttributeError:  # a span type with __slots__: just don't cache
        pass
    return run


def _starting_run(span: ReadableSpan, parent_context: Context | None) -> Run | None:
    """The Run ``RunScope`` put in the start context for this span, with the span's
    trace id, span id and service filled in; None if there is none."""
    run = get_value(STARTING_RUN_KEY, parent_context) if parent_context is not None else None
    if not isinstance(run, Run) or (span.attributes or {}).get(A.RUN_ID) != run.run_id:
        return None
    ctx = span.context
    if ctx is not None:
        run.trace_id, run.span_id = format_trace_id(ctx.trace_id), format_span_id(ctx.span_id)
    run.service = _service_name(span.resource)
    return run


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
        attrs = span.attributes
        if attrs and A.RUN_TYPE in attrs and self._accepts(span):
            self._call(self.on_run_start, "on_run_start", span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        attrs = span.attributes
        if not attrs:
            return
        if A.RUN_TYPE in attrs:
            if self._accepts(span):
                self._call(self.on_run_end, "on_run_end", span)
        elif A.RUN_ID in attrs and self._accepts(span):
            try:
                self.on_run_span_end(str(attrs[A.RUN_ID]), span)
            except Exception:
                _errors.exception(
                    f"{type(self).__name__}.on_run_span_end",
                    "%s.on_run_span_end failed", type(self).__name__,
                )

    def _accepts(self, span: ReadableSpan) -> bool:
        if type(self).accepts is RunProcessor.accepts:
            return True
        try:
            return self.accepts(span)
        except Exception:
            _errors.exception(f"{type(self).__name__}.accepts", "%s.accepts failed", type(self).__name__)
            return False

    def _call(self, hook: object, name: str, span: ReadableSpan,
              parent_context: Context | None = None) -> None:
        try:
            hook(run_of(span, parent_context))  # type: ignore[operator]
        except Exception:
            _errors.exception(
                f"{type(self).__name__}.{name}", "%s.%s failed", type(self).__name__, name
            )

    def shutdown(self) -> None:
        """Release resources; default: nothing."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Finish pending work; default: nothing to do."""
        return True


class RunContextSpanProcessor(SpanProcessor):
    """Stamps every span opened inside a run with the run's id (``run.id``)."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        run_id = local_run_id(parent_context)
        if run_id is None:  # the common case (spans outside runs): no attribute access
            return
        if span.attributes and A.RUN_TYPE in span.attributes:
            return  # a nested run carries its own id
        span.set_attribute(A.RUN_ID, run_id)
