"""The spans a replay sends: a ledger run as its run span, a stored child span as it was
recorded (original trace id, span id, parent, kind, times, attributes, events, status)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from . import _attributes as A  # noqa: N812 - as in the core
from ._model import Run
from ._redact import metadata_json

__all__ = ["Resources", "child_span", "ns_from_iso", "run_span"]


def ns_from_iso(value: str) -> int:
    """Nanoseconds since the epoch of a run's ISO time (``...T...Z``, to the microsecond)."""
    dt = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    seconds = int(dt.replace(microsecond=0).timestamp())
    return seconds * 1_000_000_000 + dt.microsecond * 1000


def _clean_attrs(attrs: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (attrs or {}).items():
        if value is None:
            continue
        if isinstance(value, list):
            value = tuple(value)
        elif not isinstance(value, (str, bool, int, float)):
            value = json.dumps(value, ensure_ascii=False, sort_keys=True)
        out[str(key)] = value
    return out


def _context(trace_id: str, span_id: str) -> SpanContext:
    return SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=False,
                       trace_flags=TraceFlags(TraceFlags.SAMPLED))


class Resources:
    """One ``Resource`` per service name (a replay builds each once)."""

    def __init__(self) -> None:
        self._by_service: dict[str, Resource] = {}

    def get(self, service: str) -> Resource:
        service = service or "unknown_service"
        res = self._by_service.get(service)
        if res is None:
            res = self._by_service[service] = Resource({SERVICE_NAME: service})
        return res


_RUN_SCOPE = InstrumentationScope("otel_runs")


def run_span(run: Run, resource: Resource) -> ReadableSpan:
    """The run span of a finished ledger run. Its own parent (e.g. the request span) is
    not kept in the ledger, so it is sent without one."""
    assert run.ended_at is not None
    attrs: dict[str, Any] = {
        A.RUN_ID: run.run_id, A.RUN_TYPE: run.type, A.RUN_SUBTYPE: run.subtype,
        A.RUN_STATUS: run.status, A.RUN_SUMMARY: run.summary,
    }
    if run.metadata:
        attrs[A.RUN_METADATA] = metadata_json(run.metadata)
    if run.parent_run_id:
        attrs[A.RUN_PARENT_ID] = run.parent_run_id
    # The CICD conventions, as on the live run span.
    attrs[A.CICD_PIPELINE_NAME], attrs[A.CICD_PIPELINE_RUN_ID] = run.subtype, run.run_id
    if run.status in A.RESULT_OF_STATUS:
        attrs[A.CICD_PIPELINE_RESULT] = A.RESULT_OF_STATUS[run.status]
    if run.status == "failed":
        attrs[A.ERROR_TYPE] = _recorded_error_type(run)
    # As the live run span: ERROR when failed, else UNSET (run.status says the rest).
    code = StatusCode.ERROR if run.status == "failed" else StatusCode.UNSET
    return ReadableSpan(
        name=run.subtype,
        context=_context(run.trace_id, run.span_id),
        parent=None,
        resource=resource,
        attributes=attrs,
        events=[Event(str(e.get("name", "")), _clean_attrs(e.get("attributes")),
                      ns_from_iso(str(e["timestamp"]))) for e in run.events if e.get("timestamp")],
        kind=SpanKind.INTERNAL,
        status=Status(code, (run.summary or "failed") if code is StatusCode.ERROR else None),
        start_time=ns_from_iso(run.started_at),
        end_time=ns_from_iso(run.ended_at),
        instrumentation_scope=_RUN_SCOPE,
    )


def _recorded_error_type(run: Run) -> str:
    """``error.type`` of a failed ledger run: its exception event's ``exception.type``."""
    for event in reversed(run.events):
        attrs = event.get("attributes")
        if event.get("name") == "exception" and isinstance(attrs, dict):
            value = attrs.get("exception.type")
            if isinstance(value, str) and value:
                return value
    return A.ERROR_OTHER


def child_span(data: dict[str, Any], resource: Resource) -> ReadableSpan:
    """A child span as the ledger stored it (``span_to_dict``)."""
    parent = data.get("parent_span_id")
    code = StatusCode[str(data.get("status") or "UNSET")]
    return ReadableSpan(
        name=str(data["name"]),
        context=_context(str(data["trace_id"]), str(data["span_id"])),
        parent=_context(str(data["trace_id"]), str(parent)) if parent else None,
        resource=resource,
        attributes=_clean_attrs(data.get("attributes")),
        events=[Event(str(e.get("name", "")), _clean_attrs(e.get("attributes")), int(e["time_ns"]))
                for e in data.get("events") or [] if e.get("time_ns") is not None],
        kind=SpanKind[str(data.get("kind") or "INTERNAL")],
        status=Status(code, data.get("status_description") if code is StatusCode.ERROR else None),
        start_time=int(data["start_time_ns"]),
        end_time=int(data["end_time_ns"]),
        instrumentation_scope=InstrumentationScope(str(data.get("scope") or "otel_runs")),
    )
