"""Journal records: what a run span is on disk until it is committed.

On the request path a run span is journaled as its raw data (attributes, ids,
times, events: cheap to collect). The :class:`~otel_runs.Run` is built from it
later, off the request path, by rebuilding the ``ReadableSpan`` and calling
``Run.from_span`` — so there is one conversion, the one everything else uses.
A record is ``{"span": raw}`` or, for runs handed over as ``Run`` objects,
``{"run": Run.to_dict()}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext

from .._model import Run

__all__ = ["raw_span", "run_dict"]

_resources: dict[str, Resource] = {}
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(Run))


def raw_span(span: ReadableSpan) -> dict[str, Any]:
    """The JSON-safe raw data of a run span that ``Run.from_span`` reads."""
    ctx = span.context
    resource = span.resource
    service = resource.attributes.get("service.name", "") if resource is not None else ""
    return {
        "name": span.name,
        "trace_id": ctx.trace_id if ctx else 0,
        "span_id": ctx.span_id if ctx else 0,
        "start": span.start_time,
        "end": span.end_time,
        "attrs": dict(span.attributes or {}),
        "events": [[e.name, e.timestamp, dict(e.attributes or {})] for e in span.events],
        "service": service,
    }


def _resource(service: str) -> Resource:
    res = _resources.get(service)
    if res is None:
        res = _resources[service] = Resource({"service.name": service} if service else {})
    return res


def run_dict(record: dict[str, Any]) -> dict[str, Any]:
    """The ``Run.to_dict()`` of a journal record; ``ValueError`` if it is not one."""
    if "run" in record:
        run = record["run"]
        if not isinstance(run, dict):
            raise ValueError("journal record 'run' is not an object")
        return run
    raw = record.get("span")
    if not isinstance(raw, dict):
        raise ValueError("journal record has neither 'run' nor 'span'")
    try:
        span = ReadableSpan(
            name=str(raw["name"]),
            context=SpanContext(int(raw["trace_id"]), int(raw["span_id"]), is_remote=False),
            attributes=raw["attrs"],
            events=[Event(str(name), attributes=attrs, timestamp=int(ts))
                    for name, ts, attrs in raw.get("events") or []],
            resource=_resource(str(raw.get("service") or "")),
            start_time=int(raw["start"]),
            end_time=None if raw.get("end") is None else int(raw["end"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"journal span record is incomplete: {exc!r}") from exc
    run = Run.from_span(span)
    # == run.to_dict() for this freshly built, unshared Run, without asdict's deep copy
    # (a third of the cost of building a batch).
    return {name: getattr(run, name) for name in _RUN_FIELDS}


def record_run_id(record: dict[str, Any]) -> Any:
    """The run id a record claims (validate before use)."""
    if "run" in record:
        run = record["run"]
        return run.get("run_id") if isinstance(run, dict) else None
    raw = record.get("span")
    attrs = raw.get("attrs") if isinstance(raw, dict) else None
    return attrs.get("run.id") if isinstance(attrs, dict) else None
