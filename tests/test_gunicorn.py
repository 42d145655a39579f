"""The live feed under gunicorn's ``gthread`` workers: real gunicorn processes on 127.0.0.1."""

from __future__ import annotations

import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from conftest import git, wait_until
from gunicorn_server import GunicornServer

from otel_runs.live import parse_event_id

APP = textwrap.dedent('''
    import os

    from flask import Flask

    import otel_runs
    from otel_runs.flask import RunTracking

    app = Flask("gunicorn_app")
    app.config["PROJECT_ROOT"] = os.environ["OTEL_RUNS_PROJECT_ROOT"]
    app.config["OTEL_RUNS_SSE_HEARTBEAT"] = 0.5
    app.config["OTEL_RUNS_SSE_LINGER"] = 0.0


    @app.post("/build")
    @otel_runs.run_tracked("build", "build:docker")
    def build():
        return {"ok": True, "summary": "built web", "pid": os.getpid()}


    RunTracking(app)
''')


class Gunicorn(GunicornServer):
    """``gunicorn -k gthread`` serving the app above from ``workdir``."""

    def __init__(self, workdir: Path, workers: int, env: dict[str, str]) -> None:
        super().__init__(workdir, "gunicorn_app", APP, workers, env)


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def start(workers: int, **env: str) -> Gunicorn:
        srv = Gunicorn(tmp_path, workers, env)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


class Stream:
    """An open ``/api/events`` response read line by line in a thread."""

    def __init__(self, url: str) -> None:
        self.lines: list[str] = []
        self.resp = requests.get(url + "/api/events", stream=True, timeout=30)
        assert self.resp.status_code == 200
        threading.Thread(target=self._read, daemon=True).start()
        wait_until(lambda: ": connected" in self.lines, timeout=10)

    def _read(self) -> None:
        try:
            for line in self.resp.iter_lines(decode_unicode=True):
                self.lines.append(line)
        except Exception:  # closed by the test
            pass

    def events(self) -> list[tuple[str, str, str]]:
        """(type, id, data) of each complete event so far."""
        out, lines = [], list(self.lines)
        for i in range(len(lines) - 2):
            if lines[i].startswith("event: ") and lines[i + 1].startswith("id: ") \
                    and lines[i + 2].startswith("data: "):
                out.append((lines[i][7:], lines[i + 1][4:], lines[i + 2][6:]))
        return out

    def has(self, event_type: str, run_id: str) -> bool:
        return any(t == event_type and f'"run_id":"{run_id}"' in d for t, _, d in self.events())

    def close(self) -> None:
        self.resp.close()


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "README").write_text("x\n")
    git(root, "add", "README")
    git(root, "commit", "-q", "-m", "init")
    return root


def test_live_feed_and_api_under_gunicorn_gthread(tmp_path: Path, gunicorn) -> None:  # noqa: ANN001
    """One gthread worker holds two open streams (a thread each) and still serves
    tracked requests; both streams get every run; the API reads them from the ledger."""
    root = _project(tmp_path)
    srv = gunicorn(1, OTEL_RUNS_PROJECT_ROOT=str(root))
    first, second = Stream(srv.url), Stream(srv.url)
    run_ids = []
    for _ in range(3):
        resp = requests.post(srv.url + "/build", timeout=10)
        assert resp.status_code == 200 and resp.json()["run_id"] == resp.headers["X-Run-Id"]
        run_ids.append(resp.headers["X-Run-Id"])
    for stream in (first, second):
        wait_until(lambda s=stream: all(s.has("run:completed", r) for r in run_ids), timeout=20)
        assert all(stream.has("run:started", r) for r in run_ids)
    first.close()
    second.close()
    for run_id in run_ids:
        detail = requests.get(f"{srv.url}/api/runs/{run_id}", timeout=10)
        assert detail.status_code == 200
        assert detail.json()["run"]["status"] == "ok"
    assert requests.get(srv.url + "/api/runs/not-an-id", timeout=10).status_code == 400


def test_two_gunicorn_workers_share_one_feed_through_redis(
        tmp_path: Path, redis_url: str, gunicorn) -> None:  # noqa: ANN001  (redis stops last)
    """Two gthread worker processes: a stream held by one of them sees the runs of
    both, in one increasing id sequence."""
    root = tmp_path / "project"
    root.mkdir()
    srv = gunicorn(2, OTEL_RUNS_PROJECT_ROOT=str(root), OTEL_RUNS_LEDGER="0",
                   OTEL_RUNS_REDIS_URL=redis_url)
    stream = Stream(srv.url)
    runs: dict[str, int] = {}
    for _ in range(60):  # bounded: the kernel spreads new connections over both workers
        resp = requests.post(srv.url + "/build", headers={"Connection": "close"}, timeout=10)
        assert resp.status_code == 200
        runs[resp.headers["X-Run-Id"]] = resp.json()["pid"]
        if len(set(runs.values())) == 2 and len(runs) >= 6:
            break
    assert len(set(runs.values())) == 2, "every request went to one worker"
    wait_until(lambda: all(stream.has("run:completed", r) for r in runs), timeout=30)
    ids = [parse_event_id(i) for t, i, _ in stream.events() if t.startswith("run:")]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    stream.close()
