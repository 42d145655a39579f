"""Replay runs from the ledger to an OTLP endpoint, with their original ids and times.

A freshly started Jaeger or Tempo then shows the history. Each run becomes its run
span (trace id, span id, start/end, ``run.*`` attributes, events, status) and each
child span stored with it is sent as it was recorded (trace id, span id, parent span
id, kind, timestamps to the nanosecond, attributes, events, status). Each run's output
lines become OTLP log records in the run span's trace, as they are exported live
(``exporters.otlp_logs``; not with ``OTEL_LOGS_EXPORTER=none``). Re-running sends the
very same spans again: backends key spans by (trace id, span id).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from . import _settings
from ._backfill_spans import Resources, child_span, ns_from_iso, run_span
from ._model import Run
from .exporters._scrubbing import ScrubbingSpanExporter
from .exporters.otlp import (
    capture_export_logs,
    exporter_endpoint,
    otlp_exporter,
    otlp_protocol,
    otlp_requested,
)

__all__ = ["BackfillError", "NoEndpointConfiguredError", "check_endpoint", "export_otlp_command",
           "export_runs_to_otlp"]

#: Spans handed to the exporter per request.
BATCH_SPANS = 512
#: Seconds the up-front connection to the endpoint may take.
CONNECT_TIMEOUT_S = 5.0
#: Longest reason quoted from the exporter's messages when an export fails.
MAX_REASON_CHARS = 200


class BackfillError(RuntimeError):
    """The replay could not be done; the message is one line saying why."""


class NoEndpointConfiguredError(BackfillError):
    """Neither an endpoint argument nor ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``."""

    def __init__(self) -> None:
        super().__init__(
            "no OTLP endpoint configured: set OTEL_EXPORTER_OTLP_ENDPOINT "
            "(e.g. http://localhost:4318) or pass --endpoint")


def _configured_endpoint(endpoint: str | None) -> str:
    """The endpoint the exporter will use: ``endpoint``, else the standard variables."""
    from opentelemetry.sdk.environment_variables import (
        OTEL_EXPORTER_OTLP_ENDPOINT,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    )

    return (endpoint or _settings.env_str(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
            or _settings.env_str(OTEL_EXPORTER_OTLP_ENDPOINT) or "")


def check_endpoint(endpoint: str | None = None, *, connect: bool = True) -> str:
    """Check the OTLP endpoint (``endpoint``, else ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``)
    before anything is read or sent: an http(s) URL with a host (gRPC also takes
    ``host:port``) and, with ``connect``, a TCP connection to it. Returns the URL;
    raises :class:`BackfillError` with a one-line reason."""
    url = _configured_endpoint(endpoint)
    grpc = otlp_protocol() == "grpc"
    parsed = urlparse(url if "://" in url or not grpc else f"http://{url}")
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if parsed.scheme not in ("http", "https") or not parsed.hostname or port == -1:
        raise BackfillError(f"the OTLP endpoint {url!r} is not an http(s) URL with a host "
                            "(e.g. http://localhost:4318)")
    if connect:
        where = "" if port else " (port {})"
        port = port or (443 if parsed.scheme == "https" else 4317 if grpc else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise BackfillError(f"cannot reach the OTLP endpoint {url}{where.format(port)}: "
                                f"{reason}") from None
    return url


def _reason(messages: list[str]) -> str:
    """The gist of the exporter's log messages about a failed export, in one short line."""
    for message in messages:
        found = re.search(r"\[Errno -?\d+\] [^\"'()]+|Failed to connect to remote host: [^/]+",
                          message)
        if found:
            return found.group(0).strip()
    text = " ".join((messages[-1] if messages else "export failed").split())
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 1] + "…"


def _open_ledger(ledger: Any) -> Any:
    if isinstance(ledger, (str, os.PathLike)):
        from .ledger import ledger_for

        return ledger_for(ledger)
    return ledger


def _batches(spans: Iterable[tuple[int, ReadableSpan]], size: int
             ) -> Iterator[tuple[int, list[ReadableSpan]]]:
    """Chunks of spans; each with the number of runs whose spans are all sent after it."""
    chunk: list[ReadableSpan] = []
    runs_done = 0
    for runs_before, span in spans:
        if len(chunk) >= size:
            yield runs_done, chunk
            chunk = []
        runs_done = runs_before
        chunk.append(span)
    if chunk:
        yield runs_done, chunk


def _export_output(led: Any, runs: list[Run], resources: Resources, endpoint: str | None) -> int:
    """Send the runs' output lines (``Ledger.output``) as log records; how many were sent.
    Raises :class:`BackfillError` when the endpoint rejects them."""
    try:
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        from .exporters.otlp_logs import logs_requested, otlp_log_exporter, readable_records
    except ImportError:  # an OpenTelemetry SDK older than the logs API used: spans only
        return 0
    from .redaction import scrub_text

    read = getattr(led, "output", None)
    if read is None or not logs_requested(endpoint):
        return 0

    exporter = otlp_log_exporter(endpoint)
    where = str(getattr(exporter, "_endpoint", "") or type(exporter).__name__)
    sent = 0
    try:
        for run in runs:
            lines = [{**line, "text": scrub_text(str(line.get("text", "")))}
                     for line in read(run.run_id) or ()]
            records = readable_records(lines, run_id=run.run_id,
                                       start_ns=ns_from_iso(run.started_at),
                                       trace_id=int(run.trace_id, 16),
                                       span_id=int(run.span_id, 16),
                                       resource=resources.get(run.service))
            for start in range(0, len(records), BATCH_SPANS):
                batch = records[start:start + BATCH_SPANS]
                with capture_export_logs() as captured:
                    try:
                        result = exporter.export(batch)
                    except Exception as exc:
                        captured.append(f"{type(exc).__name__}: {exc}")
                        result = LogRecordExportResult.FAILURE
                if result is not LogRecordExportResult.SUCCESS:
                    raise BackfillError(f"OTLP log export to {where} failed after {sent} "
                                        f"output lines: {_reason(list(dict.fromkeys(captured)))}")
                sent += len(batch)
    finally:
        with capture_export_logs():
            exporter.shutdown()
    return sent


