"""Backfill: runs and their child spans replayed from a real ledger to a real OTLP
receiver with their original ids and timestamps; idempotent; clear one-line errors."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import Status, StatusCode, format_span_id, format_trace_id
from otlp_receiver import OTLPGrpcReceiver, OTLPHttpReceiver, refused_endpoint

import otel_runs
from otel_runs import new_run_id
from otel_runs.backfill import (
    BackfillError,
    NoEndpointConfiguredError,
    export_otlp_command,
    export_runs_to_otlp,
)
from otel_runs.cli import runs_group
from otel_runs.ledger import ledger_for


class _Recorder(SpanProcessor):
    """Keeps every finished span as the SDK produced it (the originals)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        with self.lock:
            self.spans.append(span)


@pytest.fixture
def history(git_repo: Path) -> dict[str, Any]:
    """A real ledger with runs (with child spans, events, a failure) and the original spans."""
    recorder = _Recorder()
    otel_runs.configure(git_repo, processors=[recorder], service_name="backfill-test")
    tracer = trace.get_tracer("test.backfill")
    run_ids = []
    for n in range(3):
        with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s", summary=f"deploy {n}",
                                   replicas=n) as run:
            with tracer.start_as_current_span("kubectl apply") as span:
                span.set_attribute("k8s.namespace", "prod")
                span.add_event("applied", {"objects": 4})
                with tracer.start_as_current_span("wait rollout"):
                    pass
            run.add_event("rolled_out", replicas=n)
        run_ids.append(run.run_id)
    with pytest.raises(RuntimeError):
        with otel_runs.tracked_run(git_repo, "build", "build:docker") as run:
            with tracer.start_as_current_span("docker build") as span:
                span.set_status(Status(StatusCode.ERROR, "no space left"))
            raise RuntimeError("docker build failed")
    run_ids.append(run.run_id)
    otel_runs.flush()
    ledger = ledger_for(git_repo)
    ledger.flush()
    assert [ledger.get(rid) is not None for rid in run_ids] == [True] * 4
    otel_runs.shutdown()
    ours = [s for s in recorder.spans if s.attributes and "run.id" in s.attributes]
    return {"root": git_repo, "run_ids": run_ids, "originals": ours}


def _key(span: dict[str, Any]) -> tuple[Any, ...]:
    return (span["trace_id"], span["span_id"], span["parent_span_id"], span["name"],
            span["start_time_ns"], span["end_time_ns"], sorted(span["attributes"].items()),
            span["status_code"], span["resource"].get("service.name"))


def test_replays_runs_and_child_spans_with_original_ids_and_times(history: dict[str, Any]) -> None:
    recv = OTLPHttpReceiver()
    try:
        progress: list[tuple[int, int]] = []
        sent = export_runs_to_otlp(history["root"], endpoint=recv.endpoint,
                                   progress=lambda done, total: progress.append((done, total)))
        assert sent == 4
        assert progress[0] == (0, 4) and progress[-1] == (4, 4)
        originals: list[ReadableSpan] = history["originals"]
        assert len(originals) == 4 * 1 + 3 * 2 + 1  # runs + their child spans
        got = {s["span_id"]: s for s in recv.wait_for(lambda s: len(s) >= len(originals) and s)}
        assert len(got) == len(originals) == len(recv.snapshot())
        for orig in originals:
            span = got[format_span_id(orig.context.span_id)]
            assert span["trace_id"] == format_trace_id(orig.context.trace_id)
            assert span["name"] == orig.name
            assert span["resource"]["service.name"] == orig.resource.attributes["service.name"]
            if "run.type" in orig.attributes:
                # the ledger keeps run times to the microsecond
                assert span["start_time_ns"] == orig.start_time // 1000 * 1000
                assert span["end_time_ns"] == orig.end_time // 1000 * 1000
                assert span["attributes"] == dict(orig.attributes)
                assert span["parent_span_id"] is None  # the request span is not in the ledger
                assert [e["name"] for e in span["events"]] == [e.name for e in orig.events]
            else:
                assert span["start_time_ns"] == orig.start_time
                assert span["end_time_ns"] == orig.end_time
                assert span["parent_span_id"] == format_span_id(orig.parent.span_id)
                assert span["attributes"] == dict(orig.attributes)
                assert [(e["name"], e["time_ns"]) for e in span["events"]] == [
                    (e.name, e.timestamp) for e in orig.events]
            assert span["status_code"] == orig.status.status_code.value
        failed = next(s for s in got.values() if s["attributes"].get("run.status") == "failed")
        assert failed["status_code"] == 2 and failed["status_message"] == "docker build failed"
    finally:
        recv.stop()


def test_rerun_sends_the_same_spans(history: dict[str, Any]) -> None:
    first, second = OTLPHttpReceiver(), OTLPHttpReceiver()
    try:
        assert export_runs_to_otlp(history["root"], endpoint=first.endpoint) == 4
        assert export_runs_to_otlp(history["root"], endpoint=second.endpoint) == 4
        a = sorted(_key(s) for s in first.snapshot())
        b = sorted(_key(s) for s in second.snapshot())
        assert a == b and len(a) == len(history["originals"])
        assert len({(k[0], k[1]) for k in a}) == len(a)  # each (trace id, span id) once per run
    finally:
        first.stop()
        second.stop()


