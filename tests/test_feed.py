"""The host-wide feed file and the hub on it: real files, real child processes appending
at the same time, real git repositories."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from flask import Flask

import otel_runs
from otel_runs.flask import RunTracking
from otel_runs.live import (
    RESET_EVENT,
    EventHub,
    FeedHub,
    SubscriberDroppedError,
    _feed_hub,
    _feed_registry,
    feed_dir_for,
    get_hub,
    hub_from_settings,
    parse_event_id,
)
from otel_runs.live._feed import encode_record, generations
from otel_runs.live._feed_cursor import FeedCursor

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent('''
    import json, sys
    from otel_runs.live import FeedHub

    directory, name, count, gen_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    hub = FeedHub(directory, generation_bytes=gen_bytes, keep=1000)
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    ids = [hub.publish("tick", {"w": name, "i": i, "pad": "p" * (i % 50)}) for i in range(count)]
    print(json.dumps(ids), flush=True)
''')


def _writers(tmp_path: Path, directory: Path, names: list[str], count: int,
             gen_bytes: int = 8 << 20) -> dict[str, list[str]]:
    """Child processes appending ``count`` events each, all started at once; their ids."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {name: subprocess.Popen([sys.executable, str(script), str(directory), name,
                                     str(count), str(gen_bytes)], env=env, text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
             for name in names}
    try:
        for proc in procs.values():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        out = {}
        for name, proc in procs.items():
            stdout, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0
            out[name] = json.loads(stdout.strip().splitlines()[-1])
        return out
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


