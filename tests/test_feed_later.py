"""``run:started`` joins the next append to the feed file: one write per short run."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from conftest import wait_until
from flask import Flask

import otel_runs
from otel_runs.flask import RunTracking
from otel_runs.live import FeedHub
from otel_runs.live._feed import generations, parse_records
from otel_runs.live._feed_later import MAX_HELD_BYTES


def _records(feed: Path) -> list[tuple[bytes, bytes]]:
    out = []
    for gen in generations(feed):
        data = (feed / f"{gen:016d}.feed").read_bytes()
        out += [(kind, body) for _, kind, body in parse_records(data, gen, 0)[0]]
    return out


def _tracked_hub(root: Path, name: str) -> FeedHub:
    """The feed hub of a fresh app with the default wiring on ``root``."""
    app = Flask(name)
    app.config["PROJECT_ROOT"] = str(root)
    RunTracking(app)
    hub = app.extensions["otel_runs"].extra.get("hub")
    assert isinstance(hub, FeedHub)
    return hub


def test_a_held_record_goes_out_with_the_next_event_in_one_write(tmp_path: Path,
                                                                 monkeypatch) -> None:  # noqa: ANN001
    hub = FeedHub(tmp_path / "feed")
    writes: list[int] = []
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(len(data)) or real(fd, data))
    hub.publish_later("run:started", '{"n":1}')
    assert _records(hub.feed_dir) == [] and writes == []  # held
    event_id = hub.publish("run:completed", {"n": 1})
    assert len(writes) == 1  # both in one write(), in the order they were published
    assert _records(hub.feed_dir) == [(b"run:started", b'{"n":1}'),
                                      (b"run:completed", b'{"n":1}')]
    gen = generations(hub.feed_dir)[-1]  # the id is the end of its own line, the last one
    assert event_id == f"{gen}-{(hub.feed_dir / f'{gen:016d}.feed').stat().st_size}"
    hub.close()


def test_a_held_record_is_written_soon_without_another_event(tmp_path: Path) -> None:
    hub = FeedHub(tmp_path / "feed")
    hub.publish_later("run:started", '{"n":2}')
    wait_until(lambda: _records(hub.feed_dir) == [(b"run:started", b'{"n":2}')], timeout=5)
    hub.publish_later("run:started", '{"n":3}')
    hub.close()  # writes what is held
    assert _records(hub.feed_dir)[-1] == (b"run:started", b'{"n":3}')
    hub.publish_later("run:started", '{"n":4}')  # closed: at once
    assert _records(hub.feed_dir)[-1] == (b"run:started", b'{"n":4}')


def test_a_long_run_is_on_the_feed_while_it_runs_and_a_short_one_in_order(
        tmp_path: Path, git_repo: Path) -> None:  # noqa: ARG001
    hub = _tracked_hub(git_repo, "feed-later")
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
        feed = Path(hub.feed_dir)
        wait_until(lambda: any(run.run_id.encode() in body for _, body in _records(feed)),
                   timeout=5)
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as short:
        pass
    # no stream of this process is open: its run:completed is held too (within 20 ms)
    wait_until(lambda: [kind for kind, body in _records(feed) if short.run_id.encode() in body]
               == [b"run:started", b"run:completed"], timeout=5)


def test_a_short_run_is_one_write_off_the_request_path_and_flush_writes_it(
        tmp_path: Path, git_repo: Path, monkeypatch) -> None:  # noqa: ANN001, ARG001
    hub = _tracked_hub(git_repo, "feed-soon")
    feed = Path(hub.feed_dir)
    hub.writer.open()  # (the first generation made before counting)
    feed_writes: list[tuple[int, bytes]] = []  # (the writing thread, what it wrote)
    real = os.write

    def counting(fd: int, data: bytes) -> int:
        if fd == hub.writer._fd:
            feed_writes.append((threading.get_ident(), bytes(data)))
        return real(fd, data)

    monkeypatch.setattr(os, "write", counting)
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
        run.log("step 1: applied deployment/web")
    ours = threading.get_ident()
    assert [data for thread, data in feed_writes if thread == ours] == []  # none on this thread
    assert otel_runs.flush()  # writes what the hub still holds (the flusher may have already)
    assert len(feed_writes) == 1  # the run's three events in one write, in order
    kinds = [kind for kind, body in _records(feed) if run.run_id.encode() in body]
    assert kinds == [b"run:started", b"run:output", b"run:completed"]
    output = [body for kind, body in _records(feed) if kind == b"run:output"][-1]
    assert json.loads(output) == {"run_id": run.run_id, "lines": [
        {"n": 0, "t": json.loads(output)["lines"][0]["t"], "stream": "out",
         "text": "step 1: applied deployment/web"}]}


def test_with_a_stream_of_this_process_open_run_completed_is_written_at_once(
        tmp_path: Path, git_repo: Path) -> None:  # noqa: ARG001
    hub = _tracked_hub(git_repo, "feed-streaming")
    sub = hub.subscribe()
    try:
        with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
            pass
        kinds = [kind for kind, body in _records(Path(hub.feed_dir))
                 if run.run_id.encode() in body]
        assert kinds == [b"run:started", b"run:completed"]  # written before the block returned
        got = [e.type for e in sub.next_batch(1.0) if run.run_id in e.data]
        assert got == ["run:started", "run:completed"]
    finally:
        sub.close()


def test_a_held_function_that_fails_is_left_out_and_the_others_go(tmp_path: Path) -> None:
    hub = FeedHub(tmp_path / "feed")

    def broken() -> str:
        raise ValueError("cannot encode")

    hub.publish_later("run:started", '{"n":5}')
    hub.publish_later("run:output", broken, 10)
    hub.publish_later("run:output", lambda: '{"n":6}', 10)
    hub.publish("run:completed", {"n": 7})
    assert _records(hub.feed_dir) == [(b"run:started", b'{"n":5}'), (b"run:output", b'{"n":6}'),
                                      (b"run:completed", b'{"n":7}')]
    hub.close()


def test_held_records_stay_within_their_bound_and_go_out_in_order_when_full(
        tmp_path: Path) -> None:
    hub = FeedHub(tmp_path / "feed")
    body = "x" * 1000
    sent = []
    for i in range(3 * MAX_HELD_BYTES // 1000):  # three times what may be held
        text = f'{{"n":{i},"pad":"{body}"}}'
        if i % 2:
            hub.publish_later("run:output", lambda text=text: text, len(text))
        else:
            hub.publish_later("run:started", text)
        sent.append(text.encode())
        assert hub._later._bytes <= MAX_HELD_BYTES
    hub.flush_held()
    assert [data for _, data in _records(hub.feed_dir)] == sent  # all of them, once, in order
    hub.close()


def test_twenty_thousand_short_runs_reach_the_feed_once_each_in_order(git_repo: Path) -> None:
    hub = _tracked_hub(git_repo, "feed-many")
    ids = []
    for _ in range(20_000):
        with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
            pass
        ids.append(run.run_id)
    assert otel_runs.flush()
    seen = [(kind, json.loads(body)["run_id"]) for kind, body in _records(Path(hub.feed_dir))]
    assert seen == [(kind, run_id) for run_id in ids
                    for kind in (b"run:started", b"run:completed")]
