"""The ``otel-runs`` commands that follow runs live: ``tail`` (a server's event stream,
the host's feed file, or the ledger) and ``serve`` (the runs page and API for a project)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from ._cli_common import (
    CliError,
    _ledger,
    _run_line,
    friendly,
    project_option,
    project_root,
)
from ._ids import InvalidRunId, validate_run_id


@click.command("tail")
@project_option
@click.option("--url", metavar="URL",
              help="Follow a server's live event stream (URL of the app, of its /runs page, or "
                   "of /api/events); without it: the host's live feed of the project's ledger.")
@click.option("--interval", type=click.FloatRange(0.05, 60), default=1.0, show_default=True,
              help="Seconds between ledger polls (without --url).")
@click.option("--count", type=click.IntRange(1),
              help="Exit after this many runs (completed runs).")
@click.option("--timeout", type=click.FloatRange(0), help="Exit after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--after", metavar="RUN_ID",
              help="From the ledger: follow runs newer than this one (default: runs recorded "
                   "from now on).")
@click.pass_context
@friendly
def tail_command(ctx: click.Context, url: str | None, interval: float, count: int | None,
                 timeout: float | None, as_json: bool, after: str | None) -> None:
    """Follow new runs live: from a server's event stream (--url), else from the host's
    live feed of the project (the runs of its app processes, as they start and end) and
    the ledger (--after: the ledger only)."""
    if after is not None:
        if url:
            raise CliError("--after follows the ledger; it cannot be combined with --url")
        try:
            validate_run_id(after)
        except InvalidRunId as exc:
            raise CliError(str(exc)) from None
    deadline = None if timeout is None else time.monotonic() + timeout
    # Connect / subscribe / take the ledger's baseline first, then say so: nothing
    # after the message is missed.
    if url:
        source, where = _tail_events(url, deadline), _events_url(url)
    elif after is not None:
        source = _tail_ledger(ctx, interval, deadline, after)
        where = f"the ledger of {project_root(ctx)}"
    else:
        source, where = _tail_live(ctx, interval, deadline)
    click.echo(f"following runs from {where} (Ctrl-C to stop)", err=True)
    shown: dict[tuple[str, str], None] = {}  # (event, run id): one line each, newest 10,000
    done = 0
    try:
        for event, run in source:
            key = (event, str(run.get("run_id")))
            if key in shown or (event == "run:started" and ("run:completed", key[1]) in shown):
                continue  # seen from the ledger and the feed, or published by two apps
            shown[key] = None
            if len(shown) > 10_000:
                del shown[next(iter(shown))]
            if as_json:
                click.echo(json.dumps({"event": event, "run": run}))
            else:
                click.echo(_run_line(event, run))
            if event == "run:completed":  # --count counts runs: their completions
                done += 1
                if count is not None and done >= count:
                    return
    except KeyboardInterrupt:
        return


def _tail_ledger(ctx: click.Context, interval: float, deadline: float | None,
                 after: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """New runs of the ledger, polled: those newer than ``after`` or, without it,
    those not there when tailing started (the baseline)."""
    news = _ledger_news(ctx, after)

    def poll() -> Iterator[tuple[str, dict[str, Any]]]:
        while deadline is None or time.monotonic() < deadline:
            yield from news()
            pause = interval if deadline is None else min(interval, deadline - time.monotonic())
            if pause > 0:
                time.sleep(pause)

    return poll()


def _ledger_news(ctx: click.Context,
                 after: str | None) -> Callable[[], list[tuple[str, dict[str, Any]]]]:
    """A function returning the ledger's runs not seen before: newer than ``after`` or,
    without it, not there when this was called (the baseline)."""
    ledger = _ledger(ctx)
    #: run id -> whether it was seen running (the ledger lists running runs too: one
    #: seen running is said again when it ends).
    known: dict[str, bool] = {} if after is not None else {
        r.run_id: r.status == "running" for r in ledger.recent(limit=500)}

    def news() -> list[tuple[str, dict[str, Any]]]:
        listing = ledger.recent(limit=500)
        fresh = [r for r in listing
                 if (after is None or r.run_id > after)
                 and (r.run_id not in known or (known[r.run_id] and r.status != "running"))]
        out = []
        for run in sorted(fresh, key=lambda r: r.run_id):
            running = run.status == "running"
            known[run.run_id] = running
            out.append(("run:started" if running else "run:completed", run.to_dict()))
        if len(known) > 2_000:  # bounded: a finished run out of the listing stays out
            listed = {r.run_id for r in listing}
            for rid in [k for k, running in known.items() if not running and k not in listed]:
                del known[rid]
        return out

    return news


def _tail_live(ctx: click.Context, interval: float, deadline: float | None,
               ) -> tuple[Iterator[tuple[str, dict[str, Any]]], str]:
    """Runs as the app's processes publish them (the host's live feed file of the
    project's ledger: ``otel-runs serve`` and gunicorn workers publish there), and, from
    the ledger polled every ``interval`` s, those of processes without a live feed
    (scripts); subscribed before returning. ``(events, where)``."""
    from .live import SubscriberDroppedError
    from .live._feed_registry import feed_hub_for

    root = project_root(ctx)
    news = _ledger_news(ctx, None)
    hub = feed_hub_for(root, writable=False)
    if hub is None:
        return _tail_ledger(ctx, interval, deadline), f"the ledger of {root}"
    first = hub.subscribe()

    def read() -> Iterator[tuple[str, dict[str, Any]]]:
        sub, last_id = first, None
        next_poll = time.monotonic() + interval
        try:
            while deadline is None or time.monotonic() < deadline:
                end = next_poll if deadline is None else min(next_poll, deadline)
                try:
                    batch = sub.next_batch(max(0.0, end - time.monotonic()))
                except SubscriberDroppedError:  # fell behind: resume after the last one seen
                    sub.close()
                    sub = hub.subscribe(last_id)
                    continue
                for event in batch:
                    last_id = event.id
                    if event.type in ("run:started", "run:completed"):
                        data = event.json()
                        if isinstance(data, dict):
                            yield event.type, data
                if time.monotonic() >= next_poll:
                    yield from news()
                    next_poll = time.monotonic() + interval
        finally:
            sub.close()

    return read(), f"the live feed and the ledger of {root}"


def _events_url(url: str) -> str:
    """The event stream of ``url``: the app's base URL, its ``/runs`` page, or the
    ``/api/events`` stream itself (query and fragment dropped)."""
    from urllib.parse import urlsplit, urlunsplit

    if not url.startswith(("http://", "https://")):
        raise CliError(f"--url must be an http(s) URL, got {url!r}")
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith("/runs"):
        path = path[:-len("/runs")]
    if not path.endswith("/api/events"):
        path += "/api/events"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _open_stream(events_url: str, last_id: str | None, deadline: float | None) -> Any:
    headers = {"Accept": "text/event-stream"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    req = urllib.request.Request(events_url, headers=headers)
    # Longer than the server's 15 s heartbeat; an idle read past it reconnects.
    wait = 20.0 if deadline is None else max(0.1, min(20.0, deadline - time.monotonic()))
    try:
        return urllib.request.urlopen(req, timeout=wait)  # noqa: S310 - user-given URL
    except urllib.error.HTTPError as exc:
        raise CliError(f"{events_url} answered HTTP {exc.code}") from None


def _tail_events(url: str, deadline: float | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run events from a server-sent event stream (connected before returning);
    reconnects with Last-Event-ID when the connection drops."""
    events_url = _events_url(url)
    try:
        first = _open_stream(events_url, None, deadline)
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach {events_url}: {getattr(exc, 'reason', exc)}") from None

    def read() -> Iterator[tuple[str, dict[str, Any]]]:
        resp: Any = first
        last_id: str | None = None
        failures = 0
        while deadline is None or time.monotonic() < deadline:
            if resp is None:
                try:
                    resp = _open_stream(events_url, last_id, deadline)
                except (urllib.error.URLError, OSError) as exc:
                    failures += 1
                    if failures > 5:
                        raise CliError(f"lost {events_url}: {getattr(exc, 'reason', exc)}"
                                       ) from None
                    time.sleep(min(2.0, 0.2 * failures))
                    continue
                failures = 0
            try:
                for event_id, event, data in _sse_records(resp, deadline):
                    if event_id:
                        last_id = event_id
                    if event in ("run:started", "run:completed") and isinstance(data, dict):
                        yield event, data
            except (TimeoutError, OSError):
                pass  # idle past our read timeout, or the connection dropped: reconnect
            finally:
                resp.close()
                resp = None

    return read()


