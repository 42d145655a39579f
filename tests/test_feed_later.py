"""``run:started`` joins the next append to the feed file: one write per short run."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import wait_until
from flask import Flask

import otel_runs
from otel_runs.flask import RunTracking
from otel_runs.live import FeedHub
from otel_runs.live._feed import generations, parse_records


def _records(feed: Path) -> list[tuple[bytes, bytes]]:
    out = []
    for gen in generations(feed):
        data = (feed / f"{gen:016d}.feed").read_bytes()
        out += [(kind, body) for _, kind, body in parse_records(data, gen, 0)[0]]
    return out


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
    app = Flask("feed-later")
    app.config["PROJECT_ROOT"] = str(git_repo)
    RunTracking(app)
    hub = app.extensions["otel_runs"].extra.get("hub")
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
        feed = Path(hub.feed_dir)
        wait_until(lambda: any(run.run_id.encode() in body for _, body in _records(feed)),
                   timeout=5)
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as short:
        pass
    kinds = [kind for kind, body in _records(feed) if short.run_id.encode() in body]
    assert kinds == [b"run:started", b"run:completed"]
