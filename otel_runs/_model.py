"""The Run record: what a finished (or running) run span means, as plain data."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import format_span_id, format_trace_id

from . import _attributes as A
from ._ids import SecondStamp, is_run_id
from .redaction import (
    EVENTS_DROPPED,
    clean_attributes,
    clean_events,
    clean_name,
    clean_summary,
    dropped_events_marker,
    jsonable,
)

__all__ = ["MAX_NS", "RUN_FIELDS", "Run", "RunStatus", "STATUSES", "clamp_ns", "iso_from_ns"]

logger = logging.getLogger("otel_runs")

RunStatus = Literal["running", "ok", "failed", "cancelled", "interrupted"]
#: Every status a run can have. ``interrupted`` is only ever set by the ledger's
#: crash recovery, never over a status the code reported.
STATUSES: tuple[str, ...] = ("running", "ok", "failed", "cancelled", "interrupted")


_iso_stamp = SecondStamp("%Y-%m-%dT%H:%M:%S")

#: The latest time a run or span may have, in ns since the epoch: the largest
#: signed 64-bit value (2262-04-11T23:47:16.854775807Z), what OTLP and the
#: OpenTelemetry SDKs carry. Times are clamped into ``0..MAX_NS``.
MAX_NS = 2**63 - 1


def clamp_ns(value: object, fallback: object = 0) -> int:
    """A time in ns as an int in ``0..MAX_NS``: numbers are clamped (``±inf`` to the
    nearest bound); anything else (NaN, None, text, a bool) becomes ``fallback``
    (itself clamped; the epoch if it is no number either)."""
    if type(value) is int:
        return 0 if value < 0 else MAX_NS if value > MAX_NS else value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return 0 if value <= 0 else MAX_NS if value >= MAX_NS else int(value)
    return clamp_ns(fallback) if fallback is not value else 0


def iso_from_ns(ns: int) -> str:
    """ISO-8601 UTC with microseconds and a ``Z`` (``2026-11-27T10:15:00.123456Z``);
    ``ns`` is clamped as :func:`clamp_ns` does (NaN: the epoch)."""
    if type(ns) is not int or not 0 <= ns <= MAX_NS:
        ns = clamp_ns(ns)
    sec = ns // 1_000_000_000
    last = _iso_stamp.last  # _iso_stamp(sec) without the call, within the same second
    stamp = last[1] if last[0] == sec else _iso_stamp(sec)
    return f"{stamp}.{ns // 1000 % 1_000_000:06d}Z"


def _clean_attrs(attrs: Mapping[str, Any] | None, dropped_before: int = 0) -> dict[str, Any]:
    """Event or span attributes scrubbed, bounded and JSON-safe; how many were dropped
    (here, and ``dropped_before`` by the SDK) is the ``otel_runs.attributes_dropped``
    attribute."""
    if not attrs:
        return {}
    cleaned, dropped = clean_attributes(attrs)
    dropped += dropped_before
    if dropped:
        cleaned["otel_runs.attributes_dropped"] = dropped
    return jsonable(cleaned)


@dataclass
class Run:
    """One tracked action. JSON-safe; ``to_dict``/``from_dict`` round-trip exactly."""

    run_id: str
    type: str
    subtype: str
    status: str = "running"
    summary: str = ""
    started_at: str = ""
    ended_at: str | None = None
    duration_ms: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    trace_id: str = ""
    span_id: str = ""
    parent_run_id: str | None = None
    service: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field, in field order (the ledger's and the
        API's format); ``metadata`` and ``events`` are deep copies."""
        # What ``dataclasses.asdict`` returns, at a fraction of its cost (it runs for
        # every live-feed event): only these two fields hold containers.
        data = {name: getattr(self, name) for name in _FIELD_NAMES}
        data["metadata"] = _copy_json(self.metadata)
        data["events"] = _copy_json(self.events)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Run:
        """Build a Run from :meth:`to_dict` output.

        Unknown keys are ignored with a warning (a newer writer); missing required
        keys or wrong types raise ``ValueError``.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"run data must be an object, got {type(data).__name__}")
        known = _FIELD_SET
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring unknown run fields %s in run %r", unknown, data.get("run_id"))
        for key in ("run_id", "type", "subtype"):
            if not isinstance(data.get(key), str):
                raise ValueError(f"run field {key!r} must be a string, got {data.get(key)!r}")
        if data.get("status", "running") not in STATUSES:
            raise ValueError(f"run status {data.get('status')!r} is not one of {STATUSES}")
        if not isinstance(data.get("metadata", {}), dict):
            raise ValueError("run field 'metadata' must be an object")
        if not isinstance(data.get("events", []), list):
            raise ValueError("run field 'events' must be a list")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_span(cls, span: ReadableSpan) -> Run:
        """Build a Run from a run span (running if the span has not ended)."""
        end = span.end_time
        attrs = dict(span.attributes or {})  # one copy: plain dict lookups from here on
        run_id = attrs.get(A.RUN_ID)
        run_type = attrs.get(A.RUN_TYPE)
        if not isinstance(run_id, str) or not isinstance(run_type, str):
            raise ValueError(f"span {span.name!r} is not a run span (no {A.RUN_TYPE} attribute)")
        start = clamp_ns(span.start_time)
        if end is not None:
            end = clamp_ns(end, start)
        status = "running" if end is None else str(attrs.get(A.RUN_STATUS, "ok"))
        ctx = span.context
        parent = attrs.get(A.RUN_PARENT_ID)
        return cls(
            run_id=run_id,
            type=run_type,
            subtype=str(attrs.get(A.RUN_SUBTYPE, span.name)),
            status=status,
            summary=clean_summary(attrs.get(A.RUN_SUMMARY, "")),
            started_at=iso_from_ns(start),
            ended_at=None if end is None else iso_from_ns(end),
            duration_ms=None if end is None else round((end - start) / 1e6, 3),
            metadata=parse_metadata(attrs.get(A.RUN_METADATA)),
            trace_id=format_trace_id(ctx.trace_id) if ctx else "",
            span_id=format_span_id(ctx.span_id) if ctx else "",
            parent_run_id=parent if is_run_id(parent) else None,
            service=str(span.resource.attributes.get("service.name", "") if span.resource else ""),
            events=span_events(span),
        )


def parse_metadata(raw: Any) -> dict[str, Any]:
    """The ``run.metadata`` attribute (JSON text) as a dict."""
    if raw is None or raw == "{}":
        return {}
    try:
        value = json.loads(str(raw))
    except ValueError:
        return {"_unparsed": str(raw)}
    return value if isinstance(value, dict) else {"_value": value}


def span_events(span: ReadableSpan) -> list[dict[str, Any]]:
    """A span's events as a Run lists them (scrubbed and bounded; events dropped here
    or by the SDK are said by a last ``otel_runs.events_dropped`` event)."""
    events = span.events
    if not events:
        return []
    kept, dropped = clean_events(events)
    out = [{"name": name, "timestamp": iso_from_ns(ts), "attributes": jsonable(attrs)}
           for name, ts, attrs in kept]
    dropped += span.dropped_events
    if dropped:
        out.append({"name": EVENTS_DROPPED, "timestamp": out[-1]["timestamp"],
                    "attributes": dropped_events_marker(dropped, len(kept),
                                                        "the span's event limits")})
    return out


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Run))
#: The fields of a Run, in order (the keys of ``Run.to_dict()``).
RUN_FIELDS = _FIELD_NAMES
_FIELD_SET = frozenset(_FIELD_NAMES)


def _copy_json(value: Any) -> Any:
    """A deep copy of JSON-like data (dicts, lists, tuples as lists; the rest as is)."""
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy_json(v) for v in value]
    return value


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """A compact JSON-safe record of any finished span (for child spans of a run):
    name, attributes, events and status description scrubbed and bounded."""
    ctx = span.context
    parent = span.parent
    start = clamp_ns(span.start_time)
    kept, dropped = clean_events(span.events)
    events = [{"name": name, "time_ns": clamp_ns(ts, span.start_time), "attributes": jsonable(attrs)}
              for name, ts, attrs in kept]
    dropped += span.dropped_events
    if dropped:
        events.append({"name": EVENTS_DROPPED, "time_ns": events[-1]["time_ns"] if events else start,
                       "attributes": dropped_events_marker(dropped, len(kept),
                                                           "the span's event limits")})
    description = span.status.description
    return {
        "name": clean_name(span.name),
        "trace_id": format_trace_id(ctx.trace_id) if ctx else "",
        "span_id": format_span_id(ctx.span_id) if ctx else "",
        "parent_span_id": format_span_id(parent.span_id) if parent else None,
        "kind": span.kind.name if span.kind is not None else "INTERNAL",
        "start_time_ns": start,
        "end_time_ns": None if span.end_time is None else clamp_ns(span.end_time, span.start_time),
        "status": span.status.status_code.name,
        "status_description": clean_summary(description) if description else description,
        "attributes": _clean_attrs(span.attributes, span.dropped_attributes),
        "events": events,
        "scope": span.instrumentation_scope.name if span.instrumentation_scope else None,
    }
