"""End to end against a real third-party OTLP receiver: Arize Phoenix on 127.0.0.1.

Heavy (Phoenix is ~850 MB installed, ~2 min to install): runs only with
``OTEL_RUNS_TEST_PHOENIX=1``. Phoenix lives in its own virtualenv so its
dependencies cannot change this environment's OpenTelemetry versions:
``OTEL_RUNS_PHOENIX_PYTHON`` is that venv's python (default: this python).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import CollectingProcessor, free_port, stop_child
from opentelemetry import trace

import otel_runs

pytestmark = [
    pytest.mark.phoenix,
    pytest.mark.skipif(os.environ.get("OTEL_RUNS_TEST_PHOENIX") != "1",
                       reason="set OTEL_RUNS_TEST_PHOENIX=1 (and OTEL_RUNS_PHOENIX_PYTHON) to run"),
]

# Phoenix binds its gRPC receiver to [::]; tests bind 127.0.0.1 only, so the launcher
# narrows that one address before starting ``phoenix serve`` unchanged.
_LAUNCHER = r"""
import sys
import grpc.aio._server as aio_server
_add = aio_server.Server.add_insecure_port
def add_insecure_port(self, address):
    return _add(self, address.replace("[::]", "127.0.0.1"))
aio_server.Server.add_insecure_port = add_insecure_port
from phoenix.server.main import main
sys.argv = ["phoenix", "serve"]
sys.exit(main())
"""


class Phoenix:
    def __init__(self, workdir: Path) -> None:
        python = os.environ.get("OTEL_RUNS_PHOENIX_PYTHON") or "python"
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PHOENIX_"))}
        env.update({
            "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(self.http_port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port), "PHOENIX_WORKING_DIR": str(workdir),
            "PHOENIX_TELEMETRY_ENABLED": "false", "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
            "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
        })
        self.log = open(workdir / "phoenix.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([python, "-c", _LAUNCHER], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"phoenix exited with {self.proc.returncode}; see {self.log.name}")
            try:
                ok = requests.get(f"{self.url}/healthz", timeout=2).ok
                with socket.create_connection(("127.0.0.1", self.grpc_port), timeout=1):
                    pass
                if ok:
                    return
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"phoenix not ready within {timeout}s; see {self.log.name}")

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        resp = requests.get(f"{self.url}/v1/projects/default/spans",
                            params={"trace_id": trace_id, "limit": 100}, timeout=10)
        resp.raise_for_status()
        return list(resp.json()["data"])

    def stop(self) -> None:
        stop_child(self.proc, 30)
        self.log.close()


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    server = Phoenix(tmp_path_factory.mktemp("phoenix"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _attrs(span: dict[str, Any]) -> dict[str, Any]:
    """Phoenix's OTLP-JSON attributes (or a plain dict) as a flat dict."""
    raw = span.get("attributes") or {}
    if isinstance(raw, dict):
        return raw
    out = {}
    for kv in raw:
        value = kv.get("value") or {}
        out[kv["key"]] = next(iter(value.values()), None) if value else None
    return out


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_run_arrives_in_phoenix_and_is_found_by_trace_id(
        protocol: str, phoenix: Phoenix, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    endpoint = phoenix.url if protocol == "http/protobuf" else f"http://127.0.0.1:{phoenix.grpc_port}"
    feed = CollectingProcessor()
    otel_runs.configure(tmp_path, ledger=False, processors=[feed], otlp_endpoint=endpoint)
    with otel_runs.tracked_run(None, "deploy", "deploy:k8s", summary=f"via {protocol}") as run:
        with trace.get_tracer("test.phoenix").start_as_current_span("kubectl apply"):
            pass
    assert otel_runs.flush()
    ended = feed.by_id(run.run_id)

    deadline = time.monotonic() + 60
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(found) < 2:
        found = phoenix.spans(ended.trace_id)
        time.sleep(0.5)
    by_name = {s["name"]: s for s in found}
    assert set(by_name) >= {"deploy:k8s", "kubectl apply"}, found
    attrs = _attrs(by_name["deploy:k8s"])
    assert attrs["run.id"] == run.run_id
    assert (attrs["run.type"], attrs["run.subtype"], attrs["run.status"]) == ("deploy", "deploy:k8s", "ok")
    assert attrs["run.summary"] == f"via {protocol}"
    assert by_name["deploy:k8s"]["context"] == {"trace_id": ended.trace_id, "span_id": ended.span_id}
    assert by_name["kubectl apply"]["parent_id"] == ended.span_id
    assert _attrs(by_name["kubectl apply"])["run.id"] == run.run_id
