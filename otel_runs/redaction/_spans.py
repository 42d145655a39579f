"""Spans made safe to keep or export: attributes, events, names, status, copies.

Every span otel-runs stores (a run's child spans in the ledger), streams (a run's
events) or exports (every span over OTLP, the Flask request span included) goes
through here: attribute keys naming secrets get ``***``, every string is scrubbed
(:func:`~otel_runs.redaction.scrub_text`) and bounded, at most
:data:`~otel_runs.redaction.MAX_SPAN_ATTRIBUTES` attributes are kept. The ``run.*``
attributes otel-runs writes itself (ids, type, status, the metadata JSON) were
cleaned when written and pass unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from itertools import islice
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, Status

from .. import _attributes as A
from . import _limits as L
from ._text import REDACTED, is_secret_flag, scrub_text
from ._values import (
    bounded_tail,
    bounded_text,
    clean_key,
    clean_metadata,
    clean_name,
    clean_summary,
    metadata_json,
    says_nothing,
)

__all__ = ["EVENTS_DROPPED", "SPANS_DROPPED", "TRUSTED_ATTRIBUTES", "attributes_size",
           "clean_attribute_value", "clean_attributes", "clean_events", "clean_run_attributes",
           "dropped_events_marker", "jsonable", "scrub_run_dict", "scrubbed_span"]

#: Attributes otel-runs writes itself, already clean (validated ids, the metadata JSON).
TRUSTED_ATTRIBUTES = frozenset(
    (A.RUN_ID, A.RUN_TYPE, A.RUN_SUBTYPE, A.RUN_STATUS, A.RUN_PARENT_ID, A.RUN_METADATA))
#: The name of the event saying how many events were dropped.
EVENTS_DROPPED = "otel_runs.events_dropped"
#: The name of the event saying how many child spans the ledger did not store.
SPANS_DROPPED = "otel_runs.spans_dropped"
#: Events never dropped for the limits: they say what was dropped.
_KEPT_EVENTS = frozenset((EVENTS_DROPPED, SPANS_DROPPED))
#: Attributes whose end matters more than their start.
_TAIL_KEYS = frozenset(("exception.stacktrace",))


def clean_attribute_value(key: str, value: Any) -> Any:
    """An OpenTelemetry attribute value, scrubbed and bounded (same type when it can be)."""
    kind = type(value)
    if kind is str:
        if len(value) <= L.MAX_VALUE_CHARS:
            return scrub_text(value)
        if key in _TAIL_KEYS:
            return bounded_tail(value, L.MAX_STACKTRACE_CHARS)
        return bounded_text(value, L.MAX_VALUE_CHARS)
    if kind is bool or kind is int or kind is float:
        return value
    if isinstance(value, (bytes, bytearray)):  # scrubbed as Latin-1 text, byte for byte
        return bounded_text(bytes(value[:L.MAX_VALUE_CHARS + L.MARGIN_CHARS]).decode("latin-1"),
                            L.MAX_VALUE_CHARS).encode("latin-1", "replace")
    if isinstance(value, Mapping):
        return clean_metadata(dict(value), L.Budget(L.MAX_VALUE_CHARS * 4))
    if isinstance(value, Sequence):
        out: list[Any] = []
        redact_next = False
        for item in islice(value, L.MAX_ITEMS):
            if type(item) is str:
                out.append(REDACTED if redact_next and item[:1] != "-"
                           else clean_attribute_value(key, item))
                redact_next = item[:1] == "-" and is_secret_flag(item)
            else:
                out.append(item)
                redact_next = False
        return out
    return bounded_text(repr(value), L.MAX_VALUE_CHARS)


def clean_attributes(attributes: Mapping[str, Any] | None) -> tuple[dict[str, Any], int]:
    """Scrubbed, bounded copies of span or event attributes, and how many were dropped."""
    if not attributes or not isinstance(attributes, Mapping):
        return {}, 0
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if key in TRUSTED_ATTRIBUTES and type(value) is str and len(value) <= L.MAX_RUN_BYTES:
            out[key] = value
            continue
        if len(out) >= L.MAX_SPAN_ATTRIBUTES:
            return out, len(attributes) - len(out)
        name, secret = clean_key(key)
        if secret and not says_nothing(value):
            out[name] = REDACTED
        elif type(value) is str and len(value) <= L.MAX_VALUE_CHARS:
            out[name] = scrub_text(value)
        else:
            out[name] = clean_attribute_value(name, value)
    return out, 0


def attributes_size(attributes: Mapping[str, Any]) -> int:
    """About how many bytes cleaned attributes take as JSON."""
    size = 0
    for key, value in attributes.items():
        size += len(key) + 6
        if type(value) is str:
            size += len(value)
        elif isinstance(value, (list, tuple)):
            size += sum(len(v) + 3 if type(v) is str else 12 for v in value)
        else:
            size += 12 if not isinstance(value, dict) else len(str(value))
    return size


def clean_events(events: Sequence[Event]) -> tuple[list[tuple[str, int, dict[str, Any]]], int]:
    """A span's events as ``(name, timestamp, attributes)``, scrubbed and bounded, at most
    :data:`~otel_runs.redaction.MAX_EVENTS` of them and about
    :data:`~otel_runs.redaction.MAX_EVENT_BYTES`; and how many were dropped here. Always
    kept: the markers saying what was dropped (so bounding again drops nothing) and a
    last ``exception`` event (the one that ended the span; it is bounded by itself)."""
    out: list[tuple[str, int, dict[str, Any]]] = []
    used = dropped = 0
    last = len(events) - 1
    for i, ev in enumerate(events):
        if (len(out) >= L.MAX_EVENTS or used >= L.MAX_EVENT_BYTES) and ev.name not in _KEPT_EVENTS \
                and not (i == last and ev.name == "exception"):
            dropped += 1
            continue
        name = clean_name(ev.name)
        attributes = clean_attributes(ev.attributes)[0] if ev.attributes else {}
        used += len(name) + 48 + (attributes_size(attributes) if attributes else 0)
        out.append((name, ev.timestamp, attributes))
    return out, dropped


_RUN_SPAN_KEYS = TRUSTED_ATTRIBUTES | {A.RUN_SUMMARY}


def clean_run_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """:func:`clean_attributes` of a run span, fast when it holds only otel-runs' own
    attributes (then only the summary is scrubbed again)."""
    out = dict(attributes) if attributes else {}
    if out.keys() <= _RUN_SPAN_KEYS:
        summary = out.get(A.RUN_SUMMARY)
        if summary is not None:
            out[A.RUN_SUMMARY] = clean_summary(summary)
        metadata = out.get(A.RUN_METADATA)
        if metadata is None or (type(metadata) is str and len(metadata) <= L.MAX_RUN_BYTES):
            return out
    return clean_attributes(out)[0]


def dropped_events_marker(dropped: int, kept: int, why: str = "") -> dict[str, Any]:
    """The attributes of the event saying ``dropped`` events were not kept."""
    return {"dropped": dropped,
            "message": f"{dropped} events dropped ({kept} kept{'; ' + why if why else ''})"}


def jsonable(attributes: dict[str, Any]) -> dict[str, Any]:
    """Cleaned attributes as JSON holds them (tuples as lists, bytes as Latin-1 text)."""
    return {k: (list(v) if isinstance(v, tuple) else
                v.decode("latin-1") if isinstance(v, bytes) else v)
            for k, v in attributes.items()}


def scrubbed_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of a finished span with its name, attributes, events, links and status
    description scrubbed and bounded; the SDK's dropped counts are carried over (plus
    what was dropped here), so an exporter reports them."""
    attributes, dropped = clean_attributes(span.attributes)
    events = BoundedList(None)
    kept, events_dropped = clean_events(span.events)
    for ev, (name, timestamp, ev_attrs) in zip(span.events, kept, strict=False):
        events.append(Event(name, _bounded(ev_attrs, ev.dropped_attributes), timestamp))
    events.dropped = span.dropped_events + events_dropped
    links = BoundedList(None)
    for link in span.links:
        link_attrs, link_dropped = clean_attributes(link.attributes)
        links.append(Link(link.context, _bounded(link_attrs, link.dropped_attributes + link_dropped)))
    links.dropped = span.dropped_links
    status = span.status
    if status.description:
        status = Status(status.status_code, clean_summary(status.description))
    return ReadableSpan(
        name=clean_name(span.name), context=span.context, parent=span.parent,
        resource=span.resource, attributes=_bounded(attributes, span.dropped_attributes + dropped),
        events=events, links=links, kind=span.kind, status=status,
        start_time=span.start_time, end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _bounded(attributes: dict[str, Any], dropped: int) -> Any:
    """Attributes as the SDK holds them when some were dropped (it reports the count)."""
    if not dropped:
        return attributes
    bounded = BoundedAttributes(None, attributes, immutable=True)
    bounded.dropped = dropped
    return bounded


def scrub_run_dict(run: dict[str, Any]) -> dict[str, Any]:
    """A ``Run.to_dict()`` with its summary, metadata and events scrubbed and bounded
    (for runs handed to the ledger as data rather than as spans)."""
    out = dict(run)
    if isinstance(out.get("summary"), str):
        out["summary"] = clean_summary(out["summary"])
    if isinstance(out.get("metadata"), dict):
        out["metadata"] = json.loads(metadata_json(out["metadata"]))
    events = out.get("events")
    if isinstance(events, list):
        budget = L.Budget(L.MAX_EVENT_BYTES)
        kept = [
            {**ev, "name": clean_name(ev.get("name", "")),
             "attributes": clean_metadata(ev["attributes"], budget)
             if isinstance(ev.get("attributes"), dict) else {}}
            if isinstance(ev, dict) else ev
            for ev in events[:L.MAX_EVENTS]]
        if len(events) > L.MAX_EVENTS:
            last = kept[-1] if isinstance(kept[-1], dict) else {}
            kept.append({"name": EVENTS_DROPPED, "timestamp": last.get("timestamp", ""),
                         "attributes": dropped_events_marker(len(events) - L.MAX_EVENTS,
                                                             L.MAX_EVENTS)})
        out["events"] = kept
    return out
