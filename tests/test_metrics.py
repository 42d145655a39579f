"""Runs as metrics, in this process: the CICD conventions on run spans, the run metrics
and health gauges through the real OpenTelemetry metrics SDK, the ledger's counts by
type and status (incremental, the same for a new reader of the same ledger), and the
``/metrics`` route (off by default, private like the runs API).

The application's MeterProvider is used when it has one: this module installs one (an
in-memory reader and a Prometheus reader) before any metrics are enabled, as an app
would; each test counts runs of subtypes of its own (the provider lives for the process).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_runs
from otel_runs import _setup
from otel_runs.ledger import Ledger, RunCensus
from otel_runs.metrics import (
    INSTRUMENTS,
    MetricsRunProcessor,
    enable_metrics,
    metrics_state,
    prometheus_series,
)

pytest.importorskip("opentelemetry.exporter.prometheus",
                    reason="the 'prometheus' extra is not installed")
from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: E402

_counter = itertools.count()


@pytest.fixture(scope="module")
def reader() -> InMemoryMetricReader:
    """The application's MeterProvider: installed once, before otel-runs enables metrics."""
    state = metrics_state()
    if state is not None:  # enabled by an earlier module: use its provider's in-memory reader
        found = [r for r in state.provider._metric_readers if isinstance(r, InMemoryMetricReader)]
        if not found:
            pytest.skip("metrics were enabled earlier in this process without a test reader")
        return found[0]
    memory = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[memory, PrometheusMetricReader()]))
    return memory


def _subtype(kind: str = "deploy") -> str:
    return f"{kind}:metrics_{next(_counter)}"


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    found = []
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def _point(reader: InMemoryMetricReader, name: str, **attrs: str) -> Any:
    want = {k.replace("__", "."): v for k, v in attrs.items()}
    hits = [p for p in _points(reader, name)
            if all(p.attributes.get(k) == v for k, v in want.items())]
    return hits[0] if len(hits) == 1 else (None if not hits else hits)


def _track(root: Path, subtype: str, outcome: str = "ok") -> None:
    run_type = subtype.partition(":")[0]
    try:
        with otel_runs.tracked_run(root, run_type, subtype) as run:
            if outcome == "raise":
                raise ValueError("boom")
            if outcome == "reported":
                run.status = "failed"
            if outcome == "cancel":
                raise KeyboardInterrupt
    except (ValueError, KeyboardInterrupt):
        pass


# -- the CICD conventions on run spans -------------------------------------------------------

def test_run_spans_carry_the_cicd_conventions(tmp_path: Path) -> None:
    spans = InMemorySpanExporter()
    otel_runs.configure(tmp_path, ledger=False, processors=[SimpleSpanProcessor(spans)])
    subtype = _subtype()
    for outcome in ("ok", "raise", "reported", "cancel"):
        _track(tmp_path, subtype, outcome)
    ended = [s for s in spans.get_finished_spans() if s.name == subtype]
    assert len(ended) == 4
    by_status = {s.attributes["run.status"]: dict(s.attributes) for s in ended
                 if s.attributes["run.status"] != "failed"}
    failed = [dict(s.attributes) for s in ended if s.attributes["run.status"] == "failed"]
    for attrs in [*by_status.values(), *failed]:
        assert attrs["cicd.pipeline.name"] == subtype
        assert attrs["cicd.pipeline.run.id"] == attrs["run.id"]
    assert by_status["ok"]["cicd.pipeline.result"] == "success"
    assert by_status["cancelled"]["cicd.pipeline.result"] == "cancellation"
    assert "error.type" not in by_status["ok"] and "error.type" not in by_status["cancelled"]
    assert sorted(a["error.type"] for a in failed) == ["ValueError", "_OTHER"]
    assert {a["cicd.pipeline.result"] for a in failed} == {"failure"}


# -- run metrics ---------------------------------------------------------------------------------

