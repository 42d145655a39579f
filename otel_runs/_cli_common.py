"""What every ``otel-runs`` command shares: one-line errors and exit statuses, the
``--project`` option, the ledger and app lookups, and the output formatting."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import click

from ._ids import InvalidRunId
from ._model import Run

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
