"""The ``otel-runs`` command line (also mounted as ``flask runs ...``).

Every expected error is one line on stderr and a non-zero exit status: 1 for a
failure, 2 for a usage error, 130 for Ctrl-C; a closed stdout (``| head``) ends the
command silently.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from ._ids import InvalidRunId, validate_run_id
from ._model import STATUSES, Run

__all__ = ["main", "register", "runs_group"]

F = TypeVar("F", bound=Callable[..., Any])
_PROJECT_KEY = "otel_runs.project"


# -- errors and context -----------------------------------------------------------

class CliError(click.ClickException):
    """An expected failure: printed as one ``Error: ...`` line, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def _one_line(text: object) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else str(text)


def friendly(fn: F) -> F:
    """Turn the errors a user can cause (bad id, not a repository, unreachable
    server, ...) into one-line :class:`CliError`s."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .ledger._errors import LedgerError

        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (InvalidRunId, LedgerError) as exc:
            raise CliError(_one_line(exc)) from None
        except BrokenPipeError:
            raise  # stdout was closed (| head): the group ends the command silently
        except OSError as exc:
            raise CliError(_one_line(exc)) from None
    return wrapper  # type: ignore[return-value]


def _set_project(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta[_PROJECT_KEY] = value


project_option = click.option(
    "--project", metavar="PATH", callback=_set_project, expose_value=False, is_eager=True,
    help="Project (git checkout) whose ledger to use; default: OTEL_RUNS_PROJECT_ROOT, "
         "the Flask app's PROJECT_ROOT under 'flask runs', else the current directory.")


def project_root(ctx: click.Context) -> str:
    """The project root: ``--project``, else the Flask app's ``PROJECT_ROOT`` (under
    ``flask runs``), else ``OTEL_RUNS_PROJECT_ROOT``, else the current directory."""
    explicit = ctx.meta.get(_PROJECT_KEY)
    if explicit:
        return str(Path(explicit).expanduser())
    app = _flask_app(ctx, required=False)
    if app is not None and app.config.get("PROJECT_ROOT"):
        return str(app.config["PROJECT_ROOT"])
    from . import _settings

    return _settings.env_str(_settings.OTEL_RUNS_PROJECT_ROOT) or os.getcwd()


def _flask_app(ctx: click.Context, *, required: bool) -> Any:
    """The app of ``flask runs ...`` (None outside the flask command)."""
    try:
        from flask.cli import ScriptInfo
    except ImportError:  # pragma: no cover - flask is a dependency
        return None
    info = ctx.find_object(ScriptInfo)
    if info is None:
        return None
    try:
        return info.load_app()
    except click.ClickException as exc:
        if required:
            raise CliError(_one_line(exc.format_message())) from None
        return None


def _ledger(ctx: click.Context) -> Any:
    try:
        from .ledger import ledger_for
    except ImportError as exc:
        raise CliError(f"the git ledger is not available in this installation: {exc}") from None
    root = project_root(ctx)
    if not Path(root).exists():
        raise CliError(f"project {root} does not exist; pass --project PATH of a git checkout")
    if not Path(root).is_dir():
        raise CliError(f"project {root} is not a directory; pass --project PATH of a git "
                       "checkout")
    ledger = ledger_for(root)
    return ledger


# -- formatting ----------------------------------------------------------------------

_STATUS_COLORS = {"ok": "green", "failed": "red", "running": "yellow", "cancelled": "magenta",
                  "interrupted": "magenta"}


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    return f"{int(ms // 60_000)}m{int(ms % 60_000 / 1000):02d}s"


def _status(status: str) -> str:
    return click.style(f"{status:<11}", fg=_STATUS_COLORS.get(status))


def _table(runs: list[Run]) -> Iterator[str]:
    yield f"{'RUN ID':<30} {'STATUS':<11} {'SUBTYPE':<26} {'STARTED (UTC)':<19} {'TIME':>7}  SUMMARY"
    for run in runs:
        summary = run.summary.replace("\n", " ")
        if len(summary) > 60:
            summary = summary[:59] + "…"
        yield (f"{run.run_id:<30} {_status(run.status)} {run.subtype[:26]:<26} "
               f"{_when(run.started_at):<19} {_duration(run.duration_ms):>7}  {summary}")


def _run_line(event: str, run: dict[str, Any]) -> str:
    status = str(run.get("status", "?"))
    when = _when(run.get("ended_at") or run.get("started_at"))
    dur = _duration(run.get("duration_ms")) if status != "running" else ""
    return (f"{when}  {event:<14} {run.get('run_id', '?'):<30} {_status(status)} "
            f"{str(run.get('subtype', '')):<26} {dur:>7}  {str(run.get('summary', ''))[:80]}")


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _progress(length: int, label: str) -> Any:
    """A progress bar on an interactive stderr; nothing otherwise (clean logs, and
    an error stays one line)."""
    if not sys.stderr.isatty():
        return _NoProgress()
    return click.progressbar(length=length, label=label, file=sys.stderr)


# -- exit statuses -------------------------------------------------------------------

#: Exit status after Ctrl-C (128 + SIGINT, what a shell reports for an interrupted command).
EXIT_INTERRUPTED = 130


def _usage_line(exc: click.UsageError) -> None:
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    click.echo(f"Error: {_one_line(exc.format_message())}{hint}", err=True)


def _quiet_stdout() -> None:
    """After a broken pipe: stdout goes to /dev/null, so that nothing else (not even the
    interpreter's last flush) fails on it."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (a test runner's)
        pass


