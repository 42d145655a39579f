"""Streams cannot starve the server: the per-process cap (503 + Retry-After), a closed
client released within one heartbeat, a client that never reads released within the
send timeout, gunicorn sync workers refused; real gunicorn and werkzeug on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import free_port, port_open, stop_child, wait_until
from flask import Flask

import otel_runs
from otel_runs.flask import RunTracking
from otel_runs.live import get_hub
from otel_runs.live._streams import DEFAULT_SEND_TIMEOUT

gunicorn_module = pytest.importorskip(
    "gunicorn", reason="gunicorn is a test dependency (pip install -e '.[test]')")
_NO_CONTROL_SOCKET = ["--no-control-socket"] if gunicorn_module.version_info >= (27,) else []

HEARTBEAT = 2.0

APP = textwrap.dedent(f'''
    import os

    from flask import Flask, request

    import otel_runs
    from otel_runs.flask import RunTracking
    from otel_runs.live import get_hub

    app = Flask("limits_app")
    app.config["PROJECT_ROOT"] = os.environ["OTEL_RUNS_PROJECT_ROOT"]
    app.config["OTEL_RUNS_SSE_HEARTBEAT"] = {HEARTBEAT}
    app.config["OTEL_RUNS_SSE_LINGER"] = 0.0


    @app.post("/build")
    @otel_runs.run_tracked("build", "build:docker")
    def build():
        return {{"ok": True, "summary": "built web"}}


    @app.get("/open")
    def open_streams():
        return {{"open": app.extensions["otel_runs"].extra["stream_gate"].open}}


    @app.post("/publish")
    def publish():
        pad = "x" * 100_000
        for i in range(int(request.args["n"])):
            get_hub().publish("blob", {{"i": i, "pad": pad}})
        return {{"ok": True}}


    RunTracking(app, ledger=False)
''')


class Server:
    """gunicorn (one worker, ``worker_class``) serving the app above."""

    def __init__(self, workdir: Path, worker_class: str, threads: int) -> None:
        (workdir / "limits_app.py").write_text(APP)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (workdir / f"gunicorn-{worker_class}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--worker-class", worker_class,
             "--threads", str(threads), "--workers", "1", "--bind", f"127.0.0.1:{self.port}",
             "--chdir", str(workdir), "--graceful-timeout", "2", *_NO_CONTROL_SOCKET,
             "limits_app:app"],
            env={**os.environ, "OTEL_RUNS_PROJECT_ROOT": str(workdir)},
            stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self.proc.poll() is not None or port_open(self.port), timeout=30)
        except Exception:
            self.stop()
            raise
        assert self.proc.poll() is None

    def open_count(self) -> int:
        return int(requests.get(self.url + "/open", timeout=10).json()["open"])

    def stop(self) -> None:
        stop_child(self.proc, 15)
        self._log.close()


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(worker_class: str = "gthread", threads: int = 8) -> Server:
        srv = Server(tmp_path, worker_class, threads)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def raw_stream(port: int, rcvbuf: int | None = None, read: bool = True) -> socket.socket:
    """``GET /api/events`` on a raw socket; reads until ``: connected`` unless ``read``
    is false (then it never reads a byte)."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    if read:
        sock.settimeout(10)
        data = b""
        for _ in range(100):  # bounded: the first frame is small
            data += sock.recv(4096)
            if b": connected" in data or not data:
                break
        assert b" 200 " in data.split(b"\r\n", 1)[0] and b": connected" in data, data[:300]
    return sock


def released_within(count: Callable[[], int], expected: int, timeout: float) -> float:
    """Seconds until ``count() == expected`` (bounded by ``timeout``)."""
    start = time.monotonic()
    wait_until(lambda: count() == expected, timeout=timeout, interval=0.05)
    return time.monotonic() - start


def test_cap_reached_requests_still_answer_and_one_more_stream_gets_503(gunicorn) -> None:  # noqa: ANN001
    srv = gunicorn("gthread", 8)  # default cap: 8 threads - a reserve of 4 = 4 streams
    start = time.monotonic()
    assert requests.post(srv.url + "/build", timeout=10).status_code == 200
    baseline = time.monotonic() - start
    streams = [raw_stream(srv.port) for _ in range(4)]
    try:
        wait_until(lambda: srv.open_count() == 4, timeout=10)
        worst = 0.0
        for _ in range(10):
            start = time.monotonic()
            resp = requests.post(srv.url + "/build", timeout=10)
            worst = max(worst, time.monotonic() - start)
            assert resp.status_code == 200 and resp.headers["X-Run-Id"]
        print(f"tracked POST with the cap reached: worst {worst:.3f}s, baseline {baseline:.3f}s")
        assert worst < 1.0, f"tracked requests took up to {worst:.3f}s (baseline {baseline:.3f}s)"
        refused = requests.get(srv.url + "/api/events", timeout=5)
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["Content-Type"].startswith("application/json")
        assert "OTEL_RUNS_SSE_MAX_STREAMS" in refused.json()["error"]
        streams.pop().close()
        wait_until(lambda: srv.open_count() == 3, timeout=HEARTBEAT + 2)
        again = raw_stream(srv.port)  # a freed slot is usable again
        streams.append(again)
    finally:
        for sock in streams:
            sock.close()


