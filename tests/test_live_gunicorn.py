"""Live runs across gunicorn workers (real gunicorn, ``-k gthread``, 3 workers, no Redis):
every worker reads every worker's journal, so a run is found at once by any of them,
running runs are listed everywhere, and a killed worker's run shows ``interrupted``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import git, wait_until
from gunicorn_server import GunicornServer

from otel_runs.ledger._journal_view_read import LIVENESS_TTL

CLOSE = {"Connection": "close"}  # a fresh connection each time: any worker may answer

APP = textwrap.dedent('''
    import os
    import time

    from flask import Flask, request

    import otel_runs
    from otel_runs.flask import RunTracking

    app = Flask("live_app")
    app.config["PROJECT_ROOT"] = os.environ["OTEL_RUNS_PROJECT_ROOT"]


    @app.post("/build")
    @otel_runs.run_tracked("build", "build:docker")
    def build():
        return {"ok": True, "summary": "built web", "pid": os.getpid()}


    @app.post("/hold")
    def hold():
        with otel_runs.tracked_run(app.config["PROJECT_ROOT"], "deploy", "deploy:k8s",
                                   summary="long deploy", pid=os.getpid()) as run:
            time.sleep(float(request.args["seconds"]))
        return {"run_id": run.run_id, "pid": os.getpid()}


    @app.get("/pid")
    def pid():
        return {"pid": os.getpid()}


    @app.after_request
    def worker_pid(resp):
        resp.headers["X-Worker-Pid"] = str(os.getpid())
        return resp


    RunTracking(app)
''')


class Gunicorn(GunicornServer):
    """``gunicorn -k gthread --threads 8 --workers N`` serving :data:`APP`."""

    def __init__(self, workdir: Path, root: Path, workers: int) -> None:
        self.root = root
        super().__init__(workdir, "live_app", APP, workers, {"OTEL_RUNS_PROJECT_ROOT": str(root)})
        # every worker up (each answers /pid), so reads spread over all of them
        wait_until(lambda: len(self.worker_pids(12)) == workers, timeout=30, interval=0.1)

    def worker_pids(self, tries: int) -> set[int]:
        return {requests.get(self.url + "/pid", headers=CLOSE, timeout=10).json()["pid"]
                for _ in range(tries)}

    def get(self, path: str) -> requests.Response:
        """GET on a fresh connection."""
        return requests.get(self.url + path, headers=CLOSE, timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Gunicorn]:
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "README").write_text("x\n")
    git(root, "add", "README")
    git(root, "commit", "-q", "-m", "init")
    srv = Gunicorn(tmp_path, root, 3)
    yield srv
    srv.stop()


def _hold(srv: Gunicorn, seconds: float) -> tuple[threading.Thread, dict[str, Any]]:
    """POST /hold in a thread (the request lasts ``seconds``)."""
    out: dict[str, Any] = {}

    def post() -> None:
        try:
            out["resp"] = requests.post(f"{srv.url}/hold?seconds={seconds}", headers=CLOSE,
                                        timeout=seconds + 30)
        except requests.RequestException as exc:  # (its worker killed)
            out["error"] = exc

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, out


def _running(srv: Gunicorn) -> list[dict[str, Any]]:
    resp = srv.get("/api/runs/recent?status=running")
    assert resp.status_code == 200, resp.text
    return resp.json()["runs"]


def test_a_finished_run_is_found_at_once_by_every_worker(server: Gunicorn) -> None:
    reads_elsewhere = 0
    for _ in range(30):
        resp = requests.post(server.url + "/build", headers=CLOSE, timeout=10)
        assert resp.status_code == 200
        run_id, writer = resp.headers["X-Run-Id"], resp.json()["pid"]
        for _ in range(6):  # at once, each on a fresh connection
            read = server.get(f"/api/runs/{run_id}")
            assert read.status_code == 200, (read.status_code, read.text)
            assert read.json()["run"]["status"] == "ok"
            reads_elsewhere += int(read.headers["X-Worker-Pid"]) != writer
    assert reads_elsewhere > 0, "every read was answered by the worker that ran the action"


def test_a_running_run_is_listed_by_every_worker_and_the_cli(server: Gunicorn) -> None:
    thread, out = _hold(server, 4)
    found = wait_until(lambda: _running(server), timeout=10, interval=0.05)
    seen_at = time.monotonic()  # the run started before this: it runs until >= seen_at + 4 s
    run_id, holder = found[0]["run_id"], found[0]["metadata"]["pid"]
    assert found[0]["status"] == "running" and found[0]["type"] == "deploy"
    cli = subprocess.Popen([sys.executable, "-m", "otel_runs", "list", "--status", "running",
                            "--project", str(server.root), "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    reads = 0
    while time.monotonic() < seen_at + 3.0:
        resp = server.get("/api/runs/recent?status=running")
        assert [r["run_id"] for r in resp.json()["runs"]] == [run_id]
        detail = server.get(f"/api/runs/{run_id}")
        assert detail.status_code == 200 and detail.json()["run"]["status"] == "running"
        workers.add(int(resp.headers["X-Worker-Pid"]))
        reads += 1
        time.sleep(0.1)
    out_text, err = cli.communicate(timeout=30)
    assert cli.returncode == 0, err
    listed = json.loads(out_text)
    assert [(r["run_id"], r["status"]) for r in listed] == [(run_id, "running")]
    assert reads >= 10 and workers - {holder}, "no other worker answered"
    thread.join(timeout=30)
    assert out["resp"].status_code == 200 and out["resp"].json()["run_id"] == run_id
    assert server.get(f"/api/runs/{run_id}").json()["run"]["status"] == "ok"
    assert _running(server) == []


def test_a_killed_worker_s_run_is_interrupted_on_the_others(server: Gunicorn) -> None:
    thread, _ = _hold(server, 60)
    found = wait_until(lambda: _running(server), timeout=10, interval=0.05)
    run_id, victim = found[0]["run_id"], found[0]["metadata"]["pid"]
    os.kill(victim, signal.SIGKILL)

    def interrupted() -> bool:
        run = server.get(f"/api/runs/{run_id}").json()["run"]
        return run["status"] == "interrupted"

    # A worker that saw the writer alive believes it for up to LIVENESS_TTL, then finds it
    # dead, for good: once one read says so, every worker does after that long.
    wait_until(interrupted, timeout=15, interval=0.1)
    time.sleep(LIVENESS_TTL + 0.2)
    for _ in range(12):  # (gunicorn restarts the killed worker meanwhile)
        resp = server.get(f"/api/runs/{run_id}")
        run = resp.json()["run"]
        assert int(resp.headers["X-Worker-Pid"]) != victim
        assert run["status"] == "interrupted" and run["ended_at"] is None
        assert run["summary"] == f"process {victim} exited before the run finished"
        assert run["events"][-1]["name"] == "interrupted"
    assert _running(server) == []
    thread.join(timeout=30)
