"""Streamed responses: the run lasts as long as the stream, through a real server."""

from __future__ import annotations

import http.client
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

from conftest import wait_until
from flask import Flask, Response, stream_with_context

from otel_runs import RUN_ID_HEADER, run_tracked
from otel_runs.flask import RunTracking


def _stream_app(tmp_path: Any, gate: threading.Event, chunks: int = 200) -> Flask:
    app = Flask(__name__)
    app.config["PROJECT_ROOT"] = str(tmp_path)
    RunTracking(app, ledger=False)

    @app.post("/pages/build-stream/<name>")
    @run_tracked("build", "build:pages_stream")
    def build_stream(name: str) -> Any:
        def generate() -> Iterator[str]:
            yield f"building {name}\n"
            gate.wait(10)
            for i in range(chunks):
                yield f"step {i}\n"
                if i % 10 == 0:
                    gate.wait(0.01)
        return Response(stream_with_context(generate()), mimetype="text/plain")

    @app.post("/failing-stream")
    @run_tracked("build", "build:pages_stream")
    def failing_stream() -> Any:
        def generate() -> Iterator[str]:
            yield "start\n"
            raise RuntimeError("builder crashed")
        return generate()

    return app


def _post(url: str, path: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", path)
    return conn, conn.getresponse()


def test_run_ends_when_the_stream_is_exhausted(collector, tmp_path, live_server) -> None:  # noqa: ANN001
    gate = threading.Event()
    srv = live_server(_stream_app(tmp_path, gate, chunks=20))
    conn, resp = _post(srv.url, "/pages/build-stream/docs")
    run_id = resp.getheader(RUN_ID_HEADER)
    assert resp.readline() == b"building docs\n"
    # the view has returned long ago, but the stream is still open: the run is running
    assert [r.run_id for r in collector.started] == [run_id]
    assert collector.ended == []
    gate.set()
    rest = resp.read()
    assert rest.count(b"step") == 20
    conn.close()
    collector.wait_for(lambda: bool(collector.ended))
    run = collector.by_id(run_id)
    assert run.status == "ok" and run.subtype == "build:pages_stream"


def test_client_going_away_cancels_the_run(collector, tmp_path, live_server) -> None:  # noqa: ANN001
    gate = threading.Event()
    srv = live_server(_stream_app(tmp_path, gate, chunks=100_000))
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    sock.sendall(b"POST /pages/build-stream/site HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    received = b""
    while b"building site" not in received:
        chunk = sock.recv(4096)
        assert chunk, "server closed the stream early"
        received += chunk
    run_id = re.search(rb"X-Run-Id: (\S+)", received).group(1).decode()  # type: ignore[union-attr]
    sock.close()  # the client goes away mid-stream
    gate.set()
    assert collector.wait_for(lambda: bool(collector.ended), timeout=30)
    run = collector.by_id(run_id)
    assert run.status == "cancelled"
    assert run.summary == "client went away"


def test_stream_that_raises_fails_the_run(collector, tmp_path, live_server) -> None:  # noqa: ANN001
    srv = live_server(_stream_app(tmp_path, threading.Event()))
    conn, resp = _post(srv.url, "/failing-stream")
    run_id = resp.getheader(RUN_ID_HEADER)
    try:
        resp.read()
    except http.client.IncompleteRead:
        pass
    conn.close()
    wait_until(lambda: collector.ended, timeout=10)
    run = collector.by_id(run_id)
    assert (run.status, run.summary) == ("failed", "builder crashed")


def test_stream_closed_before_first_chunk_is_cancelled(collector, tmp_path) -> None:  # noqa: ANN001
    app = _stream_app(tmp_path, threading.Event())
    with app.test_client() as client:
        resp = client.post("/pages/build-stream/x", buffered=False)
        run_id = resp.headers[RUN_ID_HEADER]
        resp.close()
    assert collector.by_id(run_id).status == "cancelled"
