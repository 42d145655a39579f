"""The ``otel-runs`` command line (also mounted as ``flask runs ...``).

Every expected error is one line on stderr and a non-zero exit status: 1 for a
failure, 2 for a usage error, 130 for Ctrl-C; a closed stdout (``| head``) ends the
command silently.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import sys
from typing import Any

import click

from . import __version__
from ._cli_audit import audit_command
from ._cli_common import (
    _PROJECT_KEY,
    _STATUS_COLORS,
    EXIT_INTERRUPTED,
    CliError,
    _duration,
    _exit_status,
    _ledger,
    _one_line,
    _progress,
    _quiet_stdout,
    _table,
    _when,
    friendly,
    project_option,
    project_root,
)
from ._cli_live import make_serve_app, serve_command, tail_command
from ._cli_logs import logs_command
from ._ids import validate_run_id
from ._model import STATUSES

__all__ = ["main", "make_serve_app", "register", "runs_group"]

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


runs_group.add_command(tail_command)
runs_group.add_command(logs_command)
runs_group.add_command(serve_command)
runs_group.add_command(audit_command)


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