def _exit_status(call: Callable[[], Any]) -> int:
    """Run ``call`` (a click ``main`` in non-standalone mode) and return its exit status,
    having printed an expected error as one line: 1 failure, 2 usage, 130 Ctrl-C; a
    broken pipe is 1 and silent."""
    try:
        rv = call()
    except click.UsageError as exc:
        _usage_line(exc)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        click.echo("Error: aborted", err=True)
        return 1
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return 1
    return rv if isinstance(rv, int) else 0


class _RunsGroup(click.Group):
    """The ``otel-runs`` group; standalone, its ``main`` exits with :func:`_exit_status`."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        run = functools.partial(super().main, *args, standalone_mode=False, **kwargs)
        if not standalone_mode:
            return run()
        sys.exit(_exit_status(run))


# -- the group -----------------------------------------------------------------------

@click.group("otel-runs", cls=_RunsGroup,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="otel-runs",
                      message="%(prog)s %(version)s")
@project_option
@click.pass_context
def runs_group(ctx: click.Context) -> None:
    """Inspect, follow, share and check the runs of a project's git ledger."""
    project = ctx.meta.get(_PROJECT_KEY)
    if project:  # also the default of commands with their own --project (export-otlp)
        ctx.default_map = {**(ctx.default_map or {}), "export-otlp": {"project": project}}


@runs_group.command("list")
@project_option
@click.option("--type", "run_type", metavar="TYPE", help="Only runs of this type (e.g. deploy).")
@click.option("--subtype", metavar="TYPE:DETAIL", help="Only runs of this subtype (e.g. deploy:k8s).")
@click.option("--status", type=click.Choice(STATUSES), help="Only runs with this status.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of runs.")
@click.pass_context
@friendly
def list_command(ctx: click.Context, run_type: str | None, subtype: str | None,
                 status: str | None, limit: int, as_json: bool) -> None:
    """List the most recent runs, newest first."""
    ledger = _ledger(ctx)
    run_type = _checked_filters(ledger, run_type, subtype)
    if subtype is None:
        runs = ledger.recent(limit=limit, type=run_type, status=status)
    else:
        runs = list(itertools.islice(
            (r for r in ledger.iter_runs(type=run_type)
             if r.subtype == subtype and (status is None or r.status == status)), limit))
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in runs], indent=2))
        return
    if not runs:
        click.echo("no runs" + (" matching the filters" if run_type or status else
                                f" in the ledger of {project_root(ctx)}"))
        return
    for line in _table(runs):
        click.echo(line)


