"""A run's output over HTTP (routes of the runs blueprint, see :mod:`otel_runs._api_base`).

- ``GET /api/runs/<run_id>/output?after=<n>``: JSON ``{"run_id", "status", "lines": [...],
  "next", "complete", "dropped"}``: the lines with ``n > after`` (all: ``after=-1``, the
  default), at most :data:`MAX_LINES` per answer (``next`` is the ``after`` of the next
  call); ``complete`` once the run ended and every line was given. ``?format=text``: the
  lines as plain text (``&download=1``: as a file).
- ``GET /api/runs/<run_id>/output/stream``: ``text/event-stream`` of ``output`` events
  (``{"lines": [...]}``, id = the last line's ``n``; resumes after ``Last-Event-ID``), then
  one ``end`` event (``{"status": ...}``) when the run has ended. Lines come from the live
  feed as the run writes them (any process of the host), the rest from the ledger.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from flask import Response, current_app, request

from ._api_base import ApiError, blueprint, choice_arg, known_run, project_ledger
from ._model import Run
from .exporters.sse import RUN_COMPLETED, RUN_OUTPUT
from .live import Hub, SubscriberDroppedError, _streams, get_hub

__all__ = ["MAX_LINES", "get_output", "output_answer", "output_events", "stream_output"]

#: Most lines in one ``/output`` answer.
MAX_LINES = 10_000
#: How often (s) a stream with nothing to send checks whether the run ended meanwhile.
_CHECK_EVERY = 5.0


def _dropped(lines: list[dict[str, Any]]) -> int:
    """Lines left out between the kept ones (numbers are consecutive otherwise)."""
    gaps, prev = 0, None
    for line in lines:
        if line.get("stream") == "meta":
            continue
        if prev is not None and line["n"] > prev + 1:
            gaps += line["n"] - prev - 1
        prev = line["n"]
    return gaps


def output_answer(run: Any, lines: list[dict[str, Any]], after: int, fmt: str,
                  download: bool) -> Response:
    """The answer of ``/api/runs/<id>/output`` for ``run`` and its ``lines``."""
    selected = [line for line in lines if line["n"] > after]
    more = len(selected) > MAX_LINES
    selected = selected[:MAX_LINES]
    if fmt == "text":
        resp = Response("".join(line["text"] + "\n" for line in selected),
                        mimetype="text/plain")
        resp.charset = "utf-8"
        if download:
            resp.headers["Content-Disposition"] = f'attachment; filename="{run.run_id}.log"'
        return resp
    body = {"run_id": run.run_id, "status": run.status, "lines": selected,
            "next": selected[-1]["n"] if selected else after,
            "complete": run.status != "running" and not more, "dropped": _dropped(lines)}
    return Response(json.dumps(body, ensure_ascii=False, separators=(",", ":")),
                    mimetype="application/json")


def _frame(kind: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"event: {kind}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return (head + "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":"))
            + "\n\n").encode()


def output_events(hub: Hub, run_id: str, after: int,
                  read: Callable[[], tuple[Any, list[dict[str, Any]]]],
                  heartbeat: float, stopping: Callable[[], bool]) -> Iterator[bytes]:
    """The frames of ``/api/runs/<id>/output/stream``. ``read()`` returns the run and its
    lines from the ledger (the run as it is now)."""
    sent = [after]  # the last line number sent (shared with _follow)
    sub = hub.subscribe(None)
    try:
        yield b"retry: 2000\n\n"
        while True:  # catch up from the ledger, then follow the feed
            run, lines = read()
            fresh = [line for line in lines if line["n"] > sent[0]]
            for start in range(0, len(fresh), 1000):
                part = fresh[start:start + 1000]
                sent[0] = part[-1]["n"]
                yield _frame("output", {"lines": part}, sent[0])
            if run is None or run.status != "running":
                yield _frame("end", {"status": None if run is None else run.status})
                return
            ended = yield from _follow(sub, run_id, heartbeat, stopping, sent)
            if ended is None:  # the server is stopping
                return
            if ended is False:  # fell behind the feed: follow it afresh, after the ledger
                sub.close()
                sub = hub.subscribe(None)
            # (True: the run completed; "check": a while without news: read the ledger)
    finally:
        sub.close()


def _follow(sub: Any, run_id: str, heartbeat: float, stopping: Callable[[], bool],
            sent: list[int]) -> Generator[bytes, None, bool | str | None]:
    """Frames from the feed until the run completes (returns True), the reader falls behind
    (False), a check of the ledger is due ("check"), or the server stops (None)."""
    checked = quiet = time.monotonic()
    needle = f'"run_id":"{run_id}"'
    while True:
        if stopping():
            return None
        try:
            events = sub.next_batch(1.0)
        except SubscriberDroppedError:
            return False
        for event in events:
            if needle not in event.data or event.type not in (RUN_COMPLETED, RUN_OUTPUT):
                continue
            try:
                data = json.loads(event.data)
            except ValueError:
                continue
            if not isinstance(data, dict) or data.get("run_id") != run_id:
                continue  # (another run naming it: a child's parent_run_id...)
            if event.type == RUN_COMPLETED:
                return True
            lines = data.get("lines") or []
            fresh = [line for line in lines if isinstance(line, dict)
                     and isinstance(line.get("n"), int) and line["n"] > sent[0]]
            if fresh:
                sent[0] = fresh[-1]["n"]
                quiet = time.monotonic()
                yield _frame("output", {"lines": fresh}, sent[0])
        now = time.monotonic()
        if now - quiet >= heartbeat:
            quiet = now
            yield b": heartbeat\n\n"
        if now - checked >= _CHECK_EVERY:  # (a completion the feed did not bring)
            return "check"


# -- the routes ----------------------------------------------------------------------

def _run_and_output(run_id: str) -> tuple[Run, list[dict[str, Any]]]:
    ledger, run = known_run(run_id)
    return run, ledger.output(run_id) or []


@blueprint.get("/api/runs/<run_id>/output")
def get_output(run_id: str) -> Response:
    """The run's output lines after ``?after=`` (see :mod:`otel_runs.api_output`)."""
    raw = request.args.get("after", "-1")
    if raw != "-1" and not (raw.isascii() and raw.isdigit() and len(raw) <= 12):
        raise ApiError(400, f"after must be a line number (or -1), got {raw[:40]!r}")
    after = int(raw)
    fmt = choice_arg("format", ("json", "text")) or "json"
    run, lines = _run_and_output(run_id)
    return output_answer(run, lines, after, fmt, request.args.get("download") == "1")


