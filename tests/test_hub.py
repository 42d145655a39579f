"""The in-process event hub: ids, replay after Last-Event-ID, reset, bounded readers."""

from __future__ import annotations

import threading
import time

import pytest
from flask import Flask

from otel_runs.live import (
    RESET_EVENT,
    EventHub,
    SubscriberDroppedError,
    get_hub,
    hub_from_settings,
    parse_event_id,
)


def _drain(sub, timeout: float = 0.05) -> list:
    out = []
    while True:
        batch = sub.next_batch(timeout)
        if not batch:
            return out
        out.extend(batch)


def test_ids_increase_monotonically_and_parse_as_pairs() -> None:
    hub = EventHub()
    ids = [hub.publish("run:started", {"n": i}) for i in range(50)]
    pairs = [parse_event_id(i) for i in ids]
    assert all(p is not None for p in pairs)
    assert pairs == sorted(pairs) and len(set(pairs)) == 50
    assert hub.last_event_id == ids[-1]


def test_a_new_hub_issues_ids_above_an_older_hubs() -> None:
    old = EventHub()
    old_id = old.publish("x", 1)
    time.sleep(0.002)  # a new process starts at a later millisecond
    new = EventHub()
    assert parse_event_id(new.publish("x", 1)) > parse_event_id(old_id)


def test_subscriber_sees_only_events_published_after_it_subscribed() -> None:
    hub = EventHub()
    hub.publish("before", {})
    sub = hub.subscribe()
    first = hub.publish("run:started", {"run_id": "a"})
    batch = sub.next_batch(1.0)
    assert [(e.id, e.type, e.json()) for e in batch] == [(first, "run:started", {"run_id": "a"})]


def test_next_batch_returns_empty_after_timeout_without_events() -> None:
    sub = EventHub().subscribe()
    assert sub.next_batch(0.05) == []


def test_next_batch_wakes_up_when_an_event_is_published() -> None:
    hub = EventHub()
    sub = hub.subscribe()
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(sub.next_batch(30.0)))
    reader.start()
    hub.publish("run:completed", {"ok": True})
    reader.join(10)
    assert not reader.is_alive()
    assert [e.type for e in got] == ["run:completed"]


def test_last_event_id_replays_every_missed_event_in_order() -> None:
    hub = EventHub()
    ids = [hub.publish("e", i) for i in range(20)]
    sub = hub.subscribe(ids[4])
    events = _drain(sub)
    assert [e.json() for e in events] == list(range(5, 20))
    assert [e.id for e in events] == ids[5:]


def test_replay_covers_at_least_the_last_thousand_events() -> None:
    hub = EventHub()  # defaults: buffer 1000, client queue 256
    ids = [hub.publish("e", i) for i in range(1500)]
    sub = hub.subscribe(ids[499])  # the 1,000 newest are 500..1499
    events = _drain(sub)
    assert [e.json() for e in events] == list(range(500, 1500))


def test_too_old_last_event_id_gets_a_reset_then_live_events() -> None:
    hub = EventHub(buffer_size=10, client_queue=5)
    ids = [hub.publish("e", i) for i in range(30)]
    sub = hub.subscribe(ids[5])
    first = sub.next_batch(1.0)
    assert [e.type for e in first] == [RESET_EVENT]
    assert first[0].id == hub.last_event_id  # reconnecting with it resumes from now
    new = hub.publish("e", "live")
    assert [(e.id, e.json()) for e in sub.next_batch(1.0)] == [(new, "live")]


@pytest.mark.parametrize("bad", ["garbage", "1-2-3", "-1", "99999999999999-1"])
def test_malformed_foreign_or_future_ids_get_a_reset(bad: str) -> None:
    hub = EventHub()
    hub.publish("e", 1)
    assert [e.type for e in hub.subscribe(bad).next_batch(1.0)] == [RESET_EVENT]


def test_id_from_the_same_epoch_but_ahead_of_the_hub_gets_a_reset() -> None:
    hub = EventHub()
    hub.publish("e", 1)
    ahead = f"{hub.epoch}-99"
    assert [e.type for e in hub.subscribe(ahead).next_batch(1.0)] == [RESET_EVENT]


def test_last_event_id_equal_to_newest_replays_nothing() -> None:
    hub = EventHub()
    last = [hub.publish("e", i) for i in range(3)][-1]
    assert hub.subscribe(last).next_batch(0.05) == []


def test_a_reader_that_falls_too_far_behind_is_dropped_and_catches_up_by_id() -> None:
    hub = EventHub(buffer_size=100, client_queue=10, slow_after=0.0)
    sub = hub.subscribe()
    seen = [hub.publish("e", 0)]
    assert [e.id for e in sub.next_batch(1.0)] == seen
    ids = [hub.publish("e", i) for i in range(1, 30)]  # the reader stalls meanwhile
    with pytest.raises(SubscriberDroppedError):
        sub.next_batch(1.0)
    sub.close()
    assert hub.subscriber_count == 0
    again = hub.subscribe(seen[-1])  # what a browser does on reconnect
    assert [e.id for e in _drain(again)] == ids