def _checked_filters(ledger: Any, run_type: str | None, subtype: str | None) -> str | None:
    """``--type`` / ``--subtype`` checked as the runs API checks ``type`` (a usage error
    naming the valid types); returns the type to filter on. A type this process's taxonomy
    does not know passes when the ledger holds runs of it (an application registered it)."""
    from ._taxonomy import _DETAIL_RE, RUN_TYPES

    hint = "'--type'"
    if run_type is not None and ":" in run_type:
        raise click.BadParameter(f"{run_type!r} is a subtype; use --subtype {run_type}",
                                 param_hint=hint)
    if subtype is not None:
        hint = "'--subtype'"
        prefix, sep, detail = subtype.partition(":")
        if not sep or not prefix or not _DETAIL_RE.fullmatch(detail):
            raise click.BadParameter(f"{subtype!r} is not TYPE:DETAIL (e.g. deploy:k8s)",
                                     param_hint=hint)
        if run_type is not None and prefix != run_type:
            raise click.BadParameter(f"{subtype!r} is not a subtype of --type {run_type}",
                                     param_hint=hint)
        run_type = prefix
    if run_type is not None and run_type not in RUN_TYPES and not ledger.recent(
            limit=1, type=run_type):
        raise click.BadParameter(f"unknown run type {run_type[:40]!r}; valid: "
                                 f"{', '.join(sorted(RUN_TYPES))}", param_hint=hint)
    return run_type


