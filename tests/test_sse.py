"""``GET /api/events`` on a real server, read by a real HTTP client."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import wait_until
from flask import Flask
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

import otel_runs
from otel_runs import api
from otel_runs.flask import RunTracking
from otel_runs.live import RESET_EVENT, get_hub, parse_event_id


def make_app(root: Path, **config: Any) -> Flask:
    """A Flask app with one tracked action, RunTracking (no ledger) and the API blueprint."""
    app = Flask(f"sse-{root.name}")
    app.config["PROJECT_ROOT"] = str(root)
    app.config.update(config)

    @app.post("/deploy/<outcome>")
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def deploy(outcome: str) -> Any:
        return {"ok": outcome == "ok", "summary": f"deploy {outcome}"}

    RunTracking(app, ledger=False)
    api.register(app, app.extensions["otel_runs"])  # idempotent once RunTracking wires it
    return app


class SSEClient:
    """Reads an event stream in a thread; parsed events land on ``self.events``."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.response = requests.get(url, stream=True, timeout=30, headers=headers or {})
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.comments: queue.Queue[str] = queue.Queue()
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        current: dict[str, Any] = {}
        try:
            for line in self.response.iter_lines(chunk_size=1 << 16, decode_unicode=True):
                if line == "":
                    if "event" in current or "data" in current:
                        self.events.put(current)
                    current = {}
                elif line.startswith(":"):
                    self.comments.put(line[1:].strip())
                else:
                    field, _, value = line.partition(":")
                    current[field] = value[1:] if value.startswith(" ") else value
        except Exception:
            pass
        finally:
            self.ended.set()

    def next(self, timeout: float = 10.0) -> dict[str, Any]:
        return self.events.get(timeout=timeout)

    def take(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        return [self.events.get(timeout=max(0.01, deadline - time.monotonic())) for _ in range(count)]

    def close(self) -> None:
        # Shut the socket down first: it wakes the reader thread blocked in recv()
        # (closing the response alone waits for the next byte from the server).
        fp = getattr(getattr(self.response.raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.response.close()
        self.thread.join(10)


@pytest.fixture
def clients():
    opened: list[SSEClient] = []

    def open_client(url: str, headers: dict[str, str] | None = None) -> SSEClient:
        client = SSEClient(url, headers)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


def test_stream_headers(tmp_path: Path, live_server, clients) -> None:
    srv = live_server(make_app(tmp_path))
    client = clients(srv.url + "/api/events")
    assert client.response.status_code == 200
    assert client.response.headers["Content-Type"].startswith("text/event-stream")
    assert client.response.headers["Cache-Control"] == "no-store"
    assert client.response.headers["X-Accel-Buffering"] == "no"


def test_runs_are_published_as_started_then_completed(tmp_path: Path, live_server, clients) -> None:
    app = make_app(tmp_path)
    srv = live_server(app)
    client = clients(srv.url + "/api/events")
    wait_until(lambda: get_hub(app).subscriber_count == 1)
    resp = requests.post(srv.url + "/deploy/fail", timeout=10)
    run_id = resp.headers["X-Run-Id"]
    started, completed = client.take(2)
    assert (started["event"], completed["event"]) == ("run:started", "run:completed")
    assert parse_event_id(started["id"]) < parse_event_id(completed["id"])
    s, c = json.loads(started["data"]), json.loads(completed["data"])
    assert s["run_id"] == c["run_id"] == run_id
    assert s["status"] == "running" and s["ended_at"] is None
    assert c["status"] == "failed" and c["summary"] == "deploy fail" and c["duration_ms"] >= 0
    assert set(c) == set(otel_runs.Run(run_id="x", type="deploy", subtype="deploy:k8s").to_dict())


def test_host_app_events_share_the_stream(tmp_path: Path, live_server, clients) -> None:
    app = make_app(tmp_path)
    srv = live_server(app)
    client = clients(srv.url + "/api/events")
    wait_until(lambda: get_hub(app).subscriber_count == 1)
    event_id = get_hub(app).publish("deploy:log", {"line": "pulling image"})
    event = client.next()
    assert event == {"event": "deploy:log", "id": event_id, "data": '{"line":"pulling image"}'}


@pytest.mark.parametrize("via", ["header", "query"])
def test_reconnect_replays_missed_events(tmp_path: Path, live_server, clients, via: str) -> None:
    app = make_app(tmp_path)
    srv = live_server(app)
    hub = get_hub(app)
    ids = [hub.publish("tick", {"n": i}) for i in range(10)]
    if via == "header":
        client = clients(srv.url + "/api/events", {"Last-Event-ID": ids[2]})
    else:
        client = clients(srv.url + f"/api/events?last_event_id={ids[2]}")
    replayed = client.take(7)
    assert [e["id"] for e in replayed] == ids[3:]
    assert [json.loads(e["data"])["n"] for e in replayed] == list(range(3, 10))
    live = hub.publish("tick", {"n": 10})
    assert client.next()["id"] == live


def test_a_backlog_bigger_than_a_chunk_arrives_without_pauses(
        tmp_path: Path, live_server, clients) -> None:  # noqa: ANN001
    """A stream pauses (linger) after a write, but not between the chunks of a backlog:
    with a 30 s linger, 3 chunks' worth of replay must arrive well before one pause ends."""
    app = make_app(tmp_path, OTEL_RUNS_SSE_CLIENT_QUEUE=4, OTEL_RUNS_SSE_LINGER=30.0)
    srv = live_server(app)
    hub = get_hub(app)
    first = hub.publish("tick", {"n": 0})
    ids = [hub.publish("tick", {"n": i}) for i in range(1, 11)]
    client = clients(srv.url + "/api/events", {"Last-Event-ID": first})
    assert [e["id"] for e in client.take(10, timeout=15.0)] == ids


def test_too_old_last_event_id_gets_reset(tmp_path: Path, live_server, clients) -> None:
    app = make_app(tmp_path, OTEL_RUNS_SSE_BUFFER=20, OTEL_RUNS_SSE_CLIENT_QUEUE=5)
    srv = live_server(app)
    hub = get_hub(app)
    ids = [hub.publish("tick", i) for i in range(50)]
    client = clients(srv.url + "/api/events", {"Last-Event-ID": ids[0]})
    event = client.next()
    assert event["event"] == RESET_EVENT and event["id"] == ids[-1]
    assert "reload" in json.loads(event["data"])["reason"]


def test_id_from_a_previous_server_process_gets_reset(tmp_path: Path, live_server, clients) -> None:
    old_app = make_app(tmp_path / "a")
    old_id = get_hub(old_app).publish("tick", 1)
    otel_runs.shutdown()
    srv = live_server(make_app(tmp_path / "b"))
    client = clients(srv.url + "/api/events", {"Last-Event-ID": old_id})
    assert client.next()["event"] == RESET_EVENT


def test_heartbeat_comment_when_idle(tmp_path: Path, live_server, clients) -> None:
    srv = live_server(make_app(tmp_path, OTEL_RUNS_SSE_HEARTBEAT=0.2))
    client = clients(srv.url + "/api/events")
    seen = set()
    deadline = time.monotonic() + 20
    while "heartbeat" not in seen and time.monotonic() < deadline:
        seen.add(client.comments.get(timeout=20))
    assert "heartbeat" in seen


def test_default_heartbeat_is_at_most_15_seconds(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    assert 0 < app.config["OTEL_RUNS_SSE_HEARTBEAT"] <= 15


def test_disconnected_client_is_cleaned_up(tmp_path: Path, live_server, clients) -> None:
    app = make_app(tmp_path, OTEL_RUNS_SSE_HEARTBEAT=0.1)
    srv = live_server(app)
    hub = get_hub(app)
    client = clients(srv.url + "/api/events")
    wait_until(lambda: hub.subscriber_count == 1)
    client.close()
    wait_until(lambda: hub.subscriber_count == 0, timeout=20)


def test_stalled_client_never_blocks_runs_and_catches_up_by_last_event_id(
        tmp_path: Path, live_server, clients, monkeypatch: pytest.MonkeyPatch) -> None:
    # 200 events of ~100 KB must all stay replayable here: a replay buffer above its 8 MiB default
    monkeypatch.setenv("OTEL_RUNS_SSE_BUFFER_BYTES", str(64 << 20))
    app = make_app(tmp_path, OTEL_RUNS_SSE_BUFFER=400, OTEL_RUNS_SSE_CLIENT_QUEUE=10,
                   OTEL_RUNS_SSE_SLOW_AFTER=0.2)
    srv = live_server(app)
    hub = get_hub(app)
    # A client that connects and then stops reading (tiny receive buffer).
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", srv.port))
    stalled.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
    healthy = clients(srv.url + "/api/events")
    wait_until(lambda: hub.subscriber_count == 2)
    try:
        blob = "x" * 100_000  # 200 x 100 KB: far more than the socket buffers hold
        ids: list[str] = []
        got: list[dict[str, Any]] = []
        for step in range(40):  # the healthy client keeps pace; the stalled one cannot
            ids += [hub.publish("blob", {"i": step * 5 + i, "pad": blob}) for i in range(5)]
            got += healthy.take(5, timeout=30)
        run_ids = []
        for _ in range(20):  # tracked requests complete while the client is stalled
            resp = requests.post(srv.url + "/deploy/ok", timeout=30)
            assert resp.status_code == 200
            run_ids.append(resp.headers["X-Run-Id"])
        got += healthy.take(40, timeout=30)
        assert [e["id"] for e in got[:200]] == ids
        assert {json.loads(e["data"])["run_id"] for e in got[200:]} == set(run_ids)

        # The stalled client reads again: it gets what was in flight, then the
        # server ends its stream (dropped); it reconnects with Last-Event-ID.
        stalled.settimeout(30)
        raw = b""
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            chunk = stalled.recv(1 << 20)
            if not chunk:
                break
            raw += chunk
        text = raw.decode()
        seen = [line[4:] for line in text.split("\n") if line.startswith("id: ")]
        assert 0 < len(seen) < 240, "the stalled client should have been dropped part-way"
        rest = clients(srv.url + "/api/events", {"Last-Event-ID": seen[-1]})
        all_ids = ids + [e["id"] for e in got[200:]]
        missing = all_ids[all_ids.index(seen[-1]) + 1:]
        caught_up = rest.take(len(missing), timeout=60)
        assert [e["id"] for e in caught_up] == missing
        assert seen + missing == all_ids  # every event exactly once
    finally:
        stalled.close()


def test_slow_client_does_not_delay_other_clients(tmp_path: Path, live_server, clients) -> None:
    app = make_app(tmp_path, OTEL_RUNS_SSE_BUFFER=100, OTEL_RUNS_SSE_CLIENT_QUEUE=10)
    srv = live_server(app)
    hub = get_hub(app)
    stalled = socket.create_connection(("127.0.0.1", srv.port))
    stalled.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        fast = clients(srv.url + "/api/events")
        wait_until(lambda: hub.subscriber_count == 2)
        for _ in range(50):
            requests.post(srv.url + "/deploy/ok", timeout=30)
        assert len(fast.take(100, timeout=60)) == 100
    finally:
        stalled.close()


class _SpanRecorder(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.started: list[Any] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started.append(span)

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def test_event_stream_is_excluded_from_request_instrumentation(
        tmp_path: Path, live_server, clients) -> None:
    recorder = _SpanRecorder()
    app = make_app(tmp_path, OTEL_RUNS_SSE_HEARTBEAT=0.1)
    otel_runs.configure(str(tmp_path), ledger=False, processors=[recorder])
    srv = live_server(app)
    hub = get_hub(app)
    client = clients(srv.url + "/api/events?last_event_id=")
    wait_until(lambda: hub.subscriber_count == 1)
    client.close()
    wait_until(lambda: hub.subscriber_count == 0, timeout=20)
    requests.post(srv.url + "/deploy/ok", timeout=10)
    wait_until(lambda: any(_target(s) == "/deploy/ok" for s in recorder.spans))
    targets = [_target(s) for s in recorder.started]
    assert "/deploy/ok" in targets  # the app is instrumented...
    assert not [t for t in targets if t and t.startswith("/api/events")]  # ...but not the stream


def test_the_standard_flask_excluded_urls_variable_is_honoured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``OTEL_PYTHON_FLASK_EXCLUDED_URLS`` is read by the instrumentation only when it is
    given no list: RunTracking's list includes it (and still the stream)."""
    monkeypatch.setenv("OTEL_PYTHON_FLASK_EXCLUDED_URLS", "healthz, /api/events")
    recorder = _SpanRecorder()
    app = make_app(tmp_path)

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    otel_runs.configure(str(tmp_path), ledger=False, processors=[recorder])
    assert app.config["OTEL_RUNS_EXCLUDED_URLS"] == "/api/events,healthz"
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.post("/deploy/ok").status_code == 200
    targets = [_target(s) for s in recorder.started]
    assert "/deploy/ok" in targets and "/healthz" not in targets


def _target(span: Any) -> str | None:
    attrs = span.attributes or {}
    for key in ("url.path", "http.target", "http.route"):
        if key in attrs:
            return str(attrs[key]).split("?")[0]
    return None


def test_sse_processor_publishes_only_this_apps_runs(tmp_path: Path) -> None:
    app_a = make_app(tmp_path / "a")
    app_b = make_app(tmp_path / "b")
    sub_a, sub_b = get_hub(app_a).subscribe(), get_hub(app_b).subscribe()
    with otel_runs.tracked_run(tmp_path / "a", "deploy", "deploy:k8s") as run:
        pass
    got = [e.json()["run_id"] for e in sub_a.next_batch(1.0)]
    while len(got) < 2:
        got += [e.json()["run_id"] for e in sub_a.next_batch(1.0)]
    assert got == [run.run_id, run.run_id]
    assert sub_b.next_batch(0.2) == []


def test_an_apps_feed_survives_shutdown_and_configure(tmp_path: Path) -> None:
    """otel_runs.shutdown() and configure() again (tests, a reload) keep an app's live
    feed: its SSE processor comes back with its project, not only its ledger."""
    app = make_app(tmp_path / "a")
    sub = get_hub(app).subscribe()
    otel_runs.shutdown()
    otel_runs.configure(tmp_path / "elsewhere", ledger=False)
    with otel_runs.tracked_run(tmp_path / "a", "deploy", "deploy:k8s") as run:
        pass
    got = []
    for _ in range(10):
        got += [(e.type, e.json()["run_id"]) for e in sub.next_batch(0.5)]
        if len(got) >= 2:
            break
    assert got == [("run:started", run.run_id), ("run:completed", run.run_id)]
