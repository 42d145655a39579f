"""OTLP export through the official exporters to real receivers on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CollectingProcessor
from flask import Flask
from opentelemetry import trace
from otlp_receiver import OTLPGrpcReceiver, OTLPHttpReceiver, run_spans

import otel_runs
from otel_runs.exporters import otlp
from otel_runs.flask import RunTracking


@pytest.fixture(autouse=True)
def _fast_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")


@pytest.fixture(params=["http/protobuf", "grpc"])
def receiver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A real OTLP receiver for the protocol, with the protocol variable set to match."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", request.param)
    recv = OTLPGrpcReceiver() if request.param == "grpc" else OTLPHttpReceiver()
    recv.protocol = request.param
    yield recv
    otel_runs.shutdown()
    recv.stop()


# -- when is OTLP on, and how ------------------------------------------------------------

def test_off_when_nothing_asks_for_it() -> None:
    assert otlp.otlp_processor(None) is None
    assert otlp.otlp_processor("") is None


def test_on_from_the_standard_endpoint_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
                        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")]:
        monkeypatch.setenv(name, value)
        proc = otlp.otlp_processor(None)
        assert isinstance(proc, otlp.OTLPSpanProcessor)
        assert proc.quiet_exporter.endpoint == "http://127.0.0.1:9/v1/traces"
        proc.shutdown()
        monkeypatch.delenv(name)


def test_traces_exporter_none_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert otlp.otlp_processor(None) is None


def test_protocol_from_variables_with_spec_default(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    assert otlp.otlp_protocol() == "http/protobuf"
    assert isinstance(otlp.otlp_exporter("http://127.0.0.1:9"), Http)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert isinstance(otlp.otlp_exporter("http://127.0.0.1:9"), Grpc)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    assert otlp.otlp_protocol() == "http/protobuf"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
    with caplog.at_level(logging.WARNING, logger="otel_runs.exporters.otlp"):
        assert otlp.otlp_protocol() == "http/protobuf"
    assert "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='http/json' is not supported" in caplog.text


def test_endpoint_argument_is_a_base_url() -> None:
    exp = otlp.otlp_exporter("http://collector:4318", protocol="http/protobuf")
    assert otlp.exporter_endpoint(exp) == "http://collector:4318/v1/traces"
    exp = otlp.otlp_exporter("http://collector:4318/v1/traces", protocol="http/protobuf")
    assert otlp.exporter_endpoint(exp) == "http://collector:4318/v1/traces"


def test_timeout_from_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert otlp.otlp_timeout() == otlp.DEFAULT_TIMEOUT_S
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "3")
    assert otlp.otlp_timeout() == 3.0
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1.5")
    assert otlp.otlp_timeout() == 1.5
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon")
    assert otlp.otlp_timeout() == otlp.DEFAULT_TIMEOUT_S


def test_queue_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
    proc = otlp.otlp_processor("http://127.0.0.1:9")
    assert proc is not None
    try:
        assert proc.max_queue_size == 64
    finally:
        proc.shutdown()


# -- export to real receivers ------------------------------------------------------------

def _app(tmp_path: Path, endpoint: str, proc: CollectingProcessor) -> Flask:
    app = Flask("otlp_app")
    app.config["PROJECT_ROOT"] = str(tmp_path)
    tracer = trace.get_tracer("test.otlp")

    @app.post("/deploy/<name>")
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def deploy(name: str) -> Any:
        with tracer.start_as_current_span("kubectl apply") as span:
            span.set_attribute("k8s.deployment.name", name)
        otel_runs.current_run().add_event("rolled_out", replicas=3)  # type: ignore[union-attr]
        return {"ok": True, "summary": f"deployed {name}"}

    @app.post("/plan")
    @otel_runs.run_tracked("plan", "plan:terraform")
    def plan() -> Any:
        return {"ok": False, "summary": "3 errors"}, 422

    RunTracking(app, ledger=False, processors=[proc], otlp_endpoint=endpoint,
                service_name="otlp-test")
    return app


def test_run_request_and_child_spans_arrive_with_run_attributes(
        tmp_path: Path, receiver: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
    proc = CollectingProcessor()
    client = _app(tmp_path, receiver.endpoint, proc).test_client()
    resp = client.post("/deploy/web")
    assert resp.status_code == 200
    run_id = resp.headers["X-Run-Id"]
    assert otel_runs.flush()

    def the_run(spans: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((s for s in run_spans(spans) if s["attributes"]["run.id"] == run_id), None)

    run = receiver.wait_for(the_run)
    trace_id = run["trace_id"]
    same_trace = receiver.wait_for(
        lambda spans: len([s for s in spans if s["trace_id"] == trace_id]) >= 3 and
        [s for s in spans if s["trace_id"] == trace_id])
    by_name = {s["name"]: s for s in same_trace}
    request, child = by_name["POST /deploy/<name>"], by_name["kubectl apply"]

    attrs = run["attributes"]
    assert run["name"] == "deploy:k8s"
    assert (attrs["run.type"], attrs["run.subtype"], attrs["run.status"], attrs["run.summary"]) == (
        "deploy", "deploy:k8s", "ok", "deployed web")
    # the project's local path routes the run inside the process and never leaves it
    assert str(tmp_path.resolve()) not in json.dumps(run) and "run.project_root" not in attrs
    assert [e["name"] for e in run["events"]] == ["rolled_out"]
    assert run["parent_span_id"] == request["span_id"]
    assert request["parent_span_id"] is None and request["kind"] == 2  # SERVER
    assert child["parent_span_id"] == run["span_id"]
    assert child["attributes"]["run.id"] == run_id
    assert child["attributes"]["k8s.deployment.name"] == "web"
    assert "run.type" not in child["attributes"]
    # the process-wide provider's resource (service_name= applies only if otel-runs made it)
    provider_resource = trace.get_tracer_provider().resource  # type: ignore[attr-defined]
    assert run["resource"]["service.name"] == provider_resource.attributes["service.name"]
    assert run["headers"].get("x-tenant") == "acme"
    # what the exporter sent is what the run processors saw
    ended = proc.by_id(run_id)
    assert (ended.trace_id, ended.span_id) == (run["trace_id"], run["span_id"])


def test_failed_run_is_an_error_span(tmp_path: Path, receiver: Any) -> None:
    client = _app(tmp_path, receiver.endpoint, CollectingProcessor()).test_client()
    run_id = client.post("/plan").headers["X-Run-Id"]
    otel_runs.flush()
    run = receiver.wait_for(lambda spans: next(
        (s for s in run_spans(spans) if s["attributes"]["run.id"] == run_id), None))
    assert run["attributes"]["run.status"] == "failed"
    assert run["attributes"]["run.summary"] == "3 errors"
    assert run["status_code"] == 2  # STATUS_CODE_ERROR
    assert run["status_message"] == "3 errors"


# -- the standard OTEL_* variables, in a fresh process (one TracerProvider per process) ----

_CHILD = r"""
import json, sys
from opentelemetry import context, propagate
import otel_runs
from otel_runs.exporters import RunProcessor

