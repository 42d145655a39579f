"""The process's stream writer (:mod:`otel_runs.live._stream_writer`): after the first
frame, a stream on werkzeug or gunicorn ``gthread`` is written by one thread of the
process straight to its socket, in the server's own framing. Real servers on 127.0.0.1,
read with raw sockets."""

from __future__ import annotations

import os
import re
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
from test_sse import make_app
from test_stream_pacing import ChunkedStream

from otel_runs.live import get_hub
from otel_runs.live._stream_writer import server_framing, writer_running

_EVENT_ID = re.compile(rb"^id: (\S+)$", re.MULTILINE)


def _drain_to_end(stream: ChunkedStream, timeout: float) -> bytes:
    """The chunks of ``stream`` up to the last (empty) chunk of the response."""
    deadline = time.monotonic() + timeout
    body = b""
    while time.monotonic() < deadline:
        data = stream.chunk()
        if not data:
            return body
        body += data
    raise AssertionError(f"the response did not end within {timeout}s")


def test_werkzeug_streams_are_written_by_one_writer_in_the_servers_chunks(
        tmp_path: Path, live_server) -> None:  # noqa: ANN001
    """Twenty streams get every event once, in order, in well-formed HTTP/1.1 chunks;
    when the hub closes, each response ends with its last chunk."""
    app = make_app(tmp_path, OTEL_RUNS_SSE_LINGER=0.02)
    srv = live_server(app)
    hub = get_hub(app)
    streams = [ChunkedStream(srv.port) for _ in range(20)]
    try:
        for stream in streams:
            assert b"connected" in stream.chunk()
        wait_until(lambda: hub.subscriber_count == 20)
        assert writer_running()
        ids: list[bytes] = []
        for n in range(200):
            ids.append(hub.publish("tick", {"n": n}).encode())
            if n % 20 == 0:
                time.sleep(0.01)
        for stream in streams:
            chunks = stream.event_chunks(200, timeout=30)
            assert [i for c in chunks for i in c] == ids
        hub.close()
        for stream in streams:
            _drain_to_end(stream, timeout=10)
        wait_until(lambda: hub.subscriber_count == 0, timeout=10)
    finally:
        for stream in streams:
            stream.close()


def test_a_closed_client_is_released_without_waiting_for_a_write(
        tmp_path: Path, live_server) -> None:  # noqa: ANN001
    """With a 60 s heartbeat and no events, the writer still sees the client close (its
    socket hangs up in the writer's poll)."""
    app = make_app(tmp_path, OTEL_RUNS_SSE_HEARTBEAT=60.0)
    srv = live_server(app)
    hub = get_hub(app)
    for _ in range(3):
        stream = ChunkedStream(srv.port)
        assert b"connected" in stream.chunk()
        wait_until(lambda: hub.subscriber_count == 1)
        stream.close()
        start = time.monotonic()
        wait_until(lambda: hub.subscriber_count == 0, timeout=20)
        took = time.monotonic() - start
        print(f"closed client released after {took:.2f}s (heartbeat 60 s)")
        assert took < 10.0, took


def test_a_client_that_never_reads_does_not_hold_up_the_others(
        tmp_path: Path, live_server) -> None:  # noqa: ANN001
    """A stalled client is ended after the send timeout; meanwhile a reading client on
    the same writer gets every event."""
    app = make_app(tmp_path, OTEL_RUNS_SSE_SEND_TIMEOUT=1.0, OTEL_RUNS_SSE_LINGER=0.0)
    srv = live_server(app)
    hub = get_hub(app)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", srv.port))
    stalled.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    reader = ChunkedStream(srv.port)
    try:
        assert b"connected" in reader.chunk()
        wait_until(lambda: hub.subscriber_count == 2)
        pad = "x" * 100_000
        ids = [hub.publish("blob", {"i": i, "pad": pad}).encode() for i in range(40)]
        got = [i for c in reader.event_chunks(40, timeout=30) for i in c]
        assert got == ids
        start = time.monotonic()
        wait_until(lambda: hub.subscriber_count == 1, timeout=15)
        took = time.monotonic() - start
        print(f"never-reading client released {took:.2f}s after the reader had everything")
        assert took < 2 * 1.0 + 1.5, took
    finally:
        stalled.close()
        reader.close()