def test_each_run_is_counted_by_subtype_and_result(tmp_path: Path,
                                                   reader: InMemoryMetricReader) -> None:
    otel_runs.configure(tmp_path, ledger=False)
    enable_metrics(tmp_path)
    subtype = _subtype()
    with otel_runs.tracked_run(tmp_path, "deploy", subtype):
        active = _point(reader, "cicd.pipeline.run.active", cicd__pipeline__name=subtype)
        assert active.value == 1
        assert active.attributes["cicd.pipeline.run.state"] == "executing"
    for outcome in ("ok", "ok", "raise", "reported", "cancel"):
        _track(tmp_path, subtype, outcome)
    assert _point(reader, "cicd.pipeline.run.active", cicd__pipeline__name=subtype).value == 0
    name = "cicd.pipeline.run.duration"
    ok = _point(reader, name, cicd__pipeline__name=subtype, cicd__pipeline__result="success")
    assert ok.count == 3 and ok.attributes["run.type"] == "deploy"
    assert ok.attributes["service.name"]  # the resource's, as on the run span
    assert list(ok.explicit_bounds)[:3] == [0.005, 0.01, 0.025]
    assert ok.sum >= 0
    raised = _point(reader, name, cicd__pipeline__name=subtype, error__type="ValueError")
    other = _point(reader, name, cicd__pipeline__name=subtype, error__type="_OTHER")
    assert raised.count == 1 and other.count == 1
    assert _point(reader, name, cicd__pipeline__name=subtype,
                  cicd__pipeline__result="cancellation").count == 1
    errors = _point(reader, "cicd.pipeline.run.errors", cicd__pipeline__name=subtype,
                    error__type="ValueError")
    assert errors.value == 1


def test_only_the_roots_with_metrics_are_counted(tmp_path: Path,
                                                 reader: InMemoryMetricReader) -> None:
    counted, other = tmp_path / "counted", tmp_path / "other"
    counted.mkdir()
    other.mkdir()
    otel_runs.configure(counted, ledger=False)
    enable_metrics(counted)
    subtype = _subtype()
    _track(other, subtype)
    _track(counted, subtype)
    point = _point(reader, "cicd.pipeline.run.duration", cicd__pipeline__name=subtype)
    assert point.count == 1


def test_metrics_stay_wired_through_shutdown(tmp_path: Path,
                                             reader: InMemoryMetricReader) -> None:
    otel_runs.configure(tmp_path, ledger=False)
    enable_metrics(tmp_path)
    otel_runs.shutdown()
    otel_runs.configure(tmp_path, ledger=False)
    subtype = _subtype()
    _track(tmp_path, subtype)
    assert _point(reader, "cicd.pipeline.run.duration", cicd__pipeline__name=subtype).count == 1
    assert metrics_state().owns_provider is False  # the application's provider, kept


# -- the ledger: committed runs by type and status ---------------------------------------------

def test_the_ledger_gauge_counts_committed_runs_from_the_index(
        git_repo: Path, reader: InMemoryMetricReader) -> None:
    otel_runs.configure(git_repo)
    state = enable_metrics(git_repo)
    subtype = _subtype("ci")
    for outcome in ("ok", "ok", "ok", "raise", "cancel"):
        _track(git_repo, subtype, outcome)
    assert otel_runs.flush()
    counts = state.health.refresh()
    assert counts[("ci", "ok")] >= 3
    mine = {k: v for k, v in counts.items() if k[0] == "ci"}
    assert mine == {("ci", "ok"): 3, ("ci", "failed"): 1, ("ci", "cancelled"): 1}

    # A reader that starts afresh (a restarted server) finds the same counts on the branch.
    fresh = RunCensus(Ledger(git_repo))
    assert {k: v for k, v in fresh.refresh().items() if k[0] == "ci"} == mine
    assert fresh.full_counts == 1

    # More runs: counted from the new commits only.
    for _ in range(4):
        _track(git_repo, subtype)
    assert otel_runs.flush()
    again = fresh.refresh()
    assert again[("ci", "ok")] == 7 and fresh.full_counts == 1
    assert fresh.total == sum(again.values())

    state.health.refresh()
    gauge = _point(reader, "otel_runs.ledger.runs", run__type="ci", run__status="ok")
    assert gauge.value == 7 and gauge.attributes["cicd.pipeline.result"] == "success"
    assert _point(reader, "otel_runs.ledger.pending").value == 0
    assert _point(reader, "otel_runs.ledger.only_in_memory").value == 0
    assert _point(reader, "otel_runs.ledger.commit.lag").value == 0
    assert _point(reader, "otel_runs.ledger.quarantined").value == 0
    journaled = _point(reader, "otel_runs.runs.journaled")
    assert journaled.value >= 9