runs = []
class Keep(RunProcessor):
    def on_run_end(self, run):
        runs.append(run.to_dict())

otel_runs.configure(ledger=False, processors=[Keep()])
with otel_runs.tracked_run(None, "deploy", "deploy:k8s", summary="root run"):
    pass
token = context.attach(propagate.extract({"traceparent": sys.argv[1]}))
with otel_runs.tracked_run(None, "deploy", "deploy:k8s", summary="under a sampled parent"):
    pass
context.detach(token)
otel_runs.flush()
otel_runs.shutdown()
print(json.dumps(runs))
"""


def _run_child(tmp_path: Path, env: dict[str, str], traceparent: str) -> list[dict[str, Any]]:
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("OTEL_") and k != "PYTEST_CURRENT_TEST"}
    full_env.update({"OTEL_RUNS_PROJECT_ROOT": str(tmp_path), "OTEL_RUNS_LEDGER": "0",
                     "OTEL_BSP_SCHEDULE_DELAY": "50", **env})
    proc = subprocess.run([sys.executable, "-c", _CHILD, traceparent], env=full_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_service_resource_and_sampler_variables_in_a_fresh_process(tmp_path: Path) -> None:
    recv = OTLPHttpReceiver()
    try:
        remote_trace, remote_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        runs = _run_child(tmp_path, {
            "OTEL_EXPORTER_OTLP_ENDPOINT": recv.endpoint,
            "OTEL_SERVICE_NAME": "billing",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci,team=ops",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0",
        }, f"00-{remote_trace}-{remote_span}-01")
        # Both runs were recorded for run processors, the sampled-out one too.
        assert [r["summary"] for r in runs] == ["root run", "under a sampled parent"]
        assert all(r["service"] == "billing" for r in runs)
        sampled_out, sampled = runs
        assert sampled["trace_id"] == remote_trace
        # Only the sampled run reached the exporter, with the configured resource.
        run = recv.wait_for(lambda spans: next(
            (s for s in run_spans(spans) if s["attributes"]["run.id"] == sampled["run_id"]), None))
        assert run["parent_span_id"] == remote_span
        assert run["resource"]["service.name"] == "billing"
        assert run["resource"]["deployment.environment"] == "ci"
        assert run["resource"]["team"] == "ops"
        exported_ids = {s["attributes"].get("run.id") for s in recv.snapshot()}
        assert sampled_out["run_id"] not in exported_ids
        assert sampled_out["trace_id"] not in {s["trace_id"] for s in recv.snapshot()}
    finally:
        recv.stop()


def test_grpc_protocol_variable_in_a_fresh_process(tmp_path: Path) -> None:
    recv = OTLPGrpcReceiver()
    try:
        runs = _run_child(tmp_path, {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": recv.endpoint,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0ken",
        }, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        ids = {r["run_id"] for r in runs}
        got = recv.wait_for(lambda spans: len(
            {s["attributes"].get("run.id") for s in run_spans(spans)} & ids) == 2 and spans)
        assert got[0]["headers"].get("authorization") == "Bearer t0ken"
    finally:
        recv.stop()