def _sse_records(resp: Any, deadline: float | None) -> Iterator[tuple[str | None, str, Any]]:
    """(id, event, decoded data) for each event of a text/event-stream body."""
    event_id: str | None = None
    event = "message"
    data: list[str] = []
    while deadline is None or time.monotonic() < deadline:
        raw = resp.readline()
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                try:
                    decoded: Any = json.loads("\n".join(data))
                except ValueError:
                    decoded = "\n".join(data)
                yield event_id, event, decoded
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


@click.command("serve")
@project_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=5055, show_default=True)
@click.pass_context
@friendly
def serve_command(ctx: click.Context, host: str, port: int) -> None:
    """Serve the runs API and the live runs page over a project's ledger."""
    root = project_root(ctx)
    _ledger(ctx)  # a clear error now if the root is not a git repository
    app = make_serve_app(root)
    click.echo(f"otel-runs: serving the ledger of {Path(root).resolve()} "
               f"at http://{host}:{port}/runs", err=True)
    from werkzeug.serving import run_simple  # not app.run: a no-op under `flask run`

    run_simple(host, port, app, threaded=True, use_reloader=False)


def make_serve_app(root: str) -> Any:
    """A minimal Flask app with the runs API and live page over ``root``'s ledger."""
    from flask import Flask, redirect

    from .flask import RunTracking

    app = Flask("otel_runs.serve")
    app.config["PROJECT_ROOT"] = root
    ext = RunTracking(app)
    _ensure_api(app, ext)

    @app.get("/")
    def home() -> Any:
        return redirect("/runs")

    return app


def _ensure_api(app: Any, ext: Any) -> None:
    """Register the runs API blueprint if ``RunTracking`` did not (yet)."""
    if "otel_runs" in app.blueprints:
        return
    try:
        from . import api
    except ImportError as exc:
        raise CliError(f"the runs API is not available in this installation: {exc}") from None
    api.register(app, app.extensions["otel_runs"])
