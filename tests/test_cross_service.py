"""A run in service A calls service B over HTTP: B's run joins A's trace and names A's
run as its parent; each service records its own runs in its own ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import CollectingProcessor, git
from flask import Flask
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from otlp_receiver import OTLPHttpReceiver

import otel_runs
from otel_runs.flask import RunTracking
from otel_runs.ledger import ledger_for
from otel_runs.propagation import outgoing_headers


def _repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text(f"{path.name}\n")
    git(path, "add", "README.md")
    git(path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "init")
    return path


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    recv = OTLPHttpReceiver()
    yield recv
    otel_runs.shutdown()
    recv.stop()


def _service_b(root: Path, feed: CollectingProcessor) -> Flask:
    app = Flask("service_b")
    app.config["PROJECT_ROOT"] = str(root)

    @app.post("/apply")
    @otel_runs.run_tracked("deploy", "deploy:helm")
    def apply() -> Any:
        return {"ok": True, "summary": "chart applied"}

    RunTracking(app, processors=[feed])
    return app


def _service_a(root: Path, feed: CollectingProcessor, b_url: str, endpoint: str) -> Flask:
    app = Flask("service_a")
    app.config["PROJECT_ROOT"] = str(root)
    tracer = trace.get_tracer("test.cross_service")

    @app.post("/release")
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def release() -> Any:
        # What opentelemetry-instrumentation-requests does: a CLIENT span, then inject.
        with tracer.start_as_current_span("POST /apply", kind=SpanKind.CLIENT):
            resp = requests.post(f"{b_url}/apply", headers=outgoing_headers(), timeout=60)
        return {"ok": resp.ok, "summary": "released", "b_run_id": resp.headers["X-Run-Id"]}

    RunTracking(app, processors=[feed], otlp_endpoint=endpoint)
    return app


def test_run_in_b_joins_the_trace_and_names_the_run_in_a(
        tmp_path: Path, live_server: Any, receiver: OTLPHttpReceiver) -> None:
    root_a, root_b = _repo(tmp_path / "service-a"), _repo(tmp_path / "service-b")
    feed = CollectingProcessor()
    srv_b = live_server(_service_b(root_b, feed))
    srv_a = live_server(_service_a(root_a, feed, srv_b.url, receiver.endpoint))

    resp = requests.post(f"{srv_a.url}/release", timeout=60)
    assert resp.status_code == 200, resp.text
    a_id, b_id = resp.headers["X-Run-Id"], resp.json()["b_run_id"]
    assert feed.wait_for(lambda: {a_id, b_id} <= {r.run_id for r in feed.ended})
    run_a, run_b = feed.by_id(a_id), feed.by_id(b_id)

    # B's run: same trace, parent run carried in W3C Baggage.
    assert run_b.trace_id == run_a.trace_id
    assert run_b.parent_run_id == a_id
    assert run_a.parent_run_id is None

    # The parent chain, as exported: A request > A run > A client > B request > B run.
    assert otel_runs.flush()
    spans = receiver.wait_for(lambda spans: len(
        [s for s in spans if s["trace_id"] == run_a.trace_id]) >= 5 and spans)
    in_trace = {s["span_id"]: s for s in spans if s["trace_id"] == run_a.trace_id}
    b_run = in_trace[run_b.span_id]
    b_request = in_trace[b_run["parent_span_id"]]
    a_client = in_trace[b_request["parent_span_id"]]
    a_run = in_trace[a_client["parent_span_id"]]
    a_request = in_trace[a_run["parent_span_id"]]
    assert (b_request["name"], b_request["kind"]) == ("POST /apply", 2)  # SERVER
    assert (a_client["name"], a_client["kind"]) == ("POST /apply", 3)    # CLIENT
    assert a_run["span_id"] == run_a.span_id
    assert (a_request["name"], a_request["parent_span_id"]) == ("POST /release", None)
    assert b_run["attributes"]["run.parent_id"] == a_id
    assert a_client["attributes"]["run.id"] == a_id

    # Each service's ledger has its own run and not the other's.
    ledger_a, ledger_b = ledger_for(root_a), ledger_for(root_b)
    ledger_a.flush()
    ledger_b.flush()
    stored_a, stored_b = ledger_a.get(a_id), ledger_b.get(b_id)
    assert stored_a is not None and stored_b is not None
    assert ledger_a.get(b_id) is None and ledger_b.get(a_id) is None
    assert stored_b.parent_run_id == a_id and stored_b.trace_id == stored_a.trace_id
    # A's ledger kept the client span opened inside A's run.
    assert any(s["span_id"] == a_client["span_id"] for s in ledger_a.spans(a_id))


def test_without_propagation_b_starts_its_own_trace(
        tmp_path: Path, live_server: Any, receiver: OTLPHttpReceiver) -> None:
    root_b = _repo(tmp_path / "service-b")
    feed = CollectingProcessor()
    srv_b = live_server(_service_b(root_b, feed))
    with otel_runs.tracked_run(tmp_path, "deploy", "deploy:k8s") as run_a:
        resp = requests.post(f"{srv_b.url}/apply", timeout=60)  # no outgoing_headers()
    b_id = resp.headers["X-Run-Id"]
    assert feed.wait_for(lambda: {run_a.run_id, b_id} <= {r.run_id for r in feed.ended})
    assert feed.by_id(b_id).parent_run_id is None
    assert feed.by_id(b_id).trace_id != feed.by_id(run_a.run_id).trace_id
