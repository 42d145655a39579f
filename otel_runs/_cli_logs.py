"""``otel-runs logs RUN_ID [--follow]``: what a run printed, from the ledger (a running
run's too, from any process of the host)."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

import click

from ._cli_common import CliError, _ledger, friendly, project_option, project_root
from ._ids import validate_run_id

__all__ = ["logs_command"]

_SGR = re.compile(r"\x1b\[[0-9;]*m")


def _shown(line: dict[str, Any], color: bool, as_json: bool) -> str:
    if as_json:
        return json.dumps(line, ensure_ascii=False)
    text = line["text"] if color else _SGR.sub("", line["text"])
    stream = line.get("stream")
    if stream == "log":
        prefix = f"{line.get('level', '')} {line.get('logger', '')}: "
        text = prefix + text
    elif stream == "meta":
        text = click.style(text, dim=True) if color else text
    elif stream == "err" and color:
        text = click.style("err ", fg="red") + text
    return text


@click.command("logs")
@click.argument("run_id")
@project_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends.")
@click.option("--interval", type=click.FloatRange(0.05, 60), default=0.5, show_default=True,
              help="Seconds between reads with --follow.")
@click.option("--timeout", type=click.FloatRange(0), help="With --follow: stop after this many "
              "seconds.")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto",
              show_default=True, help="Keep the output's ANSI colours (auto: on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
@friendly
def logs_command(ctx: click.Context, run_id: str, follow: bool, interval: float,
                 timeout: float | None, color: str, as_json: bool) -> None:
    """Print a run's output (what it printed and logged)."""
    run_id = validate_run_id(run_id.strip())
    ledger = _ledger(ctx)
    run = ledger.get(run_id)
    if run is None:
        raise CliError(f"no run {run_id} in the ledger of {project_root(ctx)}")
    colored = color == "always" or (color == "auto" and sys.stdout.isatty())
    deadline = None if timeout is None else time.monotonic() + timeout
    sent = -1
    while True:
        lines = ledger.output(run_id) or []
        for line in lines:
            if line["n"] > sent:
                click.echo(_shown(line, colored, as_json))
                sent = line["n"]
        if not follow or run is None or run.status != "running":
            return
        if deadline is not None and time.monotonic() >= deadline:
            return
        time.sleep(interval if deadline is None else
                   max(0.0, min(interval, deadline - time.monotonic())))
        run = ledger.get(run_id)
        if run is not None and run.status != "running":
            follow = False  # one last read: the end record holds every line
