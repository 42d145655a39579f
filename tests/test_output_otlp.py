"""Run output as OpenTelemetry logs: real Flask runs, the official OTLP log exporter, real
receivers on 127.0.0.1; each line a log record in the run span's trace; quiet and bounded
when the collector is down."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from conftest import CollectingProcessor, wait_until
from flask import Flask
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor
from otlp_receiver import (
    HungServer,
    OTLPGrpcReceiver,
    OTLPHttpReceiver,
    refused_endpoint,
    run_spans,
)

import otel_runs
from otel_runs.exporters import _output_records, otlp_logs
from otel_runs.flask import RunTracking

PROTOCOLS = ["http/protobuf", "grpc"]


@pytest.fixture(autouse=True)
def _fast_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_BLRP_SCHEDULE_DELAY", "50")
    for name in ("OTEL_LOGS_EXPORTER", "OTEL_BLRP_MAX_QUEUE_SIZE", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=PROTOCOLS)
def receiver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A real OTLP receiver (traces and logs) for the protocol, the variable set to match."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", request.param)
    recv = OTLPGrpcReceiver() if request.param == "grpc" else OTLPHttpReceiver()
    yield recv
    otel_runs.shutdown()
    recv.stop()


def _app(root: Path, endpoint: str | None, feed: CollectingProcessor | None = None,
         lines: int = 1) -> Flask:
    app = Flask("output_otlp_app")
    app.config["PROJECT_ROOT"] = str(root)

    @app.post("/deploy/<name>")
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def deploy(name: str) -> Any:
        run = otel_runs.current_run()
        assert run is not None
        for i in range(lines):
            run.log(f"applying {name} {i}")
        print("rolled out", name, file=run.output)
        run.log("2 pods pending", stream="err")
        logging.getLogger("lib").warning("slow rollout of %s", name)
        return {"ok": True, "summary": f"deployed {name}"}

    kwargs: dict[str, Any] = {"otlp_endpoint": endpoint} if endpoint else {}
    RunTracking(app, ledger=False, processors=[feed or CollectingProcessor()],
                service_name="output-otlp-test", **kwargs)
    return app


def _of_run(records: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    return sorted((r for r in records if r["attributes"].get("run.id") == run_id),
                  key=lambda r: r["attributes"]["run.output.line"])


def test_each_line_is_a_log_record_in_the_run_span(tmp_path: Path, receiver: Any,
                                                   live_server: Any) -> None:
    srv = live_server(_app(tmp_path, receiver.endpoint))
    resp = requests.post(f"{srv.url}/deploy/web", timeout=30)
    assert resp.status_code == 200
    run_id = resp.headers["X-Run-Id"]
    assert otel_runs.flush()

    run = receiver.wait_for(lambda spans: next(
        (s for s in run_spans(spans) if s["attributes"]["run.id"] == run_id), None))
    records = receiver.wait_for_logs(lambda logs: len(_of_run(logs, run_id)) >= 4
                                     and _of_run(logs, run_id))
    assert [r["body"] for r in records] == [
        "applying web 0", "rolled out web", "2 pods pending", "slow rollout of web"]
    # Tempo/Loki link them: the run span's trace id and span id, sampled.
    assert {(r["trace_id"], r["span_id"]) for r in records} == {(run["trace_id"], run["span_id"])}
    assert all(r["flags"] & 1 for r in records)
    assert [(r["severity_number"], r["severity_text"]) for r in records] == [
        (9, "INFO"), (9, "INFO"), (13, "WARN"), (13, "WARNING")]
    assert [r["attributes"]["run.output.stream"] for r in records] == ["out", "out", "err", "log"]
    assert [r["attributes"]["run.output.line"] for r in records] == [0, 1, 2, 3]
    assert [r["attributes"].get("log.iostream") for r in records] == [
        "stdout", "stdout", "stderr", None]
    assert [r["scope"] for r in records] == ["otel_runs", "otel_runs", "otel_runs", "lib"]
    # Same resource as the spans; timestamps inside the run span.
    assert {r["resource"]["service.name"] for r in records} == {run["resource"]["service.name"]}
    assert all(run["start_time_ns"] <= r["time_ns"] <= run["end_time_ns"] + 10**6 for r in records)
    assert [r["time_ns"] for r in records] == sorted(r["time_ns"] for r in records)


def test_logs_endpoint_variable_and_logs_exporter_none(
        tmp_path: Path, live_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    traces, logs = OTLPHttpReceiver(), OTLPHttpReceiver()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", f"{logs.endpoint}/v1/logs")
        srv = live_server(_app(tmp_path, traces.endpoint))
        run_id = requests.post(f"{srv.url}/deploy/a", timeout=30).headers["X-Run-Id"]
        assert otel_runs.flush()
        traces.wait_for(lambda spans: any(s["attributes"]["run.id"] == run_id
                                          for s in run_spans(spans)))
        assert len(logs.wait_for_logs(lambda r: len(_of_run(r, run_id)) >= 4 and r)) == 4
        assert traces.logs == []
        otel_runs.shutdown()

        monkeypatch.delenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
        monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
        otel_runs.configure(tmp_path, ledger=False, otlp_endpoint=traces.endpoint)
        assert otlp_logs.output_logs() is None
        with otel_runs.tracked_run(None, "deploy", "deploy:k8s") as run:
            run.log("not exported as a log")
        assert otel_runs.flush()
        traces.wait_for(lambda spans: any(s["attributes"]["run.id"] == run.run_id
                                          for s in run_spans(spans)))
        assert traces.logs == [] and traces.log_requests == 0
    finally:
        traces.stop()
        logs.stop()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name != "lib"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_refused_collector_is_quiet_and_costs_requests_nothing(
        protocol: str, tmp_path: Path, live_server: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    caplog.set_level(logging.INFO)
    feed = CollectingProcessor()
    srv = live_server(_app(tmp_path, refused_endpoint(), feed, lines=20))
    pipeline = otlp_logs.output_logs()
    assert pipeline is not None and pipeline.processor is not None
    quiet = pipeline.processor.quiet_exporter
    run_ids: list[str] = []
    started = time.monotonic()
    with requests.Session() as http:
        # bounded: at most 1,000 requests / 90 s, until several log exports have failed
        while len(run_ids) < 1000 and time.monotonic() - started < 90:
            t0 = time.perf_counter()
            resp = http.post(f"{srv.url}/deploy/{len(run_ids)}", timeout=60)
            assert resp.status_code == 200
            assert time.perf_counter() - t0 < 5  # never one export timeout per request
            run_ids.append(resp.headers["X-Run-Id"])
            if len(run_ids) >= 20 and quiet.failures >= 3:
                break
    elapsed = time.monotonic() - started
    assert quiet.failures >= 3
    assert feed.wait_for(lambda: set(run_ids) <= {r.run_id for r in feed.ended}, timeout=30)
    ours = [r for r in _warnings(caplog) if "OTLP log export" in r.getMessage()]
    theirs = [r for r in _warnings(caplog) if r.name.startswith("opentelemetry")]
    assert 1 <= len(ours) <= 1 + int(elapsed // 60)
    assert "output line(s) dropped" in ours[0].getMessage()
    # The exporters' own messages are summarised; OTel's "Queue full" passes once per interval.
    assert [r for r in theirs if "Queue full" not in r.getMessage()] == []
    assert len(theirs) <= 1 + int(elapsed // 60)
    assert quiet.dropped_records > len(ours)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hung_collector_keeps_the_queue_bounded_and_shutdown_short(
        protocol: str, tmp_path: Path, live_server: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    timeout = 2.0
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", str(timeout))
    monkeypatch.setenv("OTEL_BLRP_MAX_QUEUE_SIZE", "64")
    monkeypatch.setenv("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "16")
    caplog.set_level(logging.INFO)
    hung = HungServer()  # accepts connections, never answers
    try:
        srv = live_server(_app(tmp_path, hung.endpoint, lines=30))
        pipeline = otlp_logs.output_logs()
        assert pipeline is not None and pipeline.processor is not None
        proc = pipeline.processor
        with requests.Session() as http:
            for n in range(20):  # 20 runs x 33 lines go in; the queue keeps at most 64
                t0 = time.perf_counter()
                assert http.post(f"{srv.url}/deploy/{n}", timeout=60).status_code == 200
                assert time.perf_counter() - t0 < timeout
        wait_until(lambda: proc.quiet_exporter.in_flight == 1, timeout=30)
        assert proc.max_queue_size == 64 and proc.queued <= 64
        assert len([r for r in _warnings(caplog) if "Queue full" in r.getMessage()]) <= 1

        t0 = time.monotonic()
        flushed = otel_runs.flush()
        flush_s = time.monotonic() - t0
        t0 = time.monotonic()
        otel_runs.shutdown()
        shutdown_s = time.monotonic() - t0
        print(f"flush {flush_s:.2f}s, shutdown {shutdown_s:.2f}s, export timeout {timeout}s")
        assert flushed is False
        assert flush_s < 3 * timeout
        assert shutdown_s < 6 * timeout  # the span and the log pipelines, each bounded
        assert otlp_logs.output_logs() is None
    finally:
        hung.release()


_CHILD = r"""
import json, logging, sys
from opentelemetry._logs import get_logger_provider, set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
import otel_runs