def test_a_busy_reader_gets_a_burst_in_chunks_instead_of_being_dropped() -> None:
    hub = EventHub(buffer_size=100, client_queue=10, slow_after=60.0)
    sub = hub.subscribe()
    ids = [hub.publish("e", i) for i in range(35)]  # a burst while the reader was busy
    batches = []
    while len(sum(batches, [])) < 35:
        batches.append(sub.next_batch(1.0))
    assert [len(b) for b in batches] == [10, 10, 10, 5]
    assert [e.id for e in sum(batches, [])] == ids


def test_next_frames_is_next_batch_as_written_bytes_even_after_the_buffer_wrapped() -> None:
    hub = EventHub(buffer_size=20, client_queue=8, slow_after=60.0)
    by_batch, by_frames = hub.subscribe(), hub.subscribe()
    for i in range(15):  # past the buffer's size in total, never behind it
        hub.publish("run:started", {"n": i})
        if i % 5 == 4:
            batch = by_batch.next_batch(1.0)
            count, data = by_frames.next_frames(1.0)
            assert count == len(batch) == 5
            assert data == b"".join(e.to_sse().encode() for e in batch)
    for i in range(11):
        hub.publish("run:completed", {"n": i})
    assert by_frames.next_frames(1.0)[0] == 8  # a burst still comes in chunks
    assert by_frames.next_frames(1.0)[0] == 3
    assert by_frames.next_frames(0.05) == (0, b"")
    reset = hub.subscribe("garbage").next_frames(1.0)
    assert reset[0] == 1 and reset[1].startswith(b"event: reset\n")


def test_a_reader_whose_cursor_left_the_buffer_is_dropped_even_if_busy() -> None:
    hub = EventHub(buffer_size=20, client_queue=10, slow_after=60.0)
    sub = hub.subscribe()
    for i in range(50):
        hub.publish("e", i)
    with pytest.raises(SubscriberDroppedError, match="buffer"):
        sub.next_batch(1.0)


def test_publishing_never_waits_for_a_stalled_reader() -> None:
    hub = EventHub(buffer_size=1000, client_queue=10)
    stalled = hub.subscribe()  # never reads
    done = threading.Event()

    def publish_many() -> None:
        for i in range(20_000):
            hub.publish("e", i)
        done.set()

    threading.Thread(target=publish_many, daemon=True).start()
    assert done.wait(60), "publishing blocked on a stalled reader"
    with pytest.raises(SubscriberDroppedError):
        stalled.next_batch(0.1)


def test_memory_is_bounded_by_the_ring_buffer() -> None:
    hub = EventHub(buffer_size=50, client_queue=10)
    subs = [hub.subscribe() for _ in range(5)]
    for i in range(5000):
        hub.publish("e", i)
    assert len(hub._buffer) == 50
    assert all(not hasattr(s, "queue") for s in subs)  # readers hold a cursor, not a copy


def test_close_ends_every_subscription() -> None:
    hub = EventHub()
    sub = hub.subscribe()
    errors: list = []

    def read() -> None:
        try:
            sub.next_batch(30.0)
        except SubscriberDroppedError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    hub.close()
    reader.join(10)
    assert len(errors) == 1


def test_event_type_is_validated_for_the_event_line() -> None:
    hub = EventHub()
    with pytest.raises(ValueError, match="event type"):
        hub.publish("bad\ntype", {})
    with pytest.raises(ValueError, match="event type"):
        hub.publish("", {})
    with pytest.raises(ValueError, match="event type"):  # ("$" would match before it)
        hub.publish("run:x\n", {})


def test_sse_framing() -> None:
    hub = EventHub()
    sub = hub.subscribe()
    event_id = hub.publish("run:started", {"a": "x\ny"})
    (event,) = sub.next_batch(1.0)
    assert event.to_sse() == f'event: run:started\nid: {event_id}\ndata: {{"a":"x\\ny"}}\n\n'


def test_client_queue_larger_than_buffer_is_refused() -> None:
    with pytest.raises(ValueError, match="client_queue"):
        EventHub(buffer_size=10, client_queue=20)


def test_hub_from_settings_is_in_process_without_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_RUNS_REDIS_URL", raising=False)
    assert isinstance(hub_from_settings(), EventHub)


def test_get_hub_names_the_fix_when_the_app_has_no_run_tracking() -> None:
    with pytest.raises(RuntimeError, match="RunTracking"):
        get_hub(Flask("bare"))