def _drain(sub: Any, count: int, timeout: float = 60.0) -> list[Any]:
    """Read ``count`` events (bounded wait)."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += sub.next_batch(0.2)
    return got


def _rest(sub: Any, quiet: float = 0.3) -> list[Any]:
    """Everything the reader has now (until a quiet ``quiet`` s)."""
    got: list[Any] = []
    while True:
        batch = sub.next_batch(quiet)
        if not batch:
            return got
        got += batch


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    return tmp_path / "otel-runs" / "feed-scp-ledger-x"


@pytest.fixture(autouse=True)
def _close_hubs() -> Any:
    """Stop the followers of the hubs a test made (they follow while a reader is open)."""
    before = set(_feed_hub._live_hubs)
    yield
    for hub in set(_feed_hub._live_hubs) - before:
        hub.close()


def test_two_processes_append_every_event_once_in_one_order_for_every_reader(
        tmp_path: Path, feed: Path) -> None:
    readers = [FeedHub(feed), FeedHub(feed)]  # two hubs: as in two other processes
    subs = [hub.subscribe() for hub in readers]
    published = _writers(tmp_path, feed, ["a", "b"], 400)
    seen = [_drain(sub, 800) for sub in subs]
    for events in seen:
        assert len(events) == 800
        keys = [(e.json()["w"], e.json()["i"]) for e in events]
        assert sorted(keys) == sorted((w, i) for w in "ab" for i in range(400))  # each once
        for w in "ab":  # each writer's events in its order, with the ids it was given
            assert [e.id for e in events if e.json()["w"] == w] == published[w]
        ids = [parse_event_id(e.id) for e in events]
        assert ids == sorted(ids) and len(set(ids)) == 800
    assert [e.id for e in seen[0]] == [e.id for e in seen[1]]  # one order for every reader
    assert {e.id for e in seen[0]} == set(published["a"]) | set(published["b"])


def test_rotation_under_concurrent_appends_loses_nothing_and_orders_by_generation(
        tmp_path: Path, feed: Path) -> None:
    gen_bytes = 8192
    live = FeedHub(feed, generation_bytes=gen_bytes, keep=1000)
    sub = live.subscribe()
    published = _writers(tmp_path, feed, ["a", "b", "c"], 300, gen_bytes)
    events = _drain(sub, 900)
    assert len(events) == 900 and len({e.id for e in events}) == 900
    ids = [parse_event_id(e.id) for e in events]
    assert ids == sorted(ids)
    assert len({g for g, _ in ids}) > 5  # it rotated, many times
    for w in "abc":
        assert [e.id for e in events if e.json()["w"] == w] == published[w]
    gens = generations(feed)
    assert gens == list(range(gens[0], gens[0] + len(gens)))  # consecutive generations
    for gen in gens[:-1]:  # every full one sealed; over the bound by the appends in flight only
        st = (feed / f"{gen:016d}.feed").stat()
        assert not st.st_mode & 0o222 and st.st_size < gen_bytes + 3 * 200
    # A reader replaying from the very first event reads the same, across every generation.
    replay = FeedHub(feed, generation_bytes=gen_bytes, keep=1000, buffer_size=50, client_queue=10)
    again = replay.subscribe(events[0].id)
    assert [e.id for e in _drain(again, 899)] == [e.id for e in events[1:]]


def test_replay_from_an_id_on_another_hub_reads_exactly_what_was_missed(feed: Path) -> None:
    hub = FeedHub(feed, generation_bytes=4096, keep=100, buffer_size=20, client_queue=5)
    ids = [hub.publish("tick", {"n": i, "pad": "x" * 40}) for i in range(120)]
    other = FeedHub(feed, generation_bytes=4096, keep=100, buffer_size=20, client_queue=5)
    for start in (0, 9, 60, 118):  # older than the buffer (read from the file), and recent
        replayed = _drain(other.subscribe(ids[start]), 119 - start)
        assert [e.id for e in replayed] == ids[start + 1:]
        assert [e.json()["n"] for e in replayed] == list(range(start + 1, 120))
    assert _rest(other.subscribe(ids[-1]), 0.1) == []  # the newest: nothing to replay
    sub = other.subscribe(ids[50])
    _drain(sub, 69)
    live = hub.publish("tick", {"n": 120})
    assert [e.id for e in _drain(sub, 1)] == [live]  # and then live


def test_an_id_older_than_the_kept_generations_gets_a_reset_then_live_events(
        feed: Path) -> None:
    hub = FeedHub(feed, generation_bytes=2048, keep=2)
    first = hub.publish("tick", {"n": 0})
    for i in range(200):
        hub.publish("tick", {"n": i, "pad": "y" * 60})
    assert len(generations(feed)) == 2  # older generations were deleted
    sub = hub.subscribe(first)
    (reset,) = sub.next_batch(1.0)
    assert reset.type == RESET_EVENT and "reload" in reset.json()["reason"]
    assert parse_event_id(reset.id) == parse_event_id(hub.last_event_id)  # resumes from now
    new = hub.publish("tick", {"n": "live"})
    assert [e.id for e in _drain(sub, 1)] == [new]
    assert _rest(hub.subscribe(reset.id), 0.1)[0].id == new  # reconnecting with it works


@pytest.mark.parametrize("bad", ["garbage", "1-2-3", "99999999999999999-1", "{ahead}", "{mid}"])
def test_malformed_ahead_or_misplaced_ids_get_a_reset(feed: Path, bad: str) -> None:
    hub = FeedHub(feed)
    last = hub.publish("tick", {"n": 1})
    gen, offset = parse_event_id(last) or (0, 0)
    bad = bad.format(ahead=f"{gen}-{offset + 10}", mid=f"{gen}-{offset - 3}")
    assert [e.type for e in hub.subscribe(bad).next_batch(1.0)] == [RESET_EVENT]


def test_a_torn_last_line_is_not_delivered_until_it_is_complete(feed: Path) -> None:
    hub = FeedHub(feed)
    first = hub.publish("tick", {"n": 0})
    sub = FeedHub(feed).subscribe(first)
    path = feed / f"{(parse_event_id(first) or (0, 0))[0]:016d}.feed"
    record = encode_record("deploy:log", json.dumps({"line": "z" * 300}).encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, record[:100])  # a write under way (or cut short)
        assert sub.next_batch(0.3) == []
        assert FeedCursor(feed, parse_event_id(first) or (0, 0)).read() == []
        os.write(fd, record[100:])
    finally:
        os.close(fd)
    (event,) = _drain(sub, 1)
    assert event.type == "deploy:log" and event.json() == {"line": "z" * 300}
    assert parse_event_id(event.id)[1] == path.stat().st_size  # type: ignore[index]
    # A torn line (a short write on a full disk) ended by a newline is skipped, not
    # delivered, and the next record is.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, record[:50] + b"\n")
    finally:
        os.close(fd)
    after = hub.publish("tick", {"n": 2})
    assert [e.id for e in _drain(sub, 1)] == [after]
    assert _rest(sub, 0.1) == []


def test_own_events_are_in_the_buffer_when_publish_returns_in_the_files_order(
        feed: Path) -> None:
    mine, other = FeedHub(feed), FeedHub(feed)
    sub = mine.subscribe()
    theirs = other.publish("tick", {"from": "other"})
    own = mine.publish("tick", {"from": "me"})
    assert [e.id for e in sub.next_batch(0)] == [theirs, own]  # no wait: caught up by publish


def test_publish_json_writes_the_text_as_given_and_keeps_one_line(feed: Path) -> None:
    hub = FeedHub(feed)
    sub = hub.subscribe()
    hub.publish_json("run:started", b'{"run_id":"a","x":1}')
    hub.publish_json("run:completed", '{\n  "run_id": "a"\n}')  # pretty JSON: still one record
    events = _drain(sub, 2)
    assert [e.data for e in events] == ['{"run_id":"a","x":1}', '{   "run_id": "a" }']
    assert events[0].frame == (f'event: run:started\nid: {events[0].id}\n'
                               'data: {"run_id":"a","x":1}\n\n').encode()
    assert events[1].json() == {"run_id": "a"}


def test_no_follower_thread_while_no_stream_is_open(feed: Path) -> None:
    hub = FeedHub(feed, idle_timeout=0.2)
    for i in range(50):
        hub.publish("tick", {"n": i})  # only appends: nothing reads the file
    assert not hub.following and hub._follower is None and hub._reader is None
    assert hub.buffered_bytes == 0
    sub = hub.subscribe()
    assert hub.following
    sub.close()
    wait_until(lambda: not hub.following, timeout=10)
    assert hub._reader is None and hub.buffered_bytes == 0  # nothing held either
    hub.publish("tick", {"n": "again"})
    assert not hub.following
    again = hub.subscribe()  # the next stream starts another
    latest = hub.publish("tick", {"n": "latest"})
    assert [e.id for e in _drain(again, 1)] == [latest]


def test_a_reader_behind_the_buffer_reads_on_from_the_file_and_a_stalled_one_is_dropped(
        feed: Path) -> None:
    hub = FeedHub(feed, buffer_size=20, client_queue=5, slow_after=60.0)
    busy = hub.subscribe()
    ids = [hub.publish("tick", {"n": i}) for i in range(100)]  # past the buffer
    assert [e.id for e in _drain(busy, 100)] == ids  # nothing lost, in chunks
    stalled_hub = FeedHub(feed, buffer_size=20, client_queue=5, slow_after=0.0)
    stalled = stalled_hub.subscribe()
    seen = [hub.publish("tick", {"n": "a"})]
    assert [e.id for e in _drain(stalled, 1)] == seen
    more = [hub.publish("tick", {"n": i}) for i in range(30)]
    time.sleep(0.05)
    with pytest.raises(SubscriberDroppedError):
        _drain(stalled, 30)
    resumed = stalled_hub.subscribe(seen[-1])  # what a browser does
    assert [e.id for e in _drain(resumed, 30)] == more


def test_close_ends_every_subscription(feed: Path) -> None:
    hub = FeedHub(feed)
    sub = hub.subscribe()
    errors: list[Exception] = []

    def read() -> None:
        try:
            sub.next_batch(30.0)
        except SubscriberDroppedError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.1)
    hub.close()
    reader.join(10)
    assert len(errors) == 1


# -- the project's feed, wiring, fallback ----------------------------------------------------

def test_the_feed_dir_is_a_sibling_of_the_ledgers_journal_dir(git_repo: Path) -> None:
    from otel_runs.ledger import ledger_for

    journal = ledger_for(git_repo).journal_dir
    assert feed_dir_for(git_repo) == journal.parent / ("feed-" + journal.name[len("journal-"):])
    hub = hub_from_settings(project_root=git_repo)
    assert isinstance(hub, FeedHub) and hub.feed_dir == feed_dir_for(git_repo)
    hub.publish("tick", {})
    assert not [p for p in journal.rglob("*") if p.suffix == ".feed"]  # nothing in the journal


def test_not_a_git_repository_is_in_process_without_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="otel_runs.hub"):
        assert isinstance(hub_from_settings(project_root=tmp_path), EventHub)
    assert not caplog.records


def _read_only_bind(path: Path) -> bool:
    """``path`` made a read-only bind mount of itself (root only); False if not possible."""
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode:
        return False
    if subprocess.run(["mount", "-o", "remount,bind,ro", str(path)],
                      capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        return False
    return True


@pytest.mark.parametrize("how", ["read-only", "a file in the way"])
def test_a_feed_dir_that_cannot_be_written_falls_back_in_process_with_one_warning(
        git_repo: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        how: str) -> None:
    monkeypatch.setattr(_feed_registry, "_warned", set())
    directory = feed_dir_for(git_repo)
    mounted = False
    if how == "read-only":
        if os.geteuid() == 0:
            mounted = _read_only_bind(directory)
            if not mounted:
                pytest.skip("cannot make a read-only bind mount here")
        else:
            directory.mkdir(parents=True)
            directory.chmod(0o555)
    else:
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.write_text("not a directory")
    try:
        with caplog.at_level(logging.WARNING, logger="otel_runs.hub"):
            app = Flask("read-only-feed")
            app.config["PROJECT_ROOT"] = str(git_repo)
            RunTracking(app)
            assert isinstance(get_hub(app), EventHub)
            assert isinstance(hub_from_settings(project_root=git_repo), EventHub)
        warnings = [r for r in caplog.records if "cannot be written" in r.getMessage()]
        assert len(warnings) == 1 and str(directory) in warnings[0].getMessage()
        client = app.test_client()  # and the app still works, with its in-process feed
        sub = get_hub(app).subscribe()

        @app.post("/x")
        def x() -> Any:
            with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s"):
                return {"ok": True}

        assert client.post("/x").status_code == 200
        assert {e.type for e in _drain(sub, 2)} == {"run:started", "run:completed"}
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)
        elif directory.is_dir():
            directory.chmod(0o755)


def test_apps_of_one_process_on_one_feed_share_it_and_publish_each_run_once(
        git_repo: Path) -> None:
    apps = []
    for name in ("one", "two"):
        app = Flask(name)
        app.config["PROJECT_ROOT"] = str(git_repo)
        RunTracking(app)
        apps.append(app)
    hubs = [get_hub(app) for app in apps]
    assert isinstance(hubs[0], FeedHub) and hubs[0] is hubs[1]  # one follower per process
    ext = [app.extensions["otel_runs"].extra["sse_processor"] for app in apps]
    assert ext[0] is ext[1]
    reader = FeedHub(hubs[0].feed_dir).subscribe()  # another process's view
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
        pass
    events = _drain(reader, 2) + _rest(reader, 0.3)
    assert [(e.type, e.json()["run_id"]) for e in events] == [
        ("run:started", run.run_id), ("run:completed", run.run_id)]


HOLDER = textwrap.dedent('''
    import sys
    from otel_runs.live import FeedHub

    hub = FeedHub(sys.argv[1])
    subs = [hub.subscribe() for _ in range(int(sys.argv[2]))]
    print("ready", flush=True)
    sys.stdin.readline()
''')


def test_streams_are_paced_by_the_hosts_count_and_a_dead_process_stops_counting(
        tmp_path: Path, feed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from otel_runs.live import _feed_census

    monkeypatch.setattr(_feed_census, "_FRESH", 0.0)  # read the files at every look
    hub = FeedHub(feed)
    mine = [hub.subscribe() for _ in range(2)]
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    child = subprocess.Popen([sys.executable, str(script), str(feed), "3"], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert hub.subscriber_count == 2 and hub.paced_streams() == 5
        mine[0].close()
        assert hub.paced_streams() == 4
    finally:
        child.kill()
        child.wait(30)
    assert hub.paced_streams() == 1  # its lock went with it: not counted, file removed
    assert not (feed / f"streams-{child.pid}").exists()
    assert FeedHub(feed, announce=False).subscribe() and hub.paced_streams() == 1
