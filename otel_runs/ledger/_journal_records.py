"""Journal records: what a run span is on disk until it is committed.

On the request path a run span is journaled as its raw data (attributes, ids,
times, events: cheap to collect). The :class:`~otel_runs.Run` is built from it
later, off the request path, by rebuilding the ``ReadableSpan`` and calling
``Run.from_span`` — so there is one conversion, the one everything else uses.
A record is ``{"span": raw}`` or, for runs handed over as ``Run`` objects,
``{"run": Run.to_dict()}``.

Records are normalised before they are journaled (and again when a journal of
another process is read), so that whatever is journaled can be committed:

* times (ns) are ints clamped into ``0..MAX_NS`` (see :func:`otel_runs._model.clamp_ns`);
  a time that is no number becomes the run's start (the run's own start: the time
  in its run id);
* floats that JSON cannot hold (NaN, ±Infinity) become the strings ``"nan"``,
  ``"inf"``, ``"-inf"`` (what metadata cleaning stores too), except a Run's
  ``duration_ms``, which becomes null;
* keys become strings, strings that are not valid Unicode get U+FFFD, anything
  else JSON cannot hold (or nested deeper than 64) becomes its ``repr``;
* a ``run.parent_id`` / ``parent_run_id`` that is not a run id is dropped.
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext

from .._ids import is_run_id
from .._model import MAX_NS, Run, clamp_ns
from .._output_lines import kept_json, lines_json, lines_of_kept
from ..redaction import (
    EVENTS_DROPPED,
    clean_events,
    clean_run_attributes,
    dropped_events_marker,
    scrub_run_dict,
)

__all__ = ["decode_line", "encode_record", "encoded_line", "id_ns", "normalise_record", "raw_span", "record_run_id",
           "run_dict"]

_resources: dict[str, Resource] = {}
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(Run))
_MAX_DEPTH = 64
_MAX_REPR = 4_096

#: Compact JSON that refuses NaN/Infinity (``default=repr`` for other objects), without
#: building an encoder per line (two lines per run, on the request path).
_STRICT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                           default=repr)


def _ok_ns(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_NS  # type: ignore[operator]


def raw_span(span: ReadableSpan) -> dict[str, Any]:
    """The raw data of a run span that ``Run.from_span`` reads (normalised when encoded):
    attributes and events scrubbed and bounded (``otel_runs.redaction``), the SDK's
    dropped events said by a last ``otel_runs.events_dropped`` event."""
    ctx = span.context
    resource = span.resource
    service = resource.attributes.get("service.name", "") if resource is not None else ""
    events: list[list[Any]] = []
    if span.events:
        kept, dropped = clean_events(span.events)
        events = [list(event) for event in kept]
        dropped += span.dropped_events
        if dropped and events:
            events.append([EVENTS_DROPPED, events[-1][1], dropped_events_marker(
                dropped, len(kept), "the span's event limits")])
    return {
        "name": span.name,
        "trace_id": ctx.trace_id if ctx else 0,
        "span_id": ctx.span_id if ctx else 0,
        "start": span.start_time,
        "end": span.end_time,
        "attrs": clean_run_attributes(span.attributes),
        "events": events,
        "service": service,
    }


def id_ns(run_id: object) -> int:
    """The start time encoded in a run id, in ns (0 if it is not a run id)."""
    if not is_run_id(run_id):
        return 0
    stamp = str(run_id)
    try:
        sec = calendar.timegm((int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8]),
                               int(stamp[9:11]), int(stamp[11:13]), int(stamp[13:15]), 0, 0, 0))
    except (ValueError, OverflowError):
        return 0
    return clamp_ns(sec * 1_000_000_000 + int(stamp[15:18]) * 1_000_000)


def _children_ok(spans: list[Any]) -> bool:
    """Whether child span records (``span_to_dict``) have valid times (cheap check)."""
    for s in spans:
        if not isinstance(s, dict) or not _ok_ns(s.get("start_time_ns")):
            return False
        end = s.get("end_time_ns")
        if end is not None and not _ok_ns(end):
            return False
        for e in s.get("events") or ():
            if not isinstance(e, dict) or not _ok_ns(e.get("time_ns")):
                return False
    return True


def _record_ok(obj: dict[str, Any]) -> bool:
    """Whether a record's times, parent id and duration need no normalising (cheap
    check; what JSON cannot hold is found by the strict encoder)."""
    raw = obj.get("span")
    if raw is not None:
        if not isinstance(raw, dict) or not _ok_ns(raw.get("start")):
            return False
        end = raw.get("end")
        if end is not None and not _ok_ns(end):
            return False
        for ev in raw.get("events") or ():
            if not isinstance(ev, list) or len(ev) != 3 or not _ok_ns(ev[1]):
                return False
        attrs = raw.get("attrs")
        parent = attrs.get("run.parent_id") if isinstance(attrs, dict) else None
        if parent is not None and not is_run_id(parent):
            return False
    run = obj.get("run")
    if isinstance(run, dict):
        duration = run.get("duration_ms")
        if duration is not None and (type(duration) not in (int, float)
                                     or not math.isfinite(duration)):
            return False
        parent = run.get("parent_run_id")
        if parent is not None and not is_run_id(parent):
            return False
    spans = obj.get("spans")
    return not spans or not isinstance(spans, list) or _children_ok(spans)


def encode_record(obj: dict[str, Any]) -> tuple[bytes, bool]:
    """One journal line for ``obj`` (compact JSON and a newline) and whether it had to
    be normalised first (see the module docstring). A run handed over as data
    (``{"run": ...}``) is scrubbed and bounded first, as run spans are by :func:`raw_span`."""
    if "run" in obj and isinstance(obj["run"], dict):
        obj = {**obj, "run": scrub_run_dict(obj["run"])}
    if _record_ok(obj):
        try:
            return (_STRICT.encode(obj) + "\n").encode("utf-8"), False
        except (ValueError, TypeError, RecursionError):  # NaN/inf, a lone surrogate, odd keys
            pass
    return (_STRICT.encode(normalise_record(obj)) + "\n").encode("utf-8"), True


def encoded_line(kind: str, run_json: str, spans: list[dict[str, Any]] | None,
                 output: Sequence[dict[str, Any]] | None = None) -> bytes | None:
    """The journal line ``{"e": kind, "run": <run_json>, "spans": [...], "output": [...]}``
    around a Run already encoded by otel-runs' own processors (``OpenRun.start_json``:
    built from scrubbed, bounded data), without decoding or encoding the run again; None
    when the child spans need normalising (the caller then takes :func:`encode_record`)."""
    if spans is None:
        return f'{{"e":"{kind}","run":{run_json}}}\n'.encode()
    tail = ""
    if output:
        try:
            tail = ',"output":' + kept_json(output)
        except (ValueError, TypeError, RecursionError):
            return None
    if not spans:
        return f'{{"e":"{kind}","run":{run_json},"spans":[]{tail}}}\n'.encode()
    if not _children_ok(spans):
        return None
    try:
        text = _STRICT.encode(spans)
        return f'{{"e":"{kind}","run":{run_json},"spans":{text}{tail}}}\n'.encode()
    except (ValueError, TypeError, RecursionError):
        return None


def output_line(run_id: str, lines: Sequence[dict[str, Any]]) -> bytes:
    """The journal line of one chunk of an open run's output (lines are clean already)."""
    run_json = _STRICT.encode(run_id)
    return f'{{"e":"out","run_id":{run_json},"lines":{lines_json(lines)}}}\n'.encode()


def spans_line(run_id: str, spans: list[dict[str, Any]],
               events: list[dict[str, Any]] | None = None) -> bytes:
    """The journal line of child spans an open run ended (those since the last such line)
    and, when given, every event it has so far, sent while it runs: an ``out`` record
    without lines, so that it is kept and indexed as a chunk is."""
    run_json = _STRICT.encode(run_id)
    tail = "" if events is None else ',"events":' + _STRICT.encode(events)
    return (f'{{"e":"out","run_id":{run_json},"lines":[],"spans":{_STRICT.encode(spans)}'
            f'{tail}}}\n').encode()


def record_output(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The output lines a journal record holds (an end record's or an ``out`` chunk's)."""
    return lines_of_kept(record.get("output") if record.get("e") != "out"
                         else record.get("lines"))


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as data JSON holds exactly (see the module docstring)."""
    if value is None or isinstance(value, (bool, int)):
        return value if type(value) in (bool, int) or value is None else int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(float(value))
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
        return str(value)
    if depth >= _MAX_DEPTH:
        return json_safe(repr(value)[:_MAX_REPR], 0)
    if isinstance(value, dict):
        return {json_safe(k if isinstance(k, str) else str(k)): json_safe(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    return json_safe(repr(value)[:_MAX_REPR], 0)


def _at(seq: Any, index: int, key: Any) -> Any:
    """``seq[index][key]`` of the original record, or None (times are read from the
    original: normalising turns a non-finite float into text, which is no time)."""
    try:
        return seq[index][key]
    except (IndexError, KeyError, TypeError):
        return None


def _fix_children(spans: Any, orig: Any, run_start: int) -> Any:
    if not isinstance(spans, list):
        return spans
    for i, s in enumerate(spans):
        if not isinstance(s, dict):
            continue
        start = s["start_time_ns"] = clamp_ns(_at(orig, i, "start_time_ns"), run_start)
        if s.get("end_time_ns") is not None:
            s["end_time_ns"] = clamp_ns(_at(orig, i, "end_time_ns"), start)
        events = s.get("events")
        for j, e in enumerate(events if isinstance(events, list) else ()):
            if isinstance(e, dict):
                e["time_ns"] = clamp_ns(_at(_at(orig, i, "events"), j, "time_ns"), start)
    return spans


def normalise_record(obj: dict[str, Any]) -> dict[str, Any]:
    """A normalised copy of a journal record (``{"e": ..., "span"|"run": ..., "spans": ...}``)."""
    rec = json_safe(obj)
    if not isinstance(rec, dict) or not isinstance(obj, dict):
        return rec  # type: ignore[no-any-return]
    raw, orig = rec.get("span"), obj.get("span")
    run_start = 0
    if isinstance(raw, dict) and isinstance(orig, dict):
        attrs = raw.get("attrs")
        rid = attrs.get("run.id") if isinstance(attrs, dict) else None
        run_start = raw["start"] = clamp_ns(orig.get("start"), id_ns(rid))
        if raw.get("end") is not None:
            raw["end"] = clamp_ns(orig.get("end"), run_start)
        events = raw.get("events")
        for i, ev in enumerate(events if isinstance(events, list) else ()):
            if isinstance(ev, list) and len(ev) == 3:
                ev[1] = clamp_ns(_at(orig.get("events"), i, 1), run_start)
        if isinstance(attrs, dict) and "run.parent_id" in attrs \
                and not is_run_id(attrs["run.parent_id"]):
            del attrs["run.parent_id"]
    run = rec.get("run")
    if isinstance(run, dict):
        run_start = id_ns(run.get("run_id"))
        duration = run.get("duration_ms")
        if duration is not None and (isinstance(duration, bool)
                                     or not isinstance(duration, (int, float))):
            run["duration_ms"] = None
        if run.get("parent_run_id") is not None and not is_run_id(run["parent_run_id"]):
            run["parent_run_id"] = None
    if "spans" in rec:
        rec["spans"] = _fix_children(rec["spans"], obj.get("spans"), run_start)
    return rec


def _resource(service: str) -> Resource:
    res = _resources.get(service)
    if res is None:
        res = _resources[service] = Resource({"service.name": service} if service else {})
    return res


def run_dict(record: dict[str, Any]) -> dict[str, Any]:
    """The ``Run.to_dict()`` of a journal record; ``ValueError`` if it is not one."""
    if not isinstance(record, dict):
        raise ValueError(f"journal record is not an object: {type(record).__name__}")
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
            attributes=dict(raw["attrs"]),
            events=[Event(str(name), attributes=attrs, timestamp=int(ts))
                    for name, ts, attrs in raw.get("events") or []],
            resource=_resource(str(raw.get("service") or "")),
            start_time=int(raw["start"]),
            end_time=None if raw.get("end") is None else int(raw["end"]),
        )
        run = Run.from_span(span)
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
        raise ValueError(f"journal span record is incomplete or invalid: {exc!r}") from exc
    # == run.to_dict() for this freshly built, unshared Run, without asdict's deep copy
    # (a third of the cost of building a batch).
    return {name: getattr(run, name) for name in _RUN_FIELDS}


def record_run_id(record: Any) -> Any:
    """The run id a record claims (validate before use)."""
    if not isinstance(record, dict):
        return None
    if record.get("e") == "out":
        return record.get("run_id")
    if "run" in record:
        run = record["run"]
        return run.get("run_id") if isinstance(run, dict) else None
    raw = record.get("span")
    attrs = raw.get("attrs") if isinstance(raw, dict) else None
    return attrs.get("run.id") if isinstance(attrs, dict) else None


def decode_line(raw: bytes) -> dict[str, Any]:
    """A journal line as a normalised record; ``ValueError`` if it is not a JSON object."""
    try:
        rec = json.loads(raw)
    except RecursionError as exc:
        raise ValueError("nested too deeply to decode") from exc
    except ValueError as exc:  # (UnicodeDecodeError too)
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(rec, dict):
        raise ValueError(f"not a JSON object but {type(rec).__name__}")
    if b"NaN" in raw or b"Infinity" in raw or b"\\u" in raw or not _record_ok(rec):
        rec = normalise_record(rec)
    return rec