def test_a_body_rewriting_middleware_keeps_the_generator_path(
        tmp_path: Path, live_server) -> None:  # noqa: ANN001
    """Something between the server and the stream that could change the bytes: the
    writer does not take the socket over; the stream works as a generator."""
    app = make_app(tmp_path, OTEL_RUNS_SSE_LINGER=0.0)
    inner = app.wsgi_app

    def middleware(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        body = inner(environ, start_response)
        try:
            yield from body
        finally:
            getattr(body, "close", lambda: None)()

    app.wsgi_app = middleware  # type: ignore[method-assign]
    srv = live_server(app)
    hub = get_hub(app)
    wait_until(lambda: not writer_running(), timeout=10)  # another test's writer stops
    stream = ChunkedStream(srv.port)
    try:
        assert b"connected" in stream.chunk()
        ids = [hub.publish("tick", {"n": n}).encode() for n in range(5)]
        assert [i for c in stream.event_chunks(5, timeout=15) for i in c] == ids
        assert not writer_running()
    finally:
        stream.close()


def test_server_framing_without_a_server_or_a_socket_is_none() -> None:
    assert server_framing(None, sys._getframe()) is None
    left, right = socket.socketpair()
    try:
        assert server_framing(left, sys._getframe()) is None  # no server on this stack
    finally:
        left.close()
        right.close()


# -- gunicorn gthread ----------------------------------------------------------------

gunicorn_module = pytest.importorskip(
    "gunicorn", reason="gunicorn is a test dependency (pip install -e '.[test]')")
_NO_CONTROL_SOCKET = ["--no-control-socket"] if gunicorn_module.version_info >= (27,) else []

APP = textwrap.dedent('''
    import os

    from flask import Flask, request

    from otel_runs.flask import RunTracking
    from otel_runs.live import get_hub
    from otel_runs.live._stream_writer import writer_running

    app = Flask("writer_app")
    app.config["PROJECT_ROOT"] = os.environ["OTEL_RUNS_PROJECT_ROOT"]
    app.config["OTEL_RUNS_SSE_LINGER"] = 0.0


    @app.get("/writer")
    def writer():
        return {"running": writer_running(), "pid": os.getpid()}


    @app.post("/publish")
    def publish():
        return {"ids": [get_hub().publish("tick", {"n": n})
                        for n in range(int(request.args["n"]))]}


    RunTracking(app, ledger=False)
''')


class Gunicorn:
    """gunicorn, one gthread worker, serving the app above."""

    def __init__(self, workdir: Path) -> None:
        (workdir / "writer_app.py").write_text(APP)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "gunicorn.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--threads", "8",
                 "--workers", "1", "--bind", f"127.0.0.1:{self.port}", "--chdir", str(workdir),
                 "--graceful-timeout", "30", *_NO_CONTROL_SOCKET, "writer_app:app"],
                env={**os.environ, "OTEL_RUNS_PROJECT_ROOT": str(workdir)},
                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self.proc.poll() is not None or port_open(self.port), timeout=30)
        except Exception:
            stop_child(self.proc, 15)
            raise
        assert self.proc.poll() is None, self.log.read_text()


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[[], Gunicorn]]:
    started: list[Gunicorn] = []

    def start() -> Gunicorn:
        srv = Gunicorn(tmp_path)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        stop_child(srv.proc, 15)


class RawStream:
    """``GET /api/events`` (HTTP/1.1 or 1.0) read in a thread into ``data``."""

    def __init__(self, port: int, version: str = "1.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(f"GET /api/events HTTP/{version}\r\nHost: 127.0.0.1\r\n\r\n".encode())
        self.data = b""
        self.ended = threading.Event()
        self.ended_at = 0.0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for _ in range(1_000_000):  # bounded: each read waits at most the timeout
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                self.data += chunk
        except OSError:
            pass
        finally:
            self.ended_at = time.monotonic()
            self.ended.set()

    def ids(self) -> list[bytes]:
        return _EVENT_ID.findall(self.data)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)


def test_gunicorn_streams_use_the_writer_and_end_cleanly_when_the_worker_stops(
        gunicorn) -> None:  # noqa: ANN001
    """Under gunicorn gthread the writer takes the streams over (HTTP/1.1: chunks;
    HTTP/1.0: the frames as they are); SIGTERM ends them long before the graceful
    timeout, each HTTP/1.1 response with its last chunk."""
    srv = gunicorn()
    streams = [RawStream(srv.port) for _ in range(3)] + [RawStream(srv.port, "1.0")]
    try:
        wait_until(lambda: all(b": connected" in s.data for s in streams), timeout=15)
        assert requests.get(srv.url + "/writer", timeout=10).json()["running"] is True
        ids = [i.encode() for i in
               requests.post(srv.url + "/publish?n=30", timeout=10).json()["ids"]]
        wait_until(lambda: all(len(s.ids()) >= 30 for s in streams), timeout=15)
        assert all(s.ids() == ids for s in streams)
        head11, _, body11 = streams[0].data.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head11.lower()
        head10, _, body10 = streams[3].data.partition(b"\r\n\r\n")
        assert b"chunked" not in head10.lower() and body10.startswith(b"retry: ")
        assert b"\r\n" not in body10  # no chunk framing in an HTTP/1.0 body
        start = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=20)
        stopped = time.monotonic() - start
        wait_until(lambda: all(s.ended.is_set() for s in streams), timeout=10)
        ended = max(s.ended_at for s in streams) - start
        print(f"gunicorn with 4 open streams: streams ended {ended:.2f}s, gunicorn stopped "
              f"{stopped:.2f}s after SIGTERM")
        # gunicorn sees its SIGTERM within a second, the writer within a quarter more;
        # far below the 30 s graceful timeout the streams would otherwise hold it for
        # (bounded loosely: a loaded machine took up to about 4 s).
        assert ended < 10.0, ended
        assert srv.proc.returncode == 0, srv.log.read_text()[-2000:]
        for stream in streams[:3]:
            assert stream.data.endswith(b"\r\n0\r\n\r\n"), stream.data[-40:]
    finally:
        for stream in streams:
            stream.close()