@blueprint.get("/api/runs/<run_id>/output/stream")
def stream_output(run_id: str) -> Response:
    """The run's output as it comes (``text/event-stream``), then ``end``."""
    _run_and_output(run_id)  # (400 / 404 before the stream starts)
    last = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or "-1"
    if last != "-1" and not (last.isascii() and last.isdigit() and len(last) <= 12):
        raise ApiError(400, f"Last-Event-ID must be a line number, got {last[:40]!r}")
    after = int(last)
    gate: _streams.StreamGate = current_app.extensions["otel_runs"].extra["stream_gate"]
    limit = current_app.config.get("OTEL_RUNS_SSE_MAX_STREAMS") \
        or _streams.default_max_streams(request.environ)
    release = gate.acquire(int(limit))
    if release is None:
        raise ApiError(503, f"too many open streams ({int(limit)}, OTEL_RUNS_SSE_MAX_STREAMS)")
    ledger = project_ledger()
    stopping = _streams.server_stopping(request.environ) or (lambda: False)

    def read() -> tuple[Run | None, list[dict[str, Any]]]:
        return ledger.get(run_id), ledger.output(run_id) or []

    body = output_events(get_hub(), run_id, after, read,
                                    float(current_app.config["OTEL_RUNS_SSE_HEARTBEAT"]),
                                    stopping)
    resp = Response(body, mimetype="text/event-stream")
    resp.call_on_close(release)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp
