"""The runs API, the live event stream and the runs page: a blueprint ``RunTracking`` registers.

- ``GET /api/events``: ``text/event-stream`` of the app's hub (``run:started``,
  ``run:completed``, anything the host app publishes); resumes after
  ``Last-Event-ID`` (header, or ``?last_event_id=`` for a manual reconnect).
- ``GET /api/runs/recent?limit=50&type=&status=&subtype=&since=&until=&before=``: newest
  first, ``limit`` <= 500, at most 4 MiB of runs (then ``"truncated": true``);
  ``before=<run_id>`` pages to older runs (see :func:`recent_runs` for the filters).
- ``GET /api/runs/counts?type=&subtype=&since=&until=``: runs per status of that filter.
- ``GET /api/runs/<run_id>``: the run with its events and child spans.
- ``GET /api/runs/search?q=&limit=10``: ``@run:`` autocomplete items.
- ``GET /runs``: the live runs page (its script and style: ``/runs/assets/<name>``);
  ``GET /runs/<run_id>``: the page of one run; ``GET /favicon.ico`` (:mod:`otel_runs._page`).

Runs are read through the ledger API only. Every error is JSON, also for unknown
``/api/...`` paths. The optional ``authorize(request) -> bool`` of ``RunTracking``
guards all of it (403); without it only loopback clients with a local ``Host`` are
answered, unless ``OTEL_RUNS_API_PUBLIC=1``. Every response carries a strict CSP
and the other headers of :func:`otel_runs.web_security.set_security_headers`.

App config (``app.config``, defaults set at registration):
``OTEL_RUNS_FRAME_ANCESTORS`` (``'none'``: who may frame the page),
``OTEL_RUNS_API_PUBLIC`` (off), ``OTEL_RUNS_SSE_HEARTBEAT`` (15.0 s between heartbeat comments),
``OTEL_RUNS_SSE_BUFFER`` (1000 events kept for replay),
``OTEL_RUNS_SSE_CLIENT_QUEUE`` (256 events a client may lag before it is dropped...),
``OTEL_RUNS_SSE_SLOW_AFTER`` (...once its stream has not come back for 2.0 s),
``OTEL_RUNS_SSE_RETRY_MS`` (2000, the browser's reconnect delay),
``OTEL_RUNS_SSE_LINGER`` (0.05 s: the least time a stream waits after a write, so
the events of a burst are sent together), ``OTEL_RUNS_SSE_WAKEUPS`` (800: how often
per second all streams of the host together may write; with many streams each waits
``streams / wakeups`` s, at most 1 s — lower it for less CPU, raise it for less latency),
``OTEL_RUNS_SSE_MAX_STREAMS`` (None: from the server, see :mod:`otel_runs._streams`),
``OTEL_RUNS_SSE_RETRY_AFTER`` (5 s, sent with the 503), ``OTEL_RUNS_SSE_SEND_TIMEOUT``
(2.0 s a write may block before the stream ends).
"""

from __future__ import annotations

import json
import logging
import weakref
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from . import _page, web_security
from . import api_output as _api_output  # noqa: F401 - registers the output routes
from ._api_base import (
    ApiError,
    blueprint,
    choice_arg,
    error_response,
    int_arg,
    known_run,
    project_ledger,
    range_args,
    text_arg,
    trace_url_template,
    with_trace_url,
)
from ._ids import InvalidRunId, validate_run_id
from ._model import STATUSES, Run
from ._taxonomy import RUN_TYPES
from .exporters.sse import SSESpanProcessor
from .live import Hub, _streams, get_hub, hub_from_settings

__all__ = ["MAX_RECENT_LIMIT", "MAX_SEARCH_LIMIT", "blueprint", "register", "trace_url_template"]

logger = logging.getLogger("otel_runs.api")

#: Largest ``limit`` accepted by ``/api/runs/recent``.
MAX_RECENT_LIMIT = 500
#: Most bytes of runs in one ``/api/runs/recent`` answer (one run is at most 256 KiB); past
#: it the list stops early and says ``"truncated": true``.
MAX_RECENT_BYTES = 4 << 20
#: Longest ``subtype`` filter accepted (the ledger's index lines keep 200 characters).
MAX_SUBTYPE_FILTER = 200
#: Largest ``limit`` accepted by ``/api/runs/search``.
MAX_SEARCH_LIMIT = 50
#: Most slices ``/api/runs/counts?buckets=`` draws the range in.
MAX_COUNT_BUCKETS = 200
_MAX_QUERY = 200
_STATIC = Path(__file__).with_name("static")
#: The page's own files, served by ``/runs/assets/<name>``.
_ASSETS = _page.ASSETS

_page.add_routes(blueprint)  # /runs/<run_id>, /favicon.ico

# -- REST -------------------------------------------------------------------------

@blueprint.get("/api/runs/recent")
def recent_runs() -> Response:
    """``{"runs": [Run...], "limit": n, "truncated": bool}``, newest first.

    Filters, all combinable: ``type``, ``status``, ``subtype`` (runs whose subtype
    contains this text, case-insensitive), ``since`` / ``until`` (runs started at or
    after ``since`` and before ``until``: each either ISO 8601 with a time zone, e.g.
    ``2026-12-02T10:15:00Z`` or ``...+01:00``, or ASCII digits only, read as
    milliseconds since the epoch; compared to the millisecond). ``before=<run_id>``:
    the page of runs older than that one (a cursor; keep the same filters). A bad
    value of any of them is a 400.
    """
    limit = int_arg("limit", 50, MAX_RECENT_LIMIT)
    run_type = choice_arg("type", RUN_TYPES)
    status = choice_arg("status", STATUSES)
    subtype = text_arg("subtype", MAX_SUBTYPE_FILTER)
    since, until = range_args()
    before = request.args.get("before", "").strip() or None
    if before is not None:
        try:
            validate_run_id(before)
        except InvalidRunId as exc:
            raise ApiError(400, f"before: {exc}") from None
    narrowed = {k: v for k, v in (("before", before), ("subtype", subtype), ("since", since),
                                  ("until", until)) if v is not None}
    runs = project_ledger().recent(limit=limit, type=run_type, status=status, **narrowed)
    out: list[dict[str, Any]] = []
    size = 0
    for run in runs:  # the body is bounded in bytes too: a page of big runs stops early
        data = with_trace_url(run)
        size += len(json.dumps(data, separators=(",", ":"), default=str))
        if out and size > MAX_RECENT_BYTES:
            break
        out.append(data)
    return jsonify({"runs": out, "limit": limit, "truncated": len(out) < len(runs)})


@blueprint.get("/api/runs/counts")
def run_counts() -> Response:
    """``{"counts": {status: n, ...}, "total": n, "exact": bool}``: how many runs of the
    filter (``type``, ``subtype``, ``since``, ``until`` as ``/api/runs/recent`` takes
    them) there are per status, committed or not (running runs too), each run once.
    Every status is listed (0 when none). ``exact`` is false when there were more runs
    not committed yet than one count reads (``MAX_JOURNAL_COUNT``): then the counts are
    lower bounds. Committed runs are counted from an index kept up to date incrementally,
    never by reading them. ``buckets=N`` (1..200) adds ``"histogram": {"start_ms",
    "step_ms", "buckets": [{status: n}, ...]}``: the same runs per status in N equal
    slices of the range (from ``since``, or the first such run, to ``until``, or the
    last one)."""
    run_type = choice_arg("type", RUN_TYPES)
    subtype = text_arg("subtype", MAX_SUBTYPE_FILTER)
    since, until = range_args()
    buckets = int_arg("buckets", 0, MAX_COUNT_BUCKETS)
    got = project_ledger().counts(type=run_type, subtype=subtype, since=since, until=until,
                                  buckets=buckets)
    counts = dict.fromkeys(STATUSES, 0)
    counts.update(got.counts)
    body: dict[str, Any] = {"counts": counts, "total": got.total, "exact": got.exact}
    if got.histogram is not None:
        body["histogram"] = {"start_ms": got.start_ms, "step_ms": got.step_ms,
                             "buckets": got.histogram}
    return jsonify(body)


@blueprint.get("/api/runs/search")
def search_runs() -> Response:
    """``{"items": [{run_id, label, status, started_at}...]}`` for ``@run:`` autocomplete."""
    query = request.args.get("q", "").strip()
    if len(query) > _MAX_QUERY:
        raise ApiError(400, f"q is longer than {_MAX_QUERY} characters")
    limit = int_arg("limit", 10, MAX_SEARCH_LIMIT)
    ledger = project_ledger()
    runs = ledger.search(query, limit=limit) if query else ledger.recent(limit=limit)
    return jsonify({"items": [_search_item(r) for r in runs], "q": query})


def _search_item(run: Run) -> dict[str, Any]:
    label = run.subtype if not run.summary else f"{run.subtype}: {run.summary}"
    if len(label) > 100:
        label = label[:99] + "\u2026"
    return {"run_id": run.run_id, "label": label, "status": run.status,
            "started_at": run.started_at}


@blueprint.get("/api/runs/<run_id>/<path:more>")
def _unknown_api(run_id: str, more: str) -> Response:
    raise ApiError(404, f"no such API endpoint {request.path[:100]!r}")


@blueprint.get("/api/runs/<run_id>")
def get_run(run_id: str) -> Response:
    """``{"run": Run, "spans": [child span...]}``; 400 malformed id, 404 unknown."""
    ledger, run = known_run(run_id)
    return jsonify({"run": with_trace_url(run), "spans": ledger.spans(run_id)})


# -- the event stream -------------------------------------------------------------

@blueprint.get("/api/events")
def events() -> Response:
    """The live feed (``text/event-stream``); 503 + ``Retry-After`` beyond
    ``OTEL_RUNS_SSE_MAX_STREAMS`` open streams, 501 on a gunicorn sync worker."""
    cfg = current_app.config
    refused = _streams.sync_worker_error(request.environ)
    if refused is not None:
        raise ApiError(501, refused)
    limit = cfg.get("OTEL_RUNS_SSE_MAX_STREAMS") or _streams.default_max_streams(request.environ)
    gate: _streams.StreamGate = current_app.extensions["otel_runs"].extra["stream_gate"]
    release = gate.acquire(int(limit))
    if release is None:
        resp = error_response(503, f"too many open streams ({int(limit)}, OTEL_RUNS_SSE_MAX_STREAMS); "
                           "retry later")
        resp.headers["Retry-After"] = str(int(cfg["OTEL_RUNS_SSE_RETRY_AFTER"]))
        return resp
    hub = get_hub()
    last_id = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or None
    try:
        sub = hub.subscribe(last_id)
    except Exception as exc:
        release()
        logger.warning("otel-runs: cannot subscribe to the event hub: %s", exc)
        raise ApiError(503, f"the event hub is not available: {exc}") from None
    sock, restore = _streams.stream_socket(request.environ,
                                           float(cfg["OTEL_RUNS_SSE_SEND_TIMEOUT"]))
    body = _streams.event_stream(
        hub, sub, float(cfg["OTEL_RUNS_SSE_HEARTBEAT"]), int(cfg["OTEL_RUNS_SSE_RETRY_MS"]),
        float(cfg["OTEL_RUNS_SSE_LINGER"]), float(cfg["OTEL_RUNS_SSE_WAKEUPS"]), sock, release,
        _streams.server_stopping(request.environ))
    resp = Response(body, mimetype="text/event-stream")
    resp.call_on_close(release)  # also when the body never started
    resp.call_on_close(sub.close)
    resp.call_on_close(restore)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


STREAM_WAKEUPS_PER_SECOND = _streams.STREAM_WAKEUPS_PER_SECOND


# -- the page -----------------------------------------------------------------------

