"""The Redis-backed hub against a real ``redis-server`` on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import free_port, wait_until
from flask import Flask

import otel_runs
from otel_runs import api
from otel_runs.flask import RunTracking
from otel_runs.live import RESET_EVENT, get_hub, hub_from_settings, parse_event_id

redis = pytest.importorskip("redis", reason="the 'redis' extra is not installed")
from otel_runs.live._redis import RedisHub  # noqa: E402


def _followed(hub: RedisHub, count: int) -> None:
    """Wait until the process's follower holds ``count`` events (it reads the stream
    in the background: a burst reaches it a moment after XADD)."""
    wait_until(lambda: hub._follower is not None and len(hub._follower.ids) >= count, timeout=10)


def _drain(sub: Any, want: int, timeout: float = 1.0) -> list:
    out: list = []
    for _ in range(50):
        if len(out) >= want:
            break
        out += sub.next_batch(timeout)
    return out


def test_two_processes_share_events_and_ids(redis_url: str) -> None:
    worker_a, worker_b = RedisHub(redis_url), RedisHub(redis_url)  # two "processes"
    sub_a, sub_b = worker_a.subscribe(), worker_b.subscribe()
    ids = []
    for i in range(10):
        hub = worker_a if i % 2 == 0 else worker_b
        ids.append(hub.publish("run:started", {"n": i, "from": "a" if i % 2 == 0 else "b"}))
    pairs = [parse_event_id(i) for i in ids]
    assert pairs == sorted(pairs) and len(set(pairs)) == 10  # one monotonic sequence
    got_a, got_b = _drain(sub_a, 10), _drain(sub_b, 10)
    assert [e.id for e in got_a] == [e.id for e in got_b] == ids
    assert [e.json()["n"] for e in got_a] == list(range(10))
    for sub in (sub_a, sub_b):
        sub.close()


def test_last_event_id_from_one_process_resumes_on_another(redis_url: str) -> None:
    worker_a, worker_b = RedisHub(redis_url), RedisHub(redis_url)
    ids = [worker_a.publish("tick", i) for i in range(6)]
    sub = worker_b.subscribe(ids[1])
    assert [e.id for e in _drain(sub, 4)] == ids[2:]
    sub.close()


def test_trimmed_or_unknown_ids_get_reset(redis_url: str) -> None:
    hub = RedisHub(redis_url, buffer_size=20, client_queue=5)
    ids = [hub.publish("tick", i) for i in range(300)]  # MAXLEN ~ 20 trims the oldest
    assert [e.type for e in hub.subscribe(ids[0]).next_batch(1.0)] == [RESET_EVENT]
    assert [e.type for e in hub.subscribe("garbage").next_batch(1.0)] == [RESET_EVENT]
    assert [e.type for e in hub.subscribe("99999999999999-0").next_batch(1.0)] == [RESET_EVENT]
    recent = hub.subscribe(ids[-3])
    assert [e.id for e in _drain(recent, 2)] == ids[-2:]


def test_a_lagging_reader_is_dropped(redis_url: str) -> None:
    from otel_runs.live import SubscriberDroppedError

    hub = RedisHub(redis_url, buffer_size=200, client_queue=5, slow_after=0.0)
    sub = hub.subscribe()
    for i in range(20):
        hub.publish("tick", i)
    _followed(hub, 20)
    with pytest.raises(SubscriberDroppedError):
        sub.next_batch(1.0)
    sub.close()
    assert hub.subscriber_count == 0


def test_a_busy_reader_gets_a_burst_in_chunks(redis_url: str) -> None:
    hub = RedisHub(redis_url, buffer_size=200, client_queue=5, slow_after=60.0)
    sub = hub.subscribe()
    ids = [hub.publish("tick", i) for i in range(12)]
    _followed(hub, 12)
    sizes = [len(sub.next_batch(1.0)) for _ in range(3)]
    assert sizes == [5, 5, 2]
    sub.close()
    assert ids


def test_the_readers_of_a_process_share_one_redis_reader(redis_url: str) -> None:
    """Each stream of a worker reads from the process's one follower: 10 readers,
    one blocking XREAD connection (was: one per stream), every event to each."""
    hub = RedisHub(redis_url)
    subs = [hub.subscribe() for _ in range(10)]
    got: list[list[Any]] = [[] for _ in subs]

    def read(i: int) -> None:
        for _ in range(40):  # bounded
            if len(got[i]) >= 5:
                return
            got[i] += subs[i].next_batch(0.5)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(subs))]
    for t in threads:
        t.start()
    ids = [hub.publish("tick", i) for i in range(5)]
    for t in threads:
        t.join(30)
    assert all([e.id for e in g] == ids for g in got)
    assert all(g[0].frame is got[0][0].frame for g in got)  # decoded and encoded once
    admin = redis.Redis.from_url(redis_url)
    assert [c.get("cmd") for c in admin.client_list()].count("xread") == 1
    admin.close()
    for sub in subs:
        sub.close()
    hub.close()


def test_a_reader_further_back_than_the_follower_holds_reads_on_from_the_stream(
        redis_url: str) -> None:
    """The follower keeps the newest ``buffer_size`` events; a busy reader that falls
    further back than that reads on from Redis in chunks, then from the follower."""
    hub = RedisHub(redis_url, buffer_size=20, client_queue=5, slow_after=60.0)
    sub = hub.subscribe()
    ids = [hub.publish("tick", i) for i in range(50)]
    _followed(hub, 20)
    wait_until(lambda: hub._follower is not None and hub._follower.ids[-1] == parse_event_id(ids[-1]))
    assert parse_event_id(sub.cursor) < hub._follower.floor  # the follower no longer holds its next events
    got: list[Any] = []
    sizes = []
    for _ in range(30):  # bounded
        batch = sub.next_batch(0.5)
        sizes.append(len(batch))
        got += batch
        if len(got) >= len(ids):
            break
    assert [e.id for e in got] == ids and max(sizes) == 5
    later = hub.publish("tick", 50)  # and from now on from the follower
    assert [e.id for e in _drain(sub, 1)] == [later]
    sub.close()
    hub.close()


def test_publish_nowait_never_blocks_when_redis_is_down() -> None:
    port = free_port()  # nothing listens there
    hub = RedisHub(f"redis://127.0.0.1:{port}/0")
    done = threading.Event()

    def publish() -> None:
        for i in range(20_000):
            hub.publish_nowait("run:started", {"n": i})
        done.set()

    threading.Thread(target=publish, daemon=True).start()
    assert done.wait(60), "publish_nowait blocked on a down Redis"
    hub.close()


def test_hub_from_settings_uses_the_redis_url(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_REDIS_URL", redis_url)
    assert isinstance(hub_from_settings(), RedisHub)


def _app(root: Path, name: str) -> Flask:
    app = Flask(name)
    app.config["PROJECT_ROOT"] = str(root)

    @app.post("/build")
    @otel_runs.run_tracked("build", "build:docker")
    def build() -> Any:
        return {"ok": True, "summary": f"built on {name}"}

    # A short heartbeat: the test's reader (requests' iter_lines reads 512-byte blocks)
    # and its close() never wait long for the next bytes.
    app.config["OTEL_RUNS_SSE_HEARTBEAT"] = 0.5
    RunTracking(app, ledger=False)
    api.register(app, app.extensions["otel_runs"])
    return app


def test_stream_on_one_worker_sees_runs_of_another(
        redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, live_server) -> None:
    monkeypatch.setenv("OTEL_RUNS_REDIS_URL", redis_url)
    root = tmp_path / "project"
    root.mkdir()
    worker_1, worker_2 = _app(root, "w1"), _app(root, "w2")
    assert isinstance(get_hub(worker_1), RedisHub)
    srv_1, srv_2 = live_server(worker_1), live_server(worker_2)
    lines: list[str] = []
    resp = requests.get(srv_1.url + "/api/events", stream=True, timeout=30)

    def read() -> None:
        try:
            for line in resp.iter_lines(decode_unicode=True):
                lines.append(line)
        except Exception:  # the test closes the response
            pass

    threading.Thread(target=read, daemon=True).start()
    wait_until(lambda: get_hub(worker_1).subscriber_count == 1)
    run_id = requests.post(srv_2.url + "/build", timeout=10).headers["X-Run-Id"]
    # Each run is published by the SSE processor of both apps (same project), so
    # wait for its completion on the stream of worker 1.
    wait_until(lambda: any(run_id in line and '"status":"ok"' in line for line in lines), timeout=20)
    ids = [line[4:] for line in lines if line.startswith("id: ")]
    assert [parse_event_id(i) for i in ids] == sorted(parse_event_id(i) for i in ids)
    resp.close()


def test_the_follower_stops_without_readers_and_a_new_reader_starts_another(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker with no page open stops reading every event from Redis."""
    from otel_runs.live import _redis as _redis_hub

    monkeypatch.setattr(_redis_hub, "_FOLLOWER_IDLE", 0.3)
    hub = RedisHub(redis_url)
    sub = hub.subscribe()
    first = hub._follower
    assert first is not None
    time.sleep(1.5)  # longer than the idle time, with a reader: it keeps following
    assert first.alive
    sub.close()
    wait_until(lambda: not first.alive and not first._thread.is_alive(), timeout=10)
    sub = hub.subscribe()
    assert hub._follower is not first and hub._follower is not None and hub._follower.alive
    ids = [hub.publish("tick", i) for i in range(3)]
    assert [e.id for e in _drain(sub, 3)] == ids
    sub.close()
    hub.close()


def test_the_follower_holds_a_bounded_number_of_bytes(redis_url: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Like the in-process buffer, what a process's follower keeps is bounded by bytes; a
    reader further back reads on from Redis itself."""
    monkeypatch.setenv("OTEL_RUNS_SSE_BUFFER_BYTES", str(300_000))
    hub = RedisHub(redis_url, buffer_size=1000, client_queue=100)
    reader = hub.subscribe()
    ids = [hub.publish("big", {"blob": "x" * 50_000, "n": i}) for i in range(40)]
    got = _drain(reader, 40)
    assert [e.id for e in got] == ids  # nothing lost for the reader
    follower = hub._follower
    assert follower is not None
    assert follower.held_bytes <= 300_000 + 60_000 and len(follower.events) < 40
    late = hub.subscribe(ids[0])  # further back than the follower holds: from Redis
    assert [e.id for e in _drain(late, 39)] == ids[1:]
    reader.close()
    late.close()
