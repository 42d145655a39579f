"""One live feed per host without Redis: real gunicorn ``gthread`` workers on 127.0.0.1
sharing the project's feed file, ``otel-runs serve`` and ``otel-runs tail`` in processes
of their own, a real browser."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import free_port, port_open, stop_child, wait_until
from gunicorn_server import GunicornServer

from otel_runs.live import parse_event_id

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

APP = textwrap.dedent('''
    import os

    from flask import Flask

    import otel_runs
    from otel_runs.flask import RunTracking

    app = Flask("feed_app")
    app.config["PROJECT_ROOT"] = os.environ["OTEL_RUNS_PROJECT_ROOT"]
    app.config["OTEL_RUNS_SSE_HEARTBEAT"] = 0.5
    app.config["OTEL_RUNS_SSE_LINGER"] = 0.0


    @app.post("/build")
    @otel_runs.run_tracked("build", "build:docker")
    def build():
        return {"ok": True, "summary": "built web", "pid": os.getpid()}


    @app.after_request
    def worker_pid(resp):  # which worker answered (the stream's too)
        resp.headers["X-Worker-Pid"] = str(os.getpid())
        return resp


    RunTracking(app)
''')


class Gunicorn(GunicornServer):
    """``gunicorn -k gthread`` serving the app above from ``workdir`` (no Redis)."""

    def __init__(self, workdir: Path, workers: int, env: dict[str, str],
                 graceful_timeout: int = 2) -> None:
        super().__init__(workdir, "feed_app", APP, workers, {"PYTHONPATH": str(ROOT), **env},
                         threads=16, graceful_timeout=graceful_timeout,
                         without=("OTEL_RUNS_REDIS_URL",))


@pytest.fixture
def project(git_repo: Path) -> Path:
    return git_repo


@pytest.fixture
def gunicorn(tmp_path: Path, project: Path) -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def start(workers: int = 3, **kwargs: Any) -> Gunicorn:
        srv = Gunicorn(tmp_path, workers, {"OTEL_RUNS_PROJECT_ROOT": str(project)}, **kwargs)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


class Refused(Exception):
    """The stream was refused (503: the worker's streams are all taken for now)."""


class Stream:
    """An ``/api/events`` response on a connection of its own, read in a thread."""

    def __init__(self, url: str, last_event_id: str | None = None) -> None:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self.lines: list[str] = []
        self.resp = requests.get(url + "/api/events", stream=True, timeout=30, headers=headers)
        if self.resp.status_code == 503:
            self.resp.close()
            raise Refused()
        assert self.resp.status_code == 200
        self.pid = int(self.resp.headers["X-Worker-Pid"])
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        wait_until(lambda: ": connected" in self.lines, timeout=10)

    def _read(self) -> None:
        try:
            for line in self.resp.iter_lines(decode_unicode=True):
                self.lines.append(line)
        except Exception:  # closed by the test, or by the server
            pass

    def events(self) -> list[tuple[str, str, str]]:
        """(type, id, data) of each complete event so far."""
        out, lines = [], list(self.lines)
        for i in range(len(lines) - 2):
            if lines[i].startswith("event: ") and lines[i + 1].startswith("id: ") \
                    and lines[i + 2].startswith("data: "):
                out.append((lines[i][7:], lines[i + 1][4:], lines[i + 2][6:]))
        return out

    def run_ids(self) -> list[str]:
        """Ids of the run events so far, in arrival order."""
        return [i for t, i, _ in self.events() if t.startswith("run:")]

    def completed(self) -> set[str]:
        return {json.loads(d)["run_id"] for t, _, d in self.events() if t == "run:completed"}

    @property
    def ended(self) -> bool:
        return not self.thread.is_alive()

    def close(self) -> None:
        fp = getattr(getattr(self.resp.raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
        if sock is not None:  # wakes the reader blocked in recv()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.resp.close()
        self.thread.join(10)


def _streams_on_several_workers(url: str, count: int, attempts: int = 30) -> list[Stream]:
    """``count`` streams, each on its own connection, on at least two workers (when the
    kernel spreads the connections within ``attempts``)."""
    kept: list[Stream] = []
    for _ in range(attempts):
        try:
            stream = Stream(url)
        except Refused:  # the ones closed here are released within a heartbeat
            time.sleep(0.5)
            continue
        pids = {s.pid for s in kept}
        if len(kept) < count - 1 or stream.pid not in pids or len(pids) >= 2:
            kept.append(stream)
        else:
            stream.close()  # the last one must add a worker
        if len(kept) >= count:
            break
        time.sleep(0.05)
    return kept


def _post(url: str) -> tuple[str, int]:
    resp = requests.post(url + "/build", headers={"Connection": "close"}, timeout=30)
    assert resp.status_code == 200
    return resp.headers["X-Run-Id"], int(resp.json()["pid"])


def test_every_stream_on_every_worker_gets_every_run_in_one_order_and_resumes_exactly(
        gunicorn) -> None:  # noqa: ANN001
    srv = gunicorn(3)
    streams = _streams_on_several_workers(srv.url, 4)
    assert len(streams) >= 4 and len({s.pid for s in streams}) >= 2, "one worker got all"
    runs = dict(_post(srv.url) for _ in range(20))
    for _ in range(60):  # (the kernel picks the worker: more actions until two served some)
        if len(set(runs.values())) >= 2:
            break
        run_id, pid = _post(srv.url)
        runs[run_id] = pid
    assert len(set(runs.values())) >= 2, "every request went to one worker"
    events = 2 * len(runs)  # (each run's run:started and run:completed)
    for stream in streams:
        wait_until(lambda s=stream: set(runs) <= s.completed(), timeout=30)
    orders = [s.run_ids() for s in streams]
    assert len(orders[0]) == events and all(order == orders[0] for order in orders)
    keys = [parse_event_id(i) for i in orders[0]]
    assert keys == sorted(keys) and len(set(keys)) == events

    # A stream cut after k events resumes with Last-Event-ID on a fresh connection
    # (on another worker): it replays exactly what it missed.
    ref, cut = streams[0], streams[1]
    before = len(cut.run_ids())
    poster = threading.Thread(target=lambda: [runs.setdefault(*_post(srv.url))
                                              for _ in range(10)])
    poster.start()
    wait_until(lambda: len(cut.run_ids()) >= before + 7, timeout=30)
    cut.close()
    poster.join(60)
    for _ in range(10):
        run_id, pid = _post(srv.url)
        runs[run_id] = pid
    got = cut.run_ids()
    assert before + 7 <= len(got) < before + 40
    resumed = None
    for _ in range(20):  # on another worker than the cut stream's, if the kernel lets us
        try:
            candidate = Stream(srv.url, last_event_id=got[-1])
        except Refused:
            time.sleep(0.5)
            continue
        if candidate.pid != cut.pid:
            resumed = candidate
            break
        candidate.close()
    if resumed is None:
        resumed = Stream(srv.url, last_event_id=got[-1])
    wait_until(lambda: set(runs) <= ref.completed(), timeout=30)
    wait_until(lambda: len(got) + len(resumed.run_ids()) >= len(ref.run_ids()), timeout=30)
    time.sleep(0.5)  # nothing more must come
    assert got + resumed.run_ids() == ref.run_ids()  # no duplicate, no gap, same ids
    for stream in streams + [resumed]:
        stream.close()


def test_serve_in_its_own_process_shows_the_workers_runs_live(
        gunicorn, project: Path, tmp_path: Path) -> None:  # noqa: ANN001
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium; .ci/run does)")
    srv = gunicorn(3)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "OTEL_RUNS_REDIS_URL"}
    serve = subprocess.Popen([sys.executable, "-m", "otel_runs.cli", "--project", str(project),
                              "serve", "--port", str(port)], env={**env, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: serve.poll() is not None or port_open(port), timeout=60)
        assert serve.poll() is None
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"http://127.0.0.1:{port}/runs")
            sync_api.expect(page.locator("#conn")).to_have_attribute("data-state", "live")
            for _ in range(3):  # requests spread over the workers
                run_id, _pid = _post(srv.url)
                row = page.locator(f'#runs-body tr[data-run-id="{run_id}"]')
                sync_api.expect(row).to_have_attribute("data-status", "ok")  # no reload
            page.screenshot(path=str(tmp_path / "serve-live.png"), full_page=True)
            browser.close()
    finally:
        stop_child(serve)


def test_tail_follows_the_feed_without_url_and_the_page_url_with_it(
        gunicorn, project: Path) -> None:  # noqa: ANN001
    srv = gunicorn(3)
    env = {**{k: v for k, v in os.environ.items() if k != "OTEL_RUNS_REDIS_URL"},
           "PYTHONPATH": str(ROOT)}
    tails = {how: subprocess.Popen(
        [sys.executable, "-m", "otel_runs.cli", "--project", str(project), "tail", "--json",
         "--count", "3", "--timeout", "60", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env)
        for how, args in (("feed", []), ("page", ["--url", srv.url + "/runs"]))}
    try:
        for proc in tails.values():
            assert proc.stderr is not None
            assert "following runs from" in proc.stderr.readline()  # subscribed: none missed
        ids = [_post(srv.url)[0] for _ in range(3)]
        for how, proc in tails.items():
            out, _ = proc.communicate(timeout=90)
            assert proc.returncode == 0, how
            lines = [json.loads(line) for line in out.splitlines()]
            got = [(e["event"], e["run"]["run_id"]) for e in lines]
            assert [r for e, r in got if e == "run:completed"] == ids, how  # --count: runs
            for run_id in ids:  # each started line before its completion, once each
                assert got.index(("run:started", run_id)) < got.index(("run:completed", run_id))
            assert len(got) == len(set(got)) == 6, how
    finally:
        for proc in tails.values():
            if proc.poll() is None:
                proc.kill()


def test_gunicorn_with_open_streams_stops_quickly(gunicorn) -> None:  # noqa: ANN001
    """SIGTERM: the open streams end with their worker, so gunicorn stops long before
    its graceful timeout (60 s here) instead of waiting all of it."""
    srv = gunicorn(2, graceful_timeout=60)
    streams = _streams_on_several_workers(srv.url, 2)
    assert all(not s.ended for s in streams)
    start = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    try:
        srv.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn still running {time.monotonic() - start:.1f}s after SIGTERM "
                    f"with 2 open streams:\n{srv.log.read_text()[-2000:]}")
    stopped = time.monotonic() - start
    wait_until(lambda: all(s.ended for s in streams), timeout=10)
    assert srv.proc.returncode == 0, srv.log.read_text()[-2000:]
    print(f"gunicorn with 2 open streams stopped {stopped:.2f}s after SIGTERM")
    for stream in streams:
        stream.close()