def test_client_that_reads_one_frame_and_closes_is_released_within_one_heartbeat(
        gunicorn) -> None:  # noqa: ANN001
    srv = gunicorn("gthread", 8)
    for _ in range(3):  # a connect/close loop never leaves streams behind
        sock = raw_stream(srv.port)
        wait_until(lambda: srv.open_count() == 1, timeout=10)
        sock.close()
        took = released_within(srv.open_count, 0, timeout=HEARTBEAT * 3)
        print(f"closed client released after {took:.2f}s")
        assert took < HEARTBEAT + 1.0, f"released after {took:.2f}s (heartbeat {HEARTBEAT}s)"
    assert requests.post(srv.url + "/build", timeout=10).status_code == 200


def test_client_that_never_reads_is_released_within_the_send_timeout(gunicorn) -> None:  # noqa: ANN001
    srv = gunicorn("gthread", 8)
    stalled = raw_stream(srv.port, rcvbuf=4096, read=False)
    try:
        wait_until(lambda: srv.open_count() == 1, timeout=10)
        # 60 x 100 KB: far more than the socket buffers hold, so the stream's write blocks.
        assert requests.post(srv.url + "/publish?n=60", timeout=30).status_code == 200
        # Documented: within 2 x the send timeout (the write under way when the buffers
        # fill may take one, the next fails after one).
        took = released_within(srv.open_count, 0, timeout=DEFAULT_SEND_TIMEOUT * 2 + 10)
        print(f"never-reading client released {took:.2f}s after the publishing")
        assert took < DEFAULT_SEND_TIMEOUT * 2 + 1.5, f"released after {took:.2f}s"
    finally:
        stalled.close()


def test_gunicorn_sync_worker_refuses_the_stream_with_a_clear_error(gunicorn) -> None:  # noqa: ANN001
    srv = gunicorn("sync", 1)
    assert requests.post(srv.url + "/build", timeout=10).status_code == 200  # warm: imports done
    start = time.monotonic()
    resp = requests.get(srv.url + "/api/events", timeout=10)
    took = time.monotonic() - start
    # Answered, not held: a hung sync worker would not answer within the 10 s timeout
    # (generous: the first answers of a fresh worker on a loaded machine took up to 2.3 s).
    assert resp.status_code == 501 and took < 5.0, took
    body = resp.json()
    assert body["status"] == 501 and "gthread" in body["error"]
    assert requests.post(srv.url + "/build", timeout=10).status_code == 200  # not hung


# -- the same guarantees under werkzeug's threaded server -------------------------

def _werkzeug_app(tmp_path: Path, **config: Any) -> Flask:
    otel_runs.configure(str(tmp_path), ledger=False)
    app = Flask("limits_werkzeug")
    app.config.update(PROJECT_ROOT=str(tmp_path), OTEL_RUNS_SSE_HEARTBEAT=HEARTBEAT,
                      OTEL_RUNS_SSE_LINGER=0.0, **config)
    RunTracking(app, ledger=False)
    return app


def _gate_open(app: Flask) -> Callable[[], int]:
    return lambda: int(app.extensions["otel_runs"].extra["stream_gate"].open)


def test_werkzeug_configured_cap_closed_and_stalled_clients(tmp_path: Path, live_server) -> None:  # noqa: ANN001
    app = _werkzeug_app(tmp_path, OTEL_RUNS_SSE_MAX_STREAMS=2, OTEL_RUNS_SSE_SEND_TIMEOUT=1.0)
    srv = live_server(app)
    count = _gate_open(app)
    first, second = raw_stream(srv.port), raw_stream(srv.port)
    try:
        wait_until(lambda: count() == 2)
        refused = requests.get(srv.url + "/api/events", timeout=5)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        first.close()
        took = released_within(count, 1, timeout=HEARTBEAT * 3)
        assert took < HEARTBEAT + 1.0, f"closed client released after {took:.2f}s"
        second.close()
        released_within(count, 0, timeout=HEARTBEAT * 3)

        stalled = raw_stream(srv.port, rcvbuf=4096, read=False)
        try:
            wait_until(lambda: count() == 1)
            hub = get_hub(app)
            pad = "x" * 100_000
            for i in range(60):
                hub.publish("blob", {"i": i, "pad": pad})
            took = released_within(count, 0, timeout=10)
            print(f"werkzeug: never-reading client released after {took:.2f}s")
            assert took < 2 * 1.0 + 1.5, f"stalled client released after {took:.2f}s"
        finally:
            stalled.close()
    finally:
        first.close()
        second.close()