@runs_group.command("show")
@project_option
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run (with its spans) as JSON.")
@click.pass_context
@friendly
def show_command(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show one run: fields, metadata, events and child spans."""
    run_id = validate_run_id(run_id.strip())
    ledger = _ledger(ctx)
    run = ledger.get(run_id)
    if run is None:
        raise CliError(f"no run {run_id} in the ledger of {project_root(ctx)}")
    spans = ledger.spans(run_id)
    if as_json:
        click.echo(json.dumps({**run.to_dict(), "spans": spans}, indent=2))
        return
    rows = [("run", run.run_id),
            ("status", click.style(run.status, fg=_STATUS_COLORS.get(run.status))),
            ("type", f"{run.type}  ({run.subtype})"), ("summary", run.summary or "-"),
            ("started", _when(run.started_at)), ("ended", _when(run.ended_at)),
            ("duration", _duration(run.duration_ms)), ("service", run.service or "-"),
            ("trace", f"{run.trace_id} / span {run.span_id}"),
            ("parent run", run.parent_run_id or "-")]
    for key, value in rows:
        click.echo(f"{key + ':':<12} {value}")
    if run.metadata:
        click.echo("metadata:")
        for key, value in run.metadata.items():
            click.echo(f"  {key} = {json.dumps(value, ensure_ascii=False)}")
    click.echo(f"events: {len(run.events)}")
    for ev in run.events:
        attrs = ", ".join(f"{k}={v}" for k, v in (ev.get("attributes") or {}).items())
        click.echo(f"  {_when(ev.get('timestamp'))}  {ev.get('name')}"
                   + (f"  ({attrs})" if attrs else ""))
    click.echo(f"child spans: {len(spans)}")
    for span in spans:
        start, end = span.get("start_time_ns"), span.get("end_time_ns")
        dur = _duration((end - start) / 1e6) if start and end else "-"
        click.echo(f"  {span.get('name')}  {span.get('status', '')}  {dur}")


@runs_group.command("tail")
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
    from .live._feed_hub import feed_hub_for

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


@runs_group.command("serve")
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


@runs_group.command("sync")
@project_option
@click.argument("remote", default="origin")
@click.option("--retries", type=click.IntRange(1, 50), default=5, show_default=True,
              help="Attempts when the push is rejected because the remote moved.")
@click.pass_context
@friendly
def sync_command(ctx: click.Context, remote: str, retries: int) -> None:
    """Merge the ledger with REMOTE's (fetch, union, push; never forces)."""
    from .ledger._sync import SYNC_STEPS, check_remote, git_dir_of, sync_ledger

    ledger = _ledger(ctx)
    check_remote(git_dir_of(ledger.project_root), remote)
    ledger.flush()
    with _progress(len(SYNC_STEPS), f"sync with {remote}") as bar:
        result = sync_ledger(ledger.project_root, remote, branch=ledger.branch,
                             tag_prefix=ledger.tag_prefix, max_attempts=retries,
                             on_step=lambda name: bar.update(1))
    click.echo(result.describe())


@runs_group.command("verify")
@project_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@friendly
def verify_command(ctx: click.Context, as_json: bool) -> None:
    """Check the ledger: every run file parses and has its tag, no orphan tags."""
    from .ledger._verify import verify_ledger

    ledger = _ledger(ctx)
    ledger.flush(10.0)  # what cannot be committed now (e.g. the branch is gone) is reported below
    bar_box: list[Any] = []

    def on_total(n: int) -> None:
        bar = _progress(max(n, 1), "verify")
        bar.__enter__()
        bar_box.append(bar)

    try:
        report = verify_ledger(ledger.project_root, branch=ledger.branch,
                               tag_prefix=ledger.tag_prefix, on_total=on_total,
                               on_progress=lambda k: bar_box[0].update(k) if bar_box else None)
    finally:
        for bar in bar_box:
            bar.__exit__(None, None, None)
    if as_json:
        click.echo(json.dumps({"ok": report.ok, "branch": report.branch, "runs": report.runs,
                               "tags": report.tags, "quarantined": report.quarantined,
                               "repairable": report.repairable,
                               "problems": [vars(p) for p in report.problems]}, indent=2))
    else:
        for problem in report.problems[:100]:
            click.echo(problem.describe())
        if len(report.problems) > 100:
            click.echo(f"... and {len(report.problems) - 100} more problems")
        click.echo(f"{report.runs} runs, {report.tags} tags on {report.branch}: "
                   + ("ok" if report.ok else f"{len(report.problems)} problem(s)"))
        if report.quarantined:
            click.echo(f"{report.quarantined} journal record(s) quarantined (they can never be "
                       "committed); see the quarantine folder under .git/otel-runs/")
        if report.repairable:
            click.echo("run `otel-runs repair` to rebuild the branch from the run tags")
    if not report.ok:
        ctx.exit(1)


@runs_group.command("repair")
@project_option
@click.pass_context
@friendly
def repair_command(ctx: click.Context) -> None:
    """Rebuild the ledger branch from the run tags (after it was deleted or moved)."""
    from .ledger._repair import repair_ledger

    ledger = _ledger(ctx)
    result = repair_ledger(ledger.project_root, branch=ledger.branch,
                           tag_prefix=ledger.tag_prefix)
    click.echo(result.describe())
    ledger.flush()


@runs_group.command("audit")
@click.argument("app_path", required=False, metavar="MODULE:APP")
@click.option("--json", "as_json", is_flag=True, help="Print every action route as JSON.")
@click.option("--all", "show_all", is_flag=True, help="Also list the tracked routes.")
@click.pass_context
@friendly
def audit_command(ctx: click.Context, app_path: str | None, as_json: bool,
                  show_all: bool) -> None:
    """List POST/PUT/PATCH/DELETE routes that do not open a run; exit 1 if any.

    MODULE:APP is like flask's --app: 'pkg.web:app', 'pkg.web:create_app()' or a
    module that has an 'app' or 'create_app'. Under 'flask runs audit' it is the
    flask app.
    """
    from .audit import audit_routes

    with _scratch_tempdir(app_path is not None):
        app = _load_app(ctx, app_path)
        routes = audit_routes(app)
    untracked = [r for r in routes if not r.tracked]
    if as_json:
        click.echo(json.dumps({"app": app.import_name, "total": len(routes),
                               "untracked": [r.to_dict() for r in untracked],
                               "tracked": [r.to_dict() for r in routes if r.tracked]}, indent=2))
    else:
        shown = routes if show_all else untracked
        for r in shown:
            mark = click.style("tracked  ", fg="green") if r.tracked else click.style(
                "UNTRACKED", fg="red")
            extra = f"  [{r.subtype}]" if r.tracked else ""
            click.echo(f"{mark} {r.method:<6} {r.rule:<40} {r.view}{extra}")
        click.echo(f"{len(untracked)} of {len(routes)} state-changing routes of "
                   f"{app.import_name} open no run")
    if untracked:
        ctx.exit(1)


@contextlib.contextmanager
def _scratch_tempdir(enabled: bool) -> Iterator[None]:
    """While an app is loaded for the audit, the temporary files and directories it creates
    (the demo's scratch project, say) go into one directory, removed afterwards: the app is
    never served, and the audit leaves nothing behind."""
    if not enabled:
        yield
        return
    import shutil
    import tempfile

    scratch = tempfile.mkdtemp(prefix="otel-runs-audit-")
    saved, tempfile.tempdir = tempfile.tempdir, scratch
    try:
        yield
    finally:
        tempfile.tempdir = saved
        if any(Path(scratch).iterdir()):
            from ._setup import shutdown

            shutdown()  # the app's ledger stops writing before its repository goes
        shutil.rmtree(scratch, ignore_errors=True)


def _load_app(ctx: click.Context, app_path: str | None) -> Any:
    if app_path is None:
        app = _flask_app(ctx, required=True)
        if app is None:
            raise CliError("give the app as MODULE:APP (e.g. 'myproject.web:create_app()')")
        return app
    from flask.cli import ScriptInfo

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return ScriptInfo(app_import_path=app_path, set_debug_flag=False,
                          load_dotenv_defaults=False).load_app()
    except click.ClickException as exc:
        raise CliError(_one_line(exc.format_message())) from None
    except Exception as exc:  # the user's module raised while importing
        raise CliError(f"loading {app_path} failed: {type(exc).__name__}: "
                       f"{_one_line(exc)}") from None


@runs_group.command("demo")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind (keep 127.0.0.1 unless you know why).")
@click.option("--port", type=click.IntRange(0, 65535), default=5050, show_default=True)
@click.option("--dir", "directory", type=click.Path(file_okay=False), metavar="DIR",
              help="Where to create the scratch project (default: a new temp directory).")
@click.option("--delay", type=click.FloatRange(0, 30), default=None,
              help="Seconds a simulated tool takes (default 0.4; 0 for instant).")
@friendly
def demo_command(host: str, port: int, directory: str | None, delay: float | None) -> None:
    """Start the demo control plane: every action of the inventory as a button."""
    try:
        from .demo import DemoError, serve_demo
    except ImportError as exc:
        raise CliError(f"the demo needs the 'demo' extra: pip install 'otel-runs[demo]' ({exc})"
                       ) from None
    try:
        serve_demo(host=host, port=port, directory=directory, delay=delay)
    except DemoError as exc:
        raise CliError(_one_line(exc)) from None


def _mount_optional_commands() -> None:
    try:
        from .backfill import export_otlp_command
    except ImportError:
        return
    runs_group.add_command(export_otlp_command, "export-otlp")


_mount_optional_commands()


def register(app: Any, state: Any) -> None:
    """``RunTracking`` hook: mount these commands as ``flask runs ...``."""
    if "runs" not in app.cli.commands:
        app.cli.add_command(runs_group, "runs")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``otel-runs`` command: exits 0, 1 (an error, printed as one
    line), 2 (a usage error) or 130 (Ctrl-C, at any moment, without a traceback)."""
    code: int | str | None = 1
    try:
        code = _exit_status(functools.partial(runs_group.main, args=argv, prog_name="otel-runs",
                                              standalone_mode=False))
        sys.stdout.flush()
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        code = code or 1
    except SystemExit as exc:  # click's own exit on a broken pipe
        code = exc.code
    try:  # from here on (exit handlers flushing the ledger, ...) Ctrl-C ends at once
        signal.signal(signal.SIGINT, lambda *_: os._exit(EXIT_INTERRUPTED))
    except ValueError:  # not the main thread
        pass
    sys.exit(code)


if __name__ == "__main__":  # python -m otel_runs.cli
    main()
