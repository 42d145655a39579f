"""A collector that is down or hangs: requests, the ledger and the feed do not notice;
memory stays bounded; export errors are logged once per interval."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import CollectingProcessor, wait_until
from flask import Flask
from opentelemetry import trace
from otlp_receiver import (
    HungServer,
    OTLPGrpcReceiver,
    OTLPHttpReceiver,
    refused_endpoint,
    run_spans,
)

import otel_runs
from otel_runs import _setup
from otel_runs.exporters.otlp import OTLPSpanProcessor
from otel_runs.flask import RunTracking
from otel_runs.ledger import ledger_for

PROTOCOLS = ["http/protobuf", "grpc"]


@pytest.fixture(autouse=True)
def _fast_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")


def _app(root: Path, feed: CollectingProcessor, endpoint: str | None) -> Flask:
    app = Flask("down_app")
    app.config["PROJECT_ROOT"] = str(root)
    tracer = trace.get_tracer("test.down")

    @app.post("/deploy/<int:n>")
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def deploy(n: int) -> Any:
        with tracer.start_as_current_span("kubectl apply"):
            pass
        return {"ok": True, "summary": f"deploy {n}"}

    kwargs: dict[str, Any] = {"otlp_endpoint": endpoint} if endpoint else {}
    RunTracking(app, processors=[feed], **kwargs)
    return app


def _otlp_proc() -> OTLPSpanProcessor:
    procs = [p for p in _setup._state.processors if isinstance(p, OTLPSpanProcessor)]
    assert len(procs) == 1, procs
    return procs[0]


def _assert_recorded_everywhere(root: Path, feed: CollectingProcessor, run_ids: list[str]) -> None:
    assert feed.wait_for(lambda: set(run_ids) <= {r.run_id for r in feed.ended}, timeout=30)
    ledger = ledger_for(root)
    ledger.flush()
    missing = [rid for rid in run_ids if ledger.get(rid) is None]
    assert not missing, f"{len(missing)} runs missing from the ledger"


def _warnings(caplog: pytest.LogCaptureFixture, pred: Callable[[logging.LogRecord], bool]
              ) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and pred(r)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_collector_that_never_answers_does_not_hold_up_requests(
        protocol: str, git_repo: Path, live_server: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "120")  # the export stays hung throughout
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16")
    caplog.set_level(logging.INFO)
    recv = OTLPGrpcReceiver(hold=True) if protocol == "grpc" else OTLPHttpReceiver(hold=True)
    try:
        feed = CollectingProcessor()
        srv = live_server(_app(git_repo, feed, recv.endpoint))
        proc = _otlp_proc()
        with requests.Session() as http:
            first = http.post(f"{srv.url}/deploy/0", timeout=60)
            run_ids = [first.headers["X-Run-Id"]]
            # the first batch reaches the collector, which does not answer
            wait_until(lambda: recv.held >= 1 and proc.quiet_exporter.in_flight == 1, timeout=60)
            for n in range(1, 61):
                resp = http.post(f"{srv.url}/deploy/{n}", timeout=60)
                assert resp.status_code == 200
                run_ids.append(resp.headers["X-Run-Id"])
        # Every request completed while that export was still waiting for an answer.
        assert recv.held >= 1 and proc.quiet_exporter.in_flight == 1
        assert proc.quiet_exporter.failures == 0 and recv.requests == 0
        # Memory stays bounded: 61 runs x 3 spans went in, the queue holds at most 64.
        assert proc.max_queue_size == 64
        assert proc.queued <= 64
        _assert_recorded_everywhere(git_repo, feed, run_ids)
        # OTel's "Queue full, dropping span" is tamed: at most once per interval.
        assert len(_warnings(caplog, lambda r: "Queue full" in r.getMessage())) <= 1

        # The collector comes back: what was kept is exported, the rest was dropped.
        recv.release()
        assert otel_runs.flush()
        exported = recv.wait_for(run_spans)
        assert len(recv.snapshot()) < 3 * len(run_ids)
        assert {s["attributes"]["run.id"] for s in exported} <= set(run_ids)
    finally:
        otel_runs.shutdown()
        recv.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_refused_connections_cost_requests_nothing_and_log_once(
        protocol: str, git_repo: Path, live_server: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    caplog.set_level(logging.INFO)
    feed = CollectingProcessor()
    srv = live_server(_app(git_repo, feed, None))
    run_ids: list[str] = []

    def timed(http: requests.Session, n: int) -> float:
        t0 = time.perf_counter()
        resp = http.post(f"{srv.url}/deploy/{n}", timeout=60)
        elapsed = time.perf_counter() - t0
        assert resp.status_code == 200
        run_ids.append(resp.headers["X-Run-Id"])
        return elapsed

    with requests.Session() as http:
        for n in range(5):  # warm up
            timed(http, n)
        baseline = [timed(http, n) for n in range(40)]
        endpoint = refused_endpoint()
        otel_runs.configure(git_repo, otlp_endpoint=endpoint)
        proc = _otlp_proc()
        started = time.monotonic()
        with_dead_collector: list[float] = []
        # bounded: at most 3,000 requests / 120 s, until several exports have failed (each
        # failed export takes up to the 1 s timeout, so fast requests need more than a few hundred)
        while len(with_dead_collector) < 3000 and time.monotonic() - started < 120:
            with_dead_collector.append(timed(http, len(with_dead_collector)))
            if len(with_dead_collector) >= 40 and proc.quiet_exporter.failures >= 3:
                break
        elapsed = time.monotonic() - started
    ratio = statistics.median(with_dead_collector) / statistics.median(baseline)
    print(f"median request with a refused collector / without OTLP: {ratio:.2f}x "
          f"({len(with_dead_collector)} vs {len(baseline)} requests)")
    assert proc.quiet_exporter.failures >= 3
    assert ratio < 3.0
    _assert_recorded_everywhere(git_repo, feed, run_ids)

    ours = _warnings(caplog, lambda r: r.name == "otel_runs.exporters.otlp")
    theirs = _warnings(caplog, lambda r: r.name.startswith("opentelemetry.exporter")
                       or "export" in r.getMessage().lower() and r.name.startswith("opentelemetry"))
    # Several failed exports, many dropped spans: one record per 60 s interval, not one each.
    assert 1 <= len(ours) <= 1 + int(elapsed // 60)
    assert endpoint.split("//")[1] in ours[0].getMessage()
    assert "span(s) dropped" in ours[0].getMessage()
    assert theirs == []
    assert proc.quiet_exporter.dropped_spans > len(ours)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_flush_and_shutdown_are_bounded_by_the_export_timeout(
        protocol: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    timeout = 2.0
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", str(timeout))
    hung = HungServer()  # accepts TCP connections, never answers anything
    try:
        feed = CollectingProcessor()
        otel_runs.configure(tmp_path, ledger=False, processors=[feed], otlp_endpoint=hung.endpoint)
        proc = _otlp_proc()
        with otel_runs.tracked_run(None, "deploy", "deploy:k8s"):
            pass
        wait_until(lambda: proc.quiet_exporter.in_flight == 1, timeout=30)
        with otel_runs.tracked_run(None, "deploy", "deploy:k8s") as second:
            pass
        assert feed.by_id(second.run_id).status == "ok"

        t0 = time.monotonic()
        flushed = otel_runs.flush()
        flush_s = time.monotonic() - t0
        t0 = time.monotonic()
        otel_runs.shutdown()
        shutdown_s = time.monotonic() - t0
        print(f"flush {flush_s:.2f}s, shutdown {shutdown_s:.2f}s, export timeout {timeout}s")
        assert flushed is False
        assert flush_s < 3 * timeout
        assert shutdown_s < 4 * timeout
    finally:
        hung.release()