def test_the_census_counts_again_when_history_is_not_a_line(git_repo: Path) -> None:
    otel_runs.configure(git_repo)
    for _ in range(2):
        _track(git_repo, "ci:census")
    assert otel_runs.flush()
    census = RunCensus(Ledger(git_repo))
    assert census.refresh() == {("ci", "ok"): 2}
    census._tip = b"\0" * 20  # a tip that is no ancestor: the walk cannot find it
    _track(git_repo, "ci:census")
    assert otel_runs.flush()
    assert census.refresh() == {("ci", "ok"): 3}
    assert census.full_counts == 2


# -- the Flask wiring and /metrics ---------------------------------------------------------------

def _app(root: Path, **config: Any) -> Flask:
    from otel_runs.flask import RunTracking

    authorize = config.pop("authorize", None)
    app = Flask(f"metrics_{next(_counter)}")
    app.config["PROJECT_ROOT"] = str(root)
    app.config.update(config)

    @app.post("/deploy")
    @otel_runs.run_tracked("deploy", "deploy:metrics_route")
    def deploy() -> Any:
        return jsonify(ok=True)

    RunTracking(app, authorize=authorize)
    return app


def test_metrics_are_off_by_default(git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_RUNS_METRICS", raising=False)
    monkeypatch.delenv("OTEL_RUNS_METRICS_ENDPOINT", raising=False)
    app = _app(git_repo)
    client = app.test_client()
    assert client.get("/metrics").status_code == 404
    state = metrics_state()
    if state is not None:
        assert str(git_repo.resolve()) not in state.processor.roots
    assert app.config["OTEL_RUNS_EXCLUDED_URLS"] == "/api/events"


@pytest.fixture
def metered(git_repo: Path, reader: InMemoryMetricReader) -> Iterator[Flask]:
    yield _app(git_repo, OTEL_RUNS_METRICS_ENDPOINT="1")


def test_the_endpoint_serves_the_prometheus_format(metered: Flask) -> None:
    client = metered.test_client()
    assert client.post("/deploy").status_code == 200
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.get_data(as_text=True)
    assert 'cicd_pipeline_name="deploy:metrics_route"' in body
    # Every otel-runs family the scrape shows is one the dashboard may name, and back.
    shown = {line.split("{")[0].split(" ")[0] for line in body.splitlines()
             if line.startswith(("cicd_", "otel_runs_"))}
    assert shown <= prometheus_series()
    assert {"cicd_pipeline_run_duration_seconds_bucket", "cicd_pipeline_run_active",
            "otel_runs_ledger_runs", "otel_runs_live_streams"} <= shown
    assert "/metrics" in metered.config["OTEL_RUNS_EXCLUDED_URLS"]


def test_the_endpoint_is_private_like_the_runs_api(git_repo: Path,
                                                   reader: InMemoryMetricReader) -> None:
    client = _app(git_repo, OTEL_RUNS_METRICS_ENDPOINT="/internal/metrics").test_client()
    assert client.get("/internal/metrics").status_code == 200
    remote = client.get("/internal/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert remote.status_code == 403 and "loopback" in remote.get_json()["error"]
    rebound = client.get("/internal/metrics", headers={"Host": "evil.example"})
    assert rebound.status_code == 400
    public = _app(git_repo, OTEL_RUNS_METRICS_ENDPOINT="1", OTEL_RUNS_API_PUBLIC=True)
    resp = public.test_client().get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert resp.status_code == 200
    denied = _app(git_repo, OTEL_RUNS_METRICS_ENDPOINT="1", authorize=lambda request: False)
    assert denied.test_client().get("/metrics").status_code == 403


def test_the_catalogue_names_every_instrument_once() -> None:
    names = [i.name for i in INSTRUMENTS]
    assert len(names) == len(set(names))
    assert {"cicd.pipeline.run.duration", "cicd.pipeline.run.active",
            "cicd.pipeline.run.errors"} <= set(names)
    assert "cicd_pipeline_run_errors_total" in prometheus_series()


def test_the_processor_is_dispatched_directly(tmp_path: Path,
                                              reader: InMemoryMetricReader) -> None:
    otel_runs.configure(tmp_path, ledger=False)
    state = enable_metrics(tmp_path)
    assert isinstance(state.processor, MetricsRunProcessor)
    assert _setup._state.dispatcher is not None
    assert state.processor in _setup._state.dispatcher.processors