@blueprint.get("/runs")
def runs_page() -> Response:
    """The live runs page: HTML, its config as a JSON data block (never executed),
    script and style from ``/runs/assets/`` (no inline script: the CSP forbids it)."""
    html = (_STATIC / "runs.html").read_text(encoding="utf-8")
    config = {"traceUrl": trace_url_template(), "api": request.script_root + "/api",
              "types": sorted(RUN_TYPES), "statuses": list(STATUSES)}
    html = html.replace("__OTEL_RUNS_ASSETS__", request.script_root + "/runs/assets")
    html = html.replace("__OTEL_RUNS_CONFIG__", json.dumps(config).replace("<", "\\u003c"))
    resp = Response(html, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-store"
    return resp


@blueprint.get("/runs/assets/<name>")
def runs_asset(name: str) -> Response:
    """The page's script and style."""
    mimetype = _ASSETS.get(name)
    if mimetype is None:
        raise ApiError(404, f"no such asset {name[:60]!r}")
    resp = Response((_STATIC / name).read_bytes(), mimetype=mimetype)
    resp.headers["Cache-Control"] = "no-cache"
    return resp


# -- wiring ---------------------------------------------------------------------------

def register(app: Flask, state: Any) -> None:
    """``RunTracking`` hook: the hub, the SSE processor for this app's runs, the blueprint.

    Does nothing when ``app.config["OTEL_RUNS_API"]`` is false.
    """
    if not app.config.get("OTEL_RUNS_API", True):
        return
    app.config.setdefault("OTEL_RUNS_SSE_HEARTBEAT", 15.0)
    app.config.setdefault("OTEL_RUNS_SSE_BUFFER", 1000)
    app.config.setdefault("OTEL_RUNS_SSE_CLIENT_QUEUE", 256)
    app.config.setdefault("OTEL_RUNS_SSE_SLOW_AFTER", 2.0)
    app.config.setdefault("OTEL_RUNS_SSE_RETRY_MS", 2000)
    app.config.setdefault("OTEL_RUNS_SSE_LINGER", 0.05)
    app.config.setdefault("OTEL_RUNS_SSE_WAKEUPS", STREAM_WAKEUPS_PER_SECOND)
    app.config.setdefault("OTEL_RUNS_SSE_MAX_STREAMS", None)  # None: from the server's threads
    app.config.setdefault("OTEL_RUNS_SSE_RETRY_AFTER", 5)
    app.config.setdefault("OTEL_RUNS_SSE_SEND_TIMEOUT", _streams.DEFAULT_SEND_TIMEOUT)
    state.extra.setdefault("stream_gate", _streams.StreamGate())
    hub: Hub | None = state.extra.get("hub")
    if hub is None:
        # Redis (OTEL_RUNS_REDIS_URL), else the host-wide feed file of the project's
        # ledger, else (no git repository, feed not writable) in-process.
        hub = hub_from_settings(buffer_size=int(app.config["OTEL_RUNS_SSE_BUFFER"]),
                                client_queue=int(app.config["OTEL_RUNS_SSE_CLIENT_QUEUE"]),
                                slow_after=float(app.config["OTEL_RUNS_SSE_SLOW_AFTER"]),
                                project_root=state.project_root)
        state.extra["hub"] = hub
    if "sse_processor" not in state.extra:
        from . import _setup

        proc = _feed_processor(hub, state.project_root)
        # For the app's life: otel_runs.shutdown() and configure() again keep its feed.
        _setup.add_app_processor(proc, state.project_root,
                                 ledger=state.ext.configure_kwargs.get("ledger"))
        state.extra["sse_processor"] = proc
    app.config.setdefault(web_security.FRAME_ANCESTORS_CONFIG, "'none'")
    web_security.frame_ancestors(app)  # a bad value fails now, not at the first request
    if "otel_runs" not in app.blueprints:
        app.register_blueprint(blueprint)
        for code in (404, 405):
            _json_routing_errors(app, code)
        _log_access(app, state)


#: One SSE processor per feed file and project in a process: every app of a process on
#: the same feed shares it, so each run is appended to the feed once, not once per app.
_feed_processors: weakref.WeakValueDictionary[tuple[str, str], SSESpanProcessor] = (
    weakref.WeakValueDictionary())


def _feed_processor(hub: Hub, project_root: str) -> SSESpanProcessor:
    """The SSE processor publishing ``project_root``'s runs onto ``hub``."""
    feed_dir = getattr(hub, "feed_dir", None)
    if feed_dir is None:  # an in-process or Redis hub: one processor per app, as ever
        return SSESpanProcessor(hub, project_root=project_root)
    key = (str(feed_dir), str(Path(project_root).expanduser().resolve()))
    proc = _feed_processors.get(key)
    if proc is None:
        proc = _feed_processors[key] = SSESpanProcessor(hub, project_root=project_root)
    return proc


def _log_access(app: Flask, state: Any) -> None:
    """One line at start-up: who the API, stream and page answer."""
    if getattr(state.ext, "authorize", None) is not None:
        logger.info("otel-runs: %s: /api/runs, /api/events and /runs are guarded by "
                    "authorize=", app.import_name)
    elif web_security.api_public(app):
        logger.warning("otel-runs: %s: /api/runs, /api/events and /runs answer every client "
                       "(OTEL_RUNS_API_PUBLIC=1): keep them behind your own authentication",
                       app.import_name)
    else:
        logger.info("otel-runs: %s: /api/runs, /api/events and /runs answer loopback clients "
                    "only (RunTracking(authorize=...) or OTEL_RUNS_API_PUBLIC=1 to change)",
                    app.import_name)


def _is_own_path(path: str) -> bool:
    """Paths of otel-runs' API: always answered with JSON errors."""
    return (path in ("/api/runs", "/api/events") or path.startswith("/api/runs/")
            or path.startswith("/api/events/"))


def _is_api_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def _json_routing_errors(app: Flask, code: int) -> None:
    """Answer routing errors (404/405, which never reach blueprint handlers) as JSON
    on otel-runs' paths, and on any other ``/api/...`` path unless the app has its
    own handler for that code; elsewhere the app's handler, else Flask's default."""
    handlers = app.error_handler_spec.get(None, {}).get(code, {})
    previous = next(iter(handlers.values()), None)

    def handle(exc: HTTPException) -> Any:
        path = request.path
        if _is_own_path(path) or (previous is None and _is_api_path(path)):
            return error_response(exc.code or code, exc.description or exc.name)
        return previous(exc) if previous is not None else exc

    app.register_error_handler(code, handle)
