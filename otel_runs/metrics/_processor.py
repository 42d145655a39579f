"""``MetricsRunProcessor``: each run's RED metrics, taken when it ends.

A run processor like the ledger's: otel-runs' dispatcher hands it the open run, so it
reads what ``RunScope`` already knows (type, subtype, status, start and end times) and no
span attribute but ``error.type`` of a failed run. On the request path a run costs one
``deque.append`` of its measurement (duration, the attribute dicts, built once per subtype
and result); a drainer thread hands the measurements to the SDK's instruments every
:data:`DRAIN_INTERVAL` seconds, and every collection drains first (a scrape right after
a run sees it). Active runs are read from the open-run registry and runs journaled from
a counter when metrics are collected. No lock but the SDK's (``deque`` appends and pops
are atomic).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span

from .. import _attributes as A
from .._open_runs import OpenRun, open_runs
from .._ratelimit import RateLimitedLog
from ..exporters._run_processor import RunProcessor
from ..redaction import EVENTS_DROPPED
from . import _names as N

__all__ = ["DRAIN_INTERVAL", "MAX_ATTRIBUTE_SETS", "MetricsRunProcessor"]

logger = logging.getLogger("otel_runs.metrics")
_errors = RateLimitedLog(logger)

#: Most attribute sets kept built (subtype x result x error type); beyond it a run's
#: attributes are built for it alone (the SDK's own cardinality limit still applies).
MAX_ATTRIBUTE_SETS = 4_096
_SERVICE_NAME = "service.name"
#: Seconds between two hand-overs of the runs' measurements to the SDK.
DRAIN_INTERVAL = 0.5
#: Measurements kept waiting at most; past it the run that adds one drains them itself.
MAX_WAITING = 50_000


def create_instruments(meter: Meter) -> dict[str, Any]:
    """The instruments recorded as runs end (see :data:`otel_runs.metrics._names.INSTRUMENTS`)."""
    made: dict[str, Any] = {}
    for spec in (N.DURATION, N.ERRORS, N.SPANS_DROPPED, N.EVENTS_DROPPED):
        if spec.kind == "histogram":
            made[spec.name] = meter.create_histogram(
                spec.name, unit=spec.unit, description=spec.description,
                explicit_bucket_boundaries_advisory=list(N.DURATION_BUCKETS))
        else:
            made[spec.name] = meter.create_counter(spec.name, unit=spec.unit,
                                                   description=spec.description)
    return made


def _count_value(counter: itertools.count) -> int:  # type: ignore[type-arg]
    """How far an ``itertools.count()`` has counted, without advancing it (``next()`` on
    it is atomic under the GIL: a counter the request threads share without a lock)."""
    return int(repr(counter)[6:-1])


class MetricsRunProcessor(RunProcessor):
    """Records ``cicd.pipeline.run.*`` and otel-runs' per-run health counters for the
    runs of the project roots in :attr:`roots` (resolved paths)."""

    def __init__(self, meter: Meter) -> None:
        made = create_instruments(meter)
        self._duration = made[N.DURATION.name]
        self._errors = made[N.ERRORS.name]
        self._spans_dropped = made[N.SPANS_DROPPED.name]
        self._events_dropped = made[N.EVENTS_DROPPED.name]
        #: Project roots whose runs are counted.
        self.roots: set[str] = set()
        #: Those of :attr:`roots` whose runs go to a ledger (they count as journaled).
        self.ledger_roots: set[str] = set()
        self._active_attrs: dict[tuple[str, str], dict[str, str]] = {}
        self._end_attrs: dict[tuple[str, str, str, str, str], dict[str, str]] = {}
        self._error_attrs: dict[tuple[str, str, str], dict[str, str]] = {}
        self._resource: Resource | None = None
        self._service = ""
        self._journaled = itertools.count()
        #: (seconds, duration attributes, errors attributes or None) of ended runs.
        self._waiting: deque[tuple[float, dict[str, str], dict[str, str] | None]] = deque()
        self._drainer: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._after_fork_in_child)
        meter.create_observable_up_down_counter(
            N.ACTIVE.name, callbacks=[self._observe_active], unit=N.ACTIVE.unit,
            description=N.ACTIVE.description)
        meter.create_observable_counter(
            N.JOURNALED.name, callbacks=[self._observe_journaled], unit=N.JOURNALED.unit,
            description=N.JOURNALED.description)

    # -- hooks (the dispatcher calls these with the open run already found) ----------------

    def _run_started(self, entry: OpenRun, span: Span) -> None:
        """Nothing: active runs are read from the open-run registry when collected."""

    def _run_ended(self, entry: OpenRun, span: ReadableSpan) -> None:
        if entry.root not in self.roots:
            return
        try:
            self._ended(entry, span)
        except Exception:
            _errors.exception("metrics-end", "otel-runs: recording the end of run %s in "
                              "metrics failed", entry.run_id)

    def _child_ended(self, run_id: str, span: ReadableSpan) -> None:
        """Child spans are not counted."""

    def _ended(self, entry: OpenRun, span: ReadableSpan) -> None:
        run_type, subtype = entry.kind
        outcome = entry.outcome
        if outcome is None:  # ended some other way than RunScope.finish: the Run says
            run = entry.end_run(span)
            status, seconds = run.status, (run.duration_ms or 0.0) / 1e3
        else:
            status, seconds = outcome[0], (outcome[1] - entry.start_ns) / 1e9
        error = ""
        errors = None
        if status == "failed":
            attrs = span.attributes
            value = attrs.get(A.ERROR_TYPE) if attrs else None
            error = value if isinstance(value, str) else A.ERROR_OTHER
            errors = self._error_attributes(run_type, subtype, error)
        service = self._service_of(span)
        waiting = self._waiting
        waiting.append((max(seconds, 0.0),
                        self._end_attributes(run_type, subtype, status, error, service), errors))
        if self._drainer is None:
            self._start_drainer()
        elif len(waiting) > MAX_WAITING:  # the drainer cannot keep up: help it
            self.drain()
        if entry.root in self.ledger_roots and entry.journal_error is None:
            next(self._journaled)
        if entry.spans_dropped:
            self._spans_dropped.add(entry.spans_dropped)
        events = span.events
        if events:
            for event in events[-3:]:  # the marker is among the last (before the exception)
                if event.name == EVENTS_DROPPED:
                    dropped = (event.attributes or {}).get("dropped")
                    if isinstance(dropped, int) and dropped > 0:
                        self._events_dropped.add(dropped)

    # -- handing the measurements to the SDK ----------------------------------------------------

    def drain(self) -> int:
        """Record every waiting measurement into the SDK's instruments; how many."""
        pop = self._waiting.popleft
        record, add = self._duration.record, self._errors.add
        done = 0
        while True:
            try:
                seconds, attrs, errors = pop()
            except IndexError:
                return done
            record(seconds, attrs)
            if errors is not None:
                add(1, errors)
            done += 1

    def _start_drainer(self) -> None:
        thread = threading.Thread(target=self._drain_forever, name="otel-runs-metrics",
                                  daemon=True)
        self._drainer = thread
        thread.start()

    def _drain_forever(self) -> None:
        while True:
            time.sleep(DRAIN_INTERVAL)
            try:
                self.drain()
            except Exception:
                _errors.exception("metrics-drain", "otel-runs: recording run metrics failed")

    def _after_fork_in_child(self) -> None:
        self._drainer = None  # the parent's thread did not come along; the next run starts one

    # -- read when metrics are collected ------------------------------------------------------

    def _observe_active(self, options: CallbackOptions) -> Iterable[Observation]:
        self.drain()  # every collection calls this first: ended runs are all in it
        roots = self.roots
        counts: dict[tuple[str, str], int] = {}
        for entry in open_runs():
            if entry.root in roots:
                kind = entry.kind
                counts[kind] = counts.get(kind, 0) + 1
        # Subtypes seen before and idle now are reported as 0, not left stale.
        for key in list(self._active_attrs):
            counts.setdefault(key, 0)
        return [Observation(n, self._active_attributes(*key)) for key, n in counts.items()]

    def _observe_journaled(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(_count_value(self._journaled))] if self.ledger_roots else []

    # -- attribute sets, built once each ---------------------------------------------------

    def _active_attributes(self, run_type: str, subtype: str) -> dict[str, str]:
        key = (run_type, subtype)
        attrs = self._active_attrs.get(key)
        if attrs is None:
            attrs = {A.CICD_PIPELINE_NAME: subtype, A.RUN_TYPE: run_type,
                     A.CICD_PIPELINE_RUN_STATE: A.RUN_STATE_EXECUTING}
            if len(self._active_attrs) < MAX_ATTRIBUTE_SETS:
                self._active_attrs[key] = attrs
        return attrs

    def _end_attributes(self, run_type: str, subtype: str, status: str, error: str,
                        service: str) -> dict[str, str]:
        key = (run_type, subtype, status, error, service)
        attrs = self._end_attrs.get(key)
        if attrs is None:
            # No cicd.pipeline.run.state: a run's duration is its executing time, always
            # (each attribute costs every measurement its cleaning and hashing).
            attrs = {A.CICD_PIPELINE_NAME: subtype, A.RUN_TYPE: run_type,
                     A.CICD_PIPELINE_RESULT: A.RESULT_OF_STATUS.get(status, status)}
            if error:
                attrs[A.ERROR_TYPE] = error
            if service:
                attrs[_SERVICE_NAME] = service
            if len(self._end_attrs) < MAX_ATTRIBUTE_SETS:
                self._end_attrs[key] = attrs
        return attrs

    def _error_attributes(self, run_type: str, subtype: str, error: str) -> dict[str, str]:
        key = (run_type, subtype, error)
        attrs = self._error_attrs.get(key)
        if attrs is None:
            attrs = {A.CICD_PIPELINE_NAME: subtype, A.RUN_TYPE: run_type, A.ERROR_TYPE: error}
            if len(self._error_attrs) < MAX_ATTRIBUTE_SETS:
                self._error_attrs[key] = attrs
        return attrs

    def _service_of(self, span: ReadableSpan) -> str:
        """``service.name`` of the span's resource (a provider has one: kept by identity)."""
        resource = span.resource
        if resource is not self._resource:
            name = resource.attributes.get(_SERVICE_NAME, "") if resource is not None else ""
            self._resource, self._service = resource, str(name)
        return self._service

    # -- lifecycle: otel_runs.shutdown() must leave it usable --------------------------------

    def shutdown(self) -> None:
        """Nothing to release (the MeterProvider is flushed and shut down by its owner)."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Hand the waiting measurements to the SDK (``otel_runs.flush()`` calls it)."""
        self.drain()
        return True
