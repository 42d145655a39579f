"""The runs open in this process: the registry the core fills and processors read.

``RunScope`` notes each run before its span starts (:func:`run_opening`) and forgets it
after it ended (:func:`run_closed`); span processors look runs up here
(:func:`starting_run` in ``on_start``, :func:`open_run_of` in ``on_end``) instead of
reading span attributes, and find the project a span belongs to
(:func:`run_project_root`). Part of the core: it imports no processor.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span

from . import _attributes as A
from ._context import STARTING_RUN_KEY
from ._model import RUN_FIELDS, Run, iso_from_ns, parse_metadata, span_events

__all__ = ["CHILD_OF", "MAX_CHILD_SPANS", "RUN_OF", "OpenRun", "child_run_id", "child_spans",
           "note_dropped_span", "open_run_of", "open_runs", "open_runs_by_span", "run_closed", "run_opening",
           "run_json", "run_project_root", "starting_run"]


class OpenRun:
    """What this process knows of one open run span, from just before it starts
    until just after it ends: its project, what its start Run is made of and, once
    it is ending, what its end Run is made of. Processors find it through the start
    context (``on_start``) or by span id (``on_end``), never by reading the span's
    attributes: every span passes through the processors, and most are not runs.
    The Runs are built on first use, once, and shared by every processor (so a
    process whose processors take spans, as the ledger's does, builds none)."""

    __slots__ = ("run_id", "root", "span_id", "journal_error", "spans_dropped", "output", "_fields",
                 "_trace_id", "_trace_flags", "_resource", "_start", "_final", "_end",
                 "_start_json", "_end_json", "_parts")

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
        #: The run's output (``otel_runs._output.RunOutput``) once it wrote any.
        self.output: Any = None
        self._fields = (run_type, subtype, summary, start_ns, metadata_json, parent_run_id)
        self._trace_id = 0
        self._trace_flags = 0
        self._resource: Resource | None = None
        self._start: Run | None = None
        self._final: tuple[str, str, str | None, int] | None = None
        self._end: Run | None = None
        self._start_json: str | None = None
        self._end_json: str | None = None
        #: The JSON text of what the start and end Runs share (see :meth:`_json_parts`).
        self._parts: tuple[str, str, str, str] | None = None

    @property
    def trace_id(self) -> int:
        """The run span's trace id (0 until its span started)."""
        return self._trace_id

    @property
    def trace_flags(self) -> int:
        """The run span's trace flags (1: sampled, exported; 0 until its span started)."""
        return self._trace_flags

    @property
    def kind(self) -> tuple[str, str]:
        """``(type, subtype)`` of the run."""
        return self._fields[0], self._fields[1]

    @property
    def start_ns(self) -> int:
        """When the run started (ns since the epoch)."""
        return self._fields[3]  # type: ignore[return-value]

    @property
    def outcome(self) -> tuple[str, int] | None:
        """``(status, end time in ns)`` once ``RunScope`` is ending the run; None before
        (and for a span ended some other way)."""
        final = self._final
        return None if final is None else (final[0], final[3])

    def bind(self, span: Span) -> None:
        """The run span started: note its ids."""
        ctx = span.get_span_context()
        span_id = ctx.span_id
        self.span_id = span_id
        self._trace_id, self._resource = ctx.trace_id, span.resource
        self._trace_flags = int(ctx.trace_flags)
        _by_span_id[span_id] = self
        self._start = self._start_json = self._parts = None  # (re)built with the ids on first use

    @property
    def start(self) -> Run:
        """The Run at start (status ``running``); read-only for processors."""
        run = self._start
        if run is None:
            run_type, subtype, summary, start_ns, meta, parent = self._fields
            bound = self.span_id is not None
            run = _run_of({
                "run_id": self.run_id, "type": run_type, "subtype": subtype, "status": "running",
                "summary": summary, "started_at": iso_from_ns(start_ns), "ended_at": None,
                "duration_ms": None, "metadata": {} if meta == "{}" else parse_metadata(meta),
                "trace_id": format(self._trace_id, "032x") if bound else "",
                "span_id": format(self.span_id, "016x") if bound else "",
                "parent_run_id": parent, "service": _service_name(self._resource), "events": []})
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
                run = _run_of({
                    "run_id": s.run_id, "type": s.type, "subtype": s.subtype, "status": status,
                    "summary": summary, "started_at": s.started_at,
                    "ended_at": iso_from_ns(end_ns),
                    "duration_ms": round((end_ns - self._fields[3]) / 1e6, 3),
                    "metadata": s.metadata if meta is None else parse_metadata(meta),
                    "trace_id": s.trace_id, "span_id": s.span_id, "parent_run_id": s.parent_run_id,
                    "service": s.service, "events": span_events(span)})
            self._end = run
        return run

    def start_json(self) -> str | None:
        """:attr:`start` as ``Run.to_dict()`` JSON, encoded once for every consumer (the
        journal and the live feed get the same text); None if it cannot be encoded
        strictly (the consumer then takes the slow, normalising path). Made from the
        run's fields directly (no Run is built for it): the same text as
        ``run_json(self.start)``."""
        text = self._start_json
        if text is None:
            parts = self._json_parts()
            if parts is None:
                text = run_json(self.start)
            else:
                head, started, meta, tail = parts
                text = _checked(f'{head}"running","summary":{_str(self._fields[2])},'
                                f'"started_at":"{started}","ended_at":null,"duration_ms":null,'
                                f'"metadata":{meta}{tail}[]}}')
            self._start_json = text
        return text or None

    def end_json(self, span: ReadableSpan) -> str | None:
        """:meth:`end_run` as JSON, encoded once (see :meth:`start_json`)."""
        text = self._end_json
        if text is None:
            text = self._end_json = self._end_text(span)
        return text or None

    def _end_text(self, span: ReadableSpan) -> str:
        final = self._final
        parts = self._json_parts() if final is not None and self._end is None else None
        if parts is None:
            return run_json(self.end_run(span))
        status, summary, meta_json, end_ns = final  # type: ignore[misc]
        head, started, meta, tail = parts
        if type(status) is not str or type(summary) is not str or type(end_ns) is not int:
            return run_json(self.end_run(span))
        try:
            if meta_json is not None:
                meta = "{}" if meta_json == "{}" else _RUN_ENCODER.encode(parse_metadata(meta_json))
            events = span_events(span)
            events_text = _RUN_ENCODER.encode(events) if events else "[]"
        except (ValueError, TypeError, RecursionError):
            return ""
        duration = round((end_ns - self._fields[3]) / 1e6, 3)  # type: ignore[operator]
        return _checked(f'{head}{_str(status)},"summary":{_str(summary)},"started_at":"{started}",'
                        f'"ended_at":"{iso_from_ns(end_ns)}","duration_ms":{_float(duration)},'
                        f'"metadata":{meta}{tail}{events_text}}}')

    def _json_parts(self) -> tuple[str, str, str, str] | None:
        """What the start and end Runs' JSON share: the text up to ``"status":``, the start
        time, the metadata at start and the text from ``,"trace_id":`` up to the events;
        None for fields of unusual types (then a Run is built and encoded)."""
        parts = self._parts
        if parts is None:
            run_type, subtype, summary, start_ns, meta, parent = self._fields
            if type(start_ns) is not int or type(summary) is not str or type(meta) is not str \
                    or not (parent is None or type(parent) is str):
                return None
            bound = self.span_id is not None
            try:
                meta_text = "{}" if meta == "{}" else _RUN_ENCODER.encode(parse_metadata(meta))
            except (ValueError, TypeError, RecursionError):
                return None
            ids = (f'"{format(self._trace_id, "032x")}","span_id":"{format(self.span_id, "016x")}"'
                   if bound else '"","span_id":""')
            parts = self._parts = (
                f'{{"run_id":{_str(self.run_id)},"type":{_str(run_type)},'
                f'"subtype":{_str(subtype)},"status":',
                iso_from_ns(start_ns), meta_text,
                f',"trace_id":{ids},"parent_run_id":{"null" if parent is None else _str(parent)},'
                f'"service":{_str(_service_name(self._resource))},"events":')
        return parts


#: Compact JSON of a Run: UTF-8 as it is, no NaN/Infinity (``Run.to_dict()`` holds only
#: JSON types already; ``default=str`` for anything a custom processor put there).
_RUN_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                                default=str)