def export_runs_to_otlp(
    ledger: Any,
    *,
    endpoint: str | None = None,
    since: datetime | None = None,
    run_type: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    output: bool = True,
) -> int:
    """Send the ledger's finished runs (started at or after ``since``, of ``run_type``)
    and their stored child spans to the OTLP endpoint (``endpoint``, a base URL, else
    the ``OTEL_EXPORTER_OTLP_*`` variables), with their original ids and timestamps.

    ``ledger`` is a :class:`~otel_runs.ledger.Ledger` or a project root. ``progress(done,
    total)`` is called with run counts. With ``output``, each run's output lines follow
    as log records. Returns how many runs were sent; runs still ``running`` are
    skipped. Idempotent: a re-run sends the same spans again. Raises
    :class:`NoEndpointConfiguredError` before reading anything when no endpoint is set, and
    :class:`BackfillError` (one-line message) when the endpoint rejects or cannot be reached.
    """
    if not otlp_requested(endpoint):
        raise NoEndpointConfiguredError()
    check_endpoint(endpoint, connect=False)
    led = _open_ledger(ledger)
    check_endpoint(endpoint)
    runs = [r for r in led.iter_runs(since=since, type=run_type)
            if r.ended_at and r.trace_id and r.span_id]
    runs.reverse()  # oldest first: a backend shows history in the order it happened
    total = len(runs)
    if progress is not None:
        progress(0, total)
    if not runs:
        return 0
    resources = Resources()

    def spans() -> Iterator[tuple[int, ReadableSpan]]:
        for index, run in enumerate(runs):
            resource = resources.get(run.service)
            for data in led.spans(run.run_id):
                yield index, child_span(data, resource)
            yield index + 1, run_span(run, resource)

    exporter = otlp_exporter(endpoint)
    where = exporter_endpoint(exporter)
    # Runs recorded before the scrubber existed (or written by other tools) are scrubbed on
    # the way out, as every span otel-runs exports is.
    sending = ScrubbingSpanExporter(exporter)
    done = 0
    try:
        for runs_done, batch in _batches(spans(), BATCH_SPANS):
            with capture_export_logs() as captured:
                try:
                    result = sending.export(batch)
                except Exception as exc:
                    captured.append(f"{type(exc).__name__}: {exc}")
                    result = SpanExportResult.FAILURE
            if result is not SpanExportResult.SUCCESS:
                raise BackfillError(f"OTLP export to {where} failed after {done} of {total} "
                                    f"runs: {_reason(list(dict.fromkeys(captured)))}")
            if runs_done != done:
                done = runs_done
                if progress is not None:
                    progress(done, total)
    finally:
        with capture_export_logs():
            exporter.shutdown()
    if output:
        _export_output(led, runs, resources, endpoint)
    if progress is not None and done != total:
        progress(total, total)
    return total


# -- the CLI command (mounted by otel_runs.cli as ``otel-runs export-otlp``) ---------------

@click.command("export-otlp")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S",
                                              "%Y-%m-%dT%H:%M:%SZ"]),
              default=None, help="Only runs started at or after this date (UTC).")
@click.option("--type", "run_type", default=None, metavar="T", help="Only runs of this type.")
@click.option("--project", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Project whose ledger to replay (default: OTEL_RUNS_PROJECT_ROOT, "
                   "else the current directory).")
@click.option("--endpoint", default=None, metavar="URL",
              help="OTLP base URL (default: OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT).")
def export_otlp_command(since: datetime | None, run_type: str | None,
                        project: Path | None, endpoint: str | None) -> None:
    """Replay runs from the ledger to the OTLP endpoint with their original trace
    ids, span ids and timestamps (idempotent: safe to run again)."""
    from ._taxonomy import RUN_TYPES

    if run_type is not None and run_type not in RUN_TYPES:
        raise click.BadParameter(f"unknown run type {run_type[:40]!r}; valid: "
                                 f"{', '.join(sorted(RUN_TYPES))}", param_hint="'--type'")
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    root = project or Path(_settings.env_str(_settings.OTEL_RUNS_PROJECT_ROOT, os.getcwd())
                           or os.getcwd())
    bar: Any = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=total, label="Exporting runs",
                                    file=click.get_text_stream("stderr"))
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        sent = export_runs_to_otlp(root, endpoint=endpoint, since=since, run_type=run_type,
                                   progress=on_progress)
    except click.ClickException:
        raise
    except Exception as exc:  # one line, never a traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise click.ClickException(message) from None
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    click.echo(f"exported {sent} run(s) to OTLP")