mode = sys.argv[1]
if mode == "app-provider":
    app_provider = LoggerProvider()
    memory = InMemoryLogRecordExporter()
    app_provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    set_logger_provider(app_provider)
    logging.getLogger().addHandler(LoggingHandler(logger_provider=app_provider))
otel_runs.configure(ledger=False)
ids = []
for summary in ("first", "second"):
    with otel_runs.tracked_run(None, "deploy", "deploy:k8s", summary=summary) as run:
        run.log("line of " + summary)
        logging.getLogger("lib").warning("warned in %s", summary)
    ids.append(run.run_id)
out = {"ids": ids}
if mode == "exit":  # no flush, no shutdown: what is queued goes out at exit
    print(json.dumps(out))
    sys.exit(0)
otel_runs.flush()
if mode == "app-provider":
    out["same_provider"] = get_logger_provider() is app_provider
    out["bodies"] = sorted(str(r.log_record.body) for r in memory.get_finished_logs())
otel_runs.shutdown()
print(json.dumps(out))
"""


def _run_child(tmp_path: Path, env: dict[str, str], mode: str) -> dict[str, Any]:
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("OTEL_") and k != "PYTEST_CURRENT_TEST"}
    full_env.update({"OTEL_RUNS_PROJECT_ROOT": str(tmp_path), "OTEL_BSP_SCHEDULE_DELAY": "50",
                     "OTEL_BLRP_SCHEDULE_DELAY": "50", **env})
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode], env=full_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_standard_variables_and_sampling_in_a_fresh_process(tmp_path: Path) -> None:
    recv = OTLPHttpReceiver()
    try:
        out = _run_child(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": recv.endpoint,
                                    "OTEL_SERVICE_NAME": "billing",
                                    "OTEL_TRACES_SAMPLER": "always_off"}, "own")
        records = recv.wait_for_logs(lambda r: len(r) >= 4 and r)
        first, second = (_of_run(records, rid) for rid in out["ids"])
        assert [r["body"] for r in first] == ["line of first", "warned in first"]
        assert [r["body"] for r in second] == ["line of second", "warned in second"]
        assert {r["resource"]["service.name"] for r in records} == {"billing"}
        # Sampled out: the span is not exported, its output is, with the run's (unsampled)
        # trace context.
        assert recv.spans == []
        assert all(len(r["trace_id"]) == 32 and r["flags"] & 1 == 0 for r in records)
        assert first[0]["trace_id"] != second[0]["trace_id"]
    finally:
        recv.stop()


def test_the_applications_logger_provider_is_used_never_replaced(tmp_path: Path) -> None:
    recv = OTLPHttpReceiver()
    try:
        out = _run_child(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": recv.endpoint}, "app-provider")
        assert out["same_provider"] is True
        # run.log lines go into the application's pipeline; the "lib" records only once
        # (through the application's own LoggingHandler, not again as captured lines).
        assert out["bodies"] == ["line of first", "line of second",
                                 "warned in first", "warned in second"]
        recv.wait_for(lambda spans: len(run_spans(spans)) == 2)
        assert recv.logs == []  # no exporter of otel-runs' own was added to it
    finally:
        recv.stop()



def test_queued_output_is_exported_at_exit(tmp_path: Path) -> None:
    recv = OTLPHttpReceiver()
    try:
        out = _run_child(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": recv.endpoint,
                                    "OTEL_BLRP_SCHEDULE_DELAY": "60000"}, "exit")
        records = recv.wait_for_logs(lambda r: len(r) >= 4 and r)
        assert {r["attributes"]["run.id"] for r in records} == set(out["ids"])
    finally:
        recv.stop()

class _Stuck(LogRecordProcessor):
    """A log processor that blocks until released (an emitting thread that cannot go on)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.records: list[Any] = []

    def on_emit(self, log_record: Any) -> None:
        self.release.wait(30)
        self.records.append(log_record)

    def shutdown(self) -> None:
        self.release.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def test_the_sink_never_waits_and_its_queue_is_bounded(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(_output_records, "MAX_PENDING_LINES", 100)
    stuck = _Stuck()
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(stuck)
    pipeline = _output_records.OutputLogs(provider, None, owns=True)
    run = SimpleNamespace(run_id="r1", trace_id=0x1234, span_id=0x56, trace_flags=1,
                          start_ns=1_000_000_000)
    chunk = [{"n": i, "t": 0.001 * i, "stream": "out", "text": f"line {i}"} for i in range(40)]
    t0 = time.perf_counter()
    for _ in range(10):  # 400 lines while the emitting thread is stuck on the first record
        pipeline.sink(run, chunk, True)
    assert time.perf_counter() - t0 < 1.0
    assert pipeline.dropped >= 400 - 100 - 40
    assert len([r for r in caplog.records if "faster than it is exported" in r.getMessage()]) == 1
    assert pipeline.drain(0.2) is False  # still stuck: bounded, returns
    stuck.release.set()
    assert pipeline.drain(30)
    assert len(stuck.records) == pipeline.emitted == 400 - pipeline.dropped
    first = stuck.records[0].log_record
    assert (first.trace_id, first.span_id, first.body) == (0x1234, 0x56, "line 0")
    assert first.timestamp == 1_000_000_000 and first.attributes["run.output.line"] == 0
    pipeline.shutdown(timeout_s=5)