def test_filters_and_grpc(history: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    recv = OTLPGrpcReceiver()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", recv.endpoint)
        assert export_runs_to_otlp(history["root"], run_type="build") == 1
        spans = recv.wait_for(lambda s: len(s) >= 2 and s)
        assert {s["name"] for s in spans} == {"build:docker", "docker build"}
        future = datetime.now(timezone.utc) + timedelta(days=1)
        assert export_runs_to_otlp(history["root"], since=future) == 0
    finally:
        recv.stop()


def test_no_endpoint_is_a_clear_error_before_reading_anything(tmp_path: Path) -> None:
    with pytest.raises(NoEndpointConfiguredError, match="no OTLP endpoint configured"):
        export_runs_to_otlp(tmp_path / "not-a-repo")


def test_unreachable_endpoint_is_a_one_line_error(history: dict[str, Any]) -> None:
    started, endpoint = time.monotonic(), refused_endpoint()
    with pytest.raises(BackfillError) as info:  # checked up front: no retries, no waiting
        export_runs_to_otlp(history["root"], endpoint=endpoint)
    assert time.monotonic() - started < 5
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"cannot reach the OTLP endpoint {endpoint}: ")
    assert "Connection refused" in str(info.value)
    with pytest.raises(BackfillError, match="is not an http\\(s\\) URL"):
        export_runs_to_otlp(history["root"], endpoint="localhost-4318")


class _Refusing(ThreadingHTTPServer):
    """An HTTP server that answers every export with 400 (an error the exporter does not retry)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(400)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def test_a_refused_export_is_one_short_line(history: dict[str, Any]) -> None:
    server = _Refusing()
    try:
        with pytest.raises(BackfillError) as info:
            export_runs_to_otlp(history["root"], endpoint=server.endpoint)
    finally:
        server.shutdown()
        server.server_close()
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert "failed after 0 of 4 runs" in message and "400" in message


# -- the command ---------------------------------------------------------------------------

def _invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(export_otlp_command, list(args), env=env or {},
                              catch_exceptions=False)


def _one_line_error(result: Any) -> str:
    assert result.exit_code != 0
    # (a progress bar that had started may precede the error)
    lines = [ln for ln in result.output.splitlines()
             if ln.strip() and not ln.startswith("Exporting runs")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_command_without_endpoint_fails_with_one_line(tmp_path: Path) -> None:
    line = _one_line_error(_invoke("--project", str(tmp_path)))
    assert "no OTLP endpoint configured" in line and "OTEL_EXPORTER_OTLP_ENDPOINT" in line


def test_command_exports_with_progress(history: dict[str, Any]) -> None:
    recv = OTLPHttpReceiver()
    try:
        result = _invoke("--project", str(history["root"]), "--since", "2000-01-01",
                         "--type", "deploy", env={"OTEL_EXPORTER_OTLP_ENDPOINT": recv.endpoint})
        assert result.exit_code == 0, result.output
        assert "exported 3 run(s) to OTLP" in result.output
        assert "Exporting runs" in result.output
        assert len({s["attributes"].get("run.id") for s in recv.snapshot()} - {None}) == 3
    finally:
        recv.stop()


def test_command_errors_are_one_line(history: dict[str, Any], tmp_path: Path) -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": refused_endpoint(), "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    bad_type = CliRunner().invoke(runs_group, ["export-otlp", "--project", str(history["root"]),
                                               "--type", "nope"], env=endpoint)
    assert bad_type.exit_code == 2  # a usage error, as `list --type` and the runs API
    assert "unknown run type 'nope'; valid: backup, build" in _one_line_error(bad_type)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert str(plain) in _one_line_error(_invoke("--project", str(plain), env=endpoint))
    assert "cannot reach the OTLP endpoint" in _one_line_error(
        _invoke("--project", str(history["root"]), env=endpoint))


def test_secrets_in_stored_runs_are_scrubbed_on_the_way_out(git_repo: Path) -> None:
    """A run written into the ledger as it is (by an older otel-runs or another tool) with a
    token in its metadata and summary leaves through export-otlp scrubbed."""
    from otel_runs.ledger._store import GitStore

    token = "ghp_" + "Zq9Xv" * 8
    run = {"run_id": new_run_id(), "type": "deploy", "subtype": "deploy:k8s", "status": "ok",
           "summary": f"pushed with {token}", "started_at": "2026-12-01T10:00:00.000000Z",
           "ended_at": "2026-12-01T10:00:01.000000Z", "duration_ms": 1000.0,
           "metadata": {"api_key": "plain-secret-value", "url": f"https://u:{token}@git.example"},
           "trace_id": "1" * 32, "span_id": "2" * 16, "parent_run_id": None,
           "service": "old", "events": []}
    with GitStore(git_repo) as store:
        assert store.write_batch([(run, [])]) == 1
    recv = OTLPHttpReceiver()
    try:
        assert export_runs_to_otlp(git_repo, endpoint=recv.endpoint) == 1
        spans = recv.wait_for(lambda s: len(s) >= 1 and s)
        text = json.dumps(spans)
        assert "Zq9Xv" not in text and "plain-secret-value" not in text
        assert "pushed with" in text
    finally:
        recv.stop()
