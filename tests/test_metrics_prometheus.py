"""A real Prometheus scrapes a real server's ``/metrics`` (tracked routes on 127.0.0.1);
the test asks Prometheus's HTTP API for the counts, the histogram buckets, the errors and
the ledger's runs by type and status, also across a restart of the server.

Needs Debian's ``prometheus`` package (``apt-get install prometheus``; ``.ci/run``
installs it): skipped without it, except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, port_open, stop_child, wait_until

pytest.importorskip("opentelemetry.exporter.prometheus",
                    reason="the 'prometheus' extra is not installed (pip install -e '.[test]')")

PROMETHEUS = shutil.which("prometheus")

SERVER = '''
import sys, time
from flask import Flask, jsonify
from werkzeug.serving import make_server
import otel_runs
from otel_runs.flask import RunTracking

root, port = sys.argv[1], int(sys.argv[2])
app = Flask("prom_e2e")
app.config["PROJECT_ROOT"] = root
app.config["OTEL_RUNS_METRICS_ENDPOINT"] = "1"

@app.post("/apply")
@otel_runs.run_tracked("deploy", "deploy:k8s")
def apply():
    return jsonify(ok=True, summary="applied")

@app.post("/broken")
@otel_runs.run_tracked("deploy", "deploy:k8s")
def broken():
    return jsonify(ok=False, summary="rejected")

@app.post("/slow")
@otel_runs.run_tracked("deploy", "deploy:slow")
def slow():
    time.sleep(0.3)
    return jsonify(ok=True)

RunTracking(app)
make_server("127.0.0.1", port, app, threaded=True).serve_forever()
'''


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    if PROMETHEUS is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the prometheus binary is missing in CI (.ci/run installs Debian's "
                        "prometheus package)")
        pytest.skip("prometheus binary not found (apt-get install prometheus; .ci/run does)")
    return PROMETHEUS


class Server:
    """The app above in a process of its own, on 127.0.0.1:``port``."""

    def __init__(self, workdir: Path, root: Path, port: int) -> None:
        script = workdir / "prom_e2e_app.py"
        script.write_text(SERVER)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = (workdir / f"server-{port}.log").open("ab")
        env = {**os.environ, "OTEL_SERVICE_NAME": "prom-e2e", "OTEL_RUNS_COMMIT_INTERVAL": "0",
               "OTEL_RUNS_METRICS_LEDGER_INTERVAL": "1"}
        self.proc = subprocess.Popen([sys.executable, str(script), str(root), str(port)],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.proc.poll() is not None or port_open(port), timeout=30)
        assert self.proc.poll() is None, "the server exited"

    def post(self, path: str) -> int:
        req = urllib.request.Request(self.url + path, data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)

    def stop(self) -> None:
        stop_child(self.proc)
        self.log.close()


class Prometheus:
    """A real Prometheus scraping ``target`` every second, its API on 127.0.0.1."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: otel-runs\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self._ready, timeout=60, interval=0.2)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited (see prometheus.log)"
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> dict[str, float]:
        """An instant query: each series' labels (as sorted ``k=v`` text) -> value."""
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return {",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())
                         if k != "__name__"): float(r["value"][1])
                for r in body["data"]["result"]}

    def value(self, promql: str) -> float | None:
        """The one value of an instant query (None: no series)."""
        found = self.query(promql)
        assert len(found) <= 1, found
        return next(iter(found.values()), None)

    def wait_for(self, promql: str, expected: float, timeout: float = 60) -> None:
        wait_until(lambda: self.value(promql) == expected, timeout=timeout, interval=0.5)

    def stop(self) -> None:
        stop_child(self.proc)
        self.log.close()


@pytest.fixture
def stack(prometheus_bin: str, git_repo: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    port = free_port()
    server = Server(tmp_path, git_repo, port)
    prometheus = Prometheus(prometheus_bin, tmp_path, f"127.0.0.1:{port}")
    parts: dict[str, Any] = {"server": server, "prometheus": prometheus}
    try:
        yield parts
    finally:
        parts["server"].stop()
        prometheus.stop()


def test_prometheus_scrapes_run_counts_and_buckets(stack: dict[str, Any], git_repo: Path,
                                                   tmp_path: Path) -> None:
    server: Server = stack["server"]
    prom: Prometheus = stack["prometheus"]
    for path in ["/apply"] * 4 + ["/broken"] * 2 + ["/slow"]:
        assert server.post(path) == 200
    job = 'job="otel-runs"'
    prom.wait_for(f'sum(cicd_pipeline_run_duration_seconds_count{{{job}}})', 7)
    by_result = prom.query(f"sum by (cicd_pipeline_name, cicd_pipeline_result) "
                           f"(cicd_pipeline_run_duration_seconds_count{{{job}}})")
    assert by_result == {"cicd_pipeline_name=deploy:k8s,cicd_pipeline_result=success": 4,
                         "cicd_pipeline_name=deploy:k8s,cicd_pipeline_result=failure": 2,
                         "cicd_pipeline_name=deploy:slow,cicd_pipeline_result=success": 1}
    bucket = "cicd_pipeline_run_duration_seconds_bucket"
    # The slow run took at least 0.3 s: it is in no bucket up to 0.25 s, and in +Inf.
    slow = f'{bucket}{{{job},cicd_pipeline_name="deploy:slow"'
    assert prom.value(f'{slow},le="0.25"}}') == 0
    assert prom.value(f'{slow},le="+Inf"}}') == 1
    assert prom.value(f'sum({bucket}{{{job},cicd_pipeline_name="deploy:k8s",le="+Inf"}})') == 6
    les = {k.split("le=")[1].split(",")[0] for k in prom.query(
        f'{bucket}{{{job},cicd_pipeline_name="deploy:slow"}}')}
    assert {"0.005", "0.25", "1.0", "3600.0", "+Inf"} <= les
    assert prom.value(f'sum(cicd_pipeline_run_errors_total{{{job},error_type="_OTHER"}})') == 2
    service = prom.query(f"count by (service_name, run_type) "
                         f"(cicd_pipeline_run_duration_seconds_count{{{job}}})")
    assert list(service) == ["run_type=deploy,service_name=prom-e2e"]
    # The ledger's committed runs by type and status (counted from the branch).
    ledger = 'otel_runs_ledger_runs{job="otel-runs",run_type="deploy",run_status="%s"}'
    prom.wait_for(ledger % "ok", 5)
    prom.wait_for(ledger % "failed", 2)
    assert prom.value(f'otel_runs_ledger_pending{{{job}}}') == 0
    assert prom.value(f'otel_runs_runs_journaled_total{{{job}}}') == 7

    # Restart the server: the process's histograms start again (Prometheus sees a counter
    # reset), the ledger's counts do not start from zero.
    started = prom.value(f'process_start_time_seconds{{{job}}}')
    server.stop()
    stack["server"] = server = Server(tmp_path, git_repo, server.port)
    wait_until(lambda: prom.value(f'process_start_time_seconds{{{job}}}') not in (None, started),
               timeout=60, interval=0.5)
    prom.wait_for(ledger % "ok", 5)
    assert server.post("/apply") == 200
    prom.wait_for(f'sum(cicd_pipeline_run_duration_seconds_count{{{job}}})', 1)
    prom.wait_for(ledger % "ok", 6)
    assert prom.value(ledger % "failed") == 2
