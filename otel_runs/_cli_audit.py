"""``otel-runs audit [MODULE:APP]``: the state-changing routes of an app that open no run.

The app is loaded as flask's ``--app`` loads it (or is the app of ``flask runs
audit``); while it loads, its temporary files go into one directory, removed
afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ._cli_common import CliError, _flask_app, _one_line, friendly

__all__ = ["audit_command"]


@click.command("audit")
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