def _run_of(fields: dict[str, Any]) -> Run:
    """``Run(**fields)`` without the call of its ``__init__`` (a dataclass with no
    ``__post_init__``: its instance dict is exactly its fields, in order); two per run."""
    run: Run = _new(Run)
    run.__dict__ = fields
    return run


_new = object.__new__

#: JSON text of a str and of a float, as ``_RUN_ENCODER`` writes them (C functions).
_str = encode_basestring
_float = float.__repr__


def _checked(text: str) -> str:
    """``text``, or "" when it holds a lone surrogate (what :func:`run_json` refuses)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return ""
    return text


def run_json(run: Run) -> str:
    """``run.to_dict()`` as compact JSON text without copying it first; "" when it cannot
    be encoded strictly (NaN, a lone surrogate, ...)."""
    try:
        text: str = _RUN_ENCODER.encode({name: getattr(run, name) for name in RUN_FIELDS})
        if not text.isascii():
            text.encode("utf-8")  # a lone surrogate fails here, not in a consumer
    except (ValueError, TypeError, RecursionError):  # (UnicodeEncodeError is a ValueError)
        return ""
    return text


#: Open run spans by run id and, once started, by span id; ``RunScope`` adds and
#: removes them (:func:`run_opening`, :func:`run_closed`).
_by_run_id: dict[str, OpenRun] = {}
_by_span_id: dict[int, OpenRun] = {}
#: Spans open inside a run (span id -> run id), noted at their start by
#: ``RunSpanDispatcher``, which hands the entry over to the ended span (the
#: object every processor's ``on_end`` receives) and drops it. Capped: a span that
#: is never ended must not grow it forever.
_child_spans: dict[int, str] = {}
MAX_CHILD_SPANS = 100_000
#: What the dispatcher hands over on the span objects it passes on: the id of the
#: run a child span was opened in, the open run of a run span.
CHILD_OF = "_otel_runs_child_of"
RUN_OF = "_otel_runs_run_of"


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
    entry = getattr(span, RUN_OF, None)  # handed over by the dispatcher
    if entry is not None or not _by_span_id:
        return entry  # type: ignore[no-any-return]
    ctx = span.context
    return _by_span_id.get(ctx.span_id) if ctx is not None else None


def child_run_id(span: ReadableSpan) -> str | None:
    """The id of the open run ``span`` was opened inside (not a run span itself)."""
    run_id = getattr(span, CHILD_OF, None)
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


def open_runs() -> list[OpenRun]:
    """A snapshot of the runs open in this process (safe from any thread)."""
    return list(_by_run_id.values())


def open_runs_by_span() -> dict[int, OpenRun]:
    """The open runs by span id (the dispatcher's lookup table; read-only)."""
    return _by_span_id


def child_spans() -> dict[int, str]:
    """Spans open inside a run: span id -> run id (the dispatcher fills and drains it)."""
    return _child_spans
