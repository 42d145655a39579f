"""The runs list's server-side filters (``subtype``, ``since``, ``until`` on
``/api/runs/recent``, with ``type``, ``status`` and ``before``) and its counts per status
(``/api/runs/counts``): real Flask app, real git ledger in a tmp repo, runs committed,
journaled and running (this process's and another process's), each counted once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import git
from flask import Flask
from test_api import make_app
from test_journal_view import Child

from otel_runs import Run, new_run_id
from otel_runs.ledger import Ledger, _reads, ledger_for
from otel_runs.ledger._sync import sync_ledger
from otel_runs.ledger._tally import tally_of

#: The runs' start times are around this (any fixed time: no assertion is about the clock).
BASE = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
SUBTYPES = {"build": ["build:docker", "build:wheel"], "deploy": ["deploy:k8s"],
            "test": ["test:unit", "test:e2e"]}
STATUSES = ("ok", "ok", "failed", "cancelled")


def iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def make_run(i: int, at: datetime | None = None, status: str | None = None) -> Run:
    """The i-th test run: types, subtypes and statuses in turn, started ``i`` minutes
    after BASE (or at ``at``)."""
    at = at or BASE + timedelta(minutes=i)
    rtype = ("build", "deploy", "test")[i % 3]
    subtype = SUBTYPES[rtype][i // 3 % len(SUBTYPES[rtype])]
    return Run(new_run_id(at), rtype, subtype, status=status or STATUSES[i % len(STATUSES)],
               summary=f"run {i}", started_at=iso(at), ended_at=iso(at + timedelta(seconds=1)),
               duration_ms=1000.0)


def wanted(runs: list[Run], rtype: str | None = None, subtype: str | None = None,
           status: str | None = None, since: datetime | None = None,
           until: datetime | None = None) -> list[Run]:
    """What the filter should give, newest first (start times at the millisecond)."""
    def ok(r: Run) -> bool:
        at = datetime.strptime(r.started_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        return ((rtype is None or r.type == rtype) and (subtype is None or subtype.lower() in r.subtype.lower())
                and (status is None or r.status == status)
                and (since is None or ms(at) >= ms(since)) and (until is None or ms(at) < ms(until)))
    return sorted((r for r in runs if ok(r)), key=lambda r: r.run_id, reverse=True)


def get_ids(client: Any, query: str) -> list[str]:
    resp = client.get(f"/api/runs/recent?{query}")
    assert resp.status_code == 200, resp.data[:300]
    return [r["run_id"] for r in resp.get_json()["runs"]]


def all_pages(client: Any, query: str, limit: int) -> list[str]:
    """Every run of a filter through ``before`` pages of ``limit``."""
    out = get_ids(client, f"{query}&limit={limit}")
    while out:
        page = get_ids(client, f"{query}&limit={limit}&before={out[-1]}")
        assert len(page) <= limit
        if not page:
            break
        out += page
    return out


def get_counts(client: Any, query: str = "") -> dict[str, Any]:
    resp = client.get(f"/api/runs/counts?{query}")
    assert resp.status_code == 200, resp.data[:300]
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["total"] == sum(body["counts"].values())
    return body


def status_counts(runs: list[Run]) -> dict[str, int]:
    counts = dict.fromkeys(("running", "ok", "failed", "cancelled", "interrupted"), 0)
    counts.update(Counter(r.status for r in runs))
    return counts


@pytest.fixture
def no_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing commits by itself: runs stay in the journal until a flush."""
    monkeypatch.setenv("OTEL_RUNS_COMMIT_INTERVAL", "3600")
    monkeypatch.setenv("OTEL_RUNS_COMMIT_PROCESS", "never")


@pytest.fixture
def app(git_repo: Path) -> Flask:
    return make_app(git_repo)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


def record(ledger: Ledger, runs: list[Run], commit: bool) -> None:
    for run in runs:
        ledger.record(run)
    if commit:
        assert ledger.flush(60)


def seed(ledger: Ledger, committed: int, journaled: int, running: int) -> list[Run]:
    """That many runs committed, then finished and not committed, then running (in turn
    of ``make_run``): all of them, oldest first."""
    done = [make_run(i) for i in range(committed)]
    record(ledger, done, commit=True)
    waiting = [make_run(i) for i in range(committed, committed + journaled)]
    record(ledger, waiting, commit=False)
    first = committed + journaled
    live = [make_run(i, status="running") for i in range(first, first + running)]
    for run in live:
        ledger.record_started(run)
    return done + waiting + live


FILTERS: list[dict[str, Any]] = [
    {},
    {"subtype": "docker"},
    {"subtype": "BUILD:"},  # part of the subtype, any case
    {"since": BASE + timedelta(minutes=10)},
    {"until": BASE + timedelta(minutes=20)},
    {"since": BASE + timedelta(minutes=5), "until": BASE + timedelta(minutes=25)},
    {"rtype": "test", "subtype": "unit", "since": BASE + timedelta(minutes=3)},
    {"rtype": "build", "status": "ok", "until": BASE + timedelta(minutes=30)},
    {"status": "failed", "since": BASE + timedelta(minutes=7, seconds=30)},
    {"subtype": "nothing-like-this"},
]


def query(rtype: str | None = None, subtype: str | None = None, status: str | None = None,
          since: datetime | None = None, until: datetime | None = None,
          epoch: bool = False) -> str:
    """The query string of a filter (times as ISO 8601 with an offset, or epoch ms)."""
    def when(at: datetime) -> str:
        return str(ms(at)) if epoch else at.astimezone(timezone(timedelta(hours=2))) \
            .isoformat().replace("+", "%2B")
    parts = [f"type={rtype}" if rtype else "", f"subtype={subtype}" if subtype else "",
             f"status={status}" if status else "", f"since={when(since)}" if since else "",
             f"until={when(until)}" if until else ""]
    return "&".join(p for p in parts if p)


@pytest.mark.parametrize("where", ["journal", "committed", "both"])
def test_recent_filters_by_subtype_and_time_and_pages_with_before(
        app: Flask, git_repo: Path, no_commits: None, where: str) -> None:
    client = app.test_client()
    ledger = ledger_for(str(git_repo))
    runs = [make_run(i) for i in range(40)]
    record(ledger, runs[:25], commit=where != "journal")
    record(ledger, runs[25:], commit=where == "committed")
    for n, flt in enumerate(FILTERS):
        expected = [r.run_id for r in wanted(runs, **flt)]
        q = query(**flt, epoch=n % 2 == 1)
        assert get_ids(client, f"{q}&limit=500") == expected, flt
        assert all_pages(client, q, 3) == expected, flt  # load older keeps the filter
        if expected:
            assert get_ids(client, f"{q}&limit=2&before={expected[0]}") == expected[1:3], flt


def test_running_runs_are_filtered_by_subtype_and_time(
        app: Flask, git_repo: Path, no_commits: None) -> None:
    client = app.test_client()
    ledger = ledger_for(str(git_repo))
    runs = [make_run(i, status="running") for i in range(15)]
    for run in runs:
        ledger.record_started(run)
    since = BASE + timedelta(minutes=2)
    expected = [r.run_id for r in wanted(runs, subtype="docker", since=since)]
    assert expected
    got = get_ids(client, f"status=running&subtype=docker&since={ms(since)}")
    assert got == expected
    assert get_ids(client, f"subtype=docker&since={ms(since)}") == expected


@pytest.mark.parametrize(("endpoint", "args", "word"), [
    ("recent", "since=yesterday", "since"),
    ("recent", "since=2026-11-01T12:00:00", "time zone"),  # no time zone: which time?
    ("recent", "since=2026-11-01", "time zone"),
    ("recent", "until=12.5", "until"),
    ("recent", "until=-1000", "until"),
    ("recent", "since=1e12", "since"),
    ("recent", "since=99999999999999999", "9999"),
    ("recent", "since=\uff11\uff12", "since"),  # digits of another script
    ("recent", "since=2026-11-02T00:00:00Z&until=2026-11-01T00:00:00Z", "after"),
    ("recent", "subtype=" + "x" * 201, "subtype"),
    ("recent", "since=2026-13-01T00:00:00Z", "since"),
    ("recent", "since=2026-11-01T00:00:00Z&before=nope", "before"),
    ("counts", "since=soon", "since"),
    ("counts", "until=2026-11-01T10:00:00", "time zone"),
    ("counts", "since=5&until=4", "after"),
    ("counts", "type=no_such_type", "type"),
    ("counts", "subtype=" + "y" * 300, "subtype"),
])
def test_bad_filter_values_are_json_400(app: Flask, endpoint: str, args: str, word: str) -> None:
    resp = app.test_client().get(f"/api/runs/{endpoint}?{args}")
    assert resp.status_code == 400, resp.data[:300]
    assert resp.mimetype == "application/json"
    assert word in resp.get_json()["error"]


def test_counts_count_every_run_of_the_filter_not_one_page(
        app: Flask, git_repo: Path, no_commits: None) -> None:
    """500 committed runs (five pages of the list), 30 finished and not committed, 7
    running: the counts are of all of them, each once."""
    client = app.test_client()
    runs = seed(ledger_for(str(git_repo)), 500, 30, 7)
    assert len(get_ids(client, "limit=100")) == 100  # a page of the list is not all of them
    for flt in FILTERS:
        if "status" in flt:
            continue  # the counts are per status
        body = get_counts(client, query(**flt))
        assert body["counts"] == status_counts(wanted(runs, **flt)), flt
        assert body["exact"] is True
    body = get_counts(client)
    assert body["total"] == 537 and body["counts"]["running"] == 7
    # The same runs through the list, page after page: the same numbers.
    listed = all_pages(client, "subtype=k8s", 100)
    assert len(listed) == get_counts(client, "subtype=k8s")["total"]
    assert len(listed) == len(set(listed))


def test_counts_stay_right_as_runs_finish_and_are_committed(
        app: Flask, git_repo: Path, no_commits: None) -> None:
    client = app.test_client()
    ledger = ledger_for(str(git_repo))
    committed = [make_run(i) for i in range(12)]
    record(ledger, committed, commit=True)
    before = get_counts(client)["counts"]
    running = [make_run(i, status="running") for i in range(12, 15)]
    for run in running:
        ledger.record_started(run)
    now = get_counts(client)["counts"]
    assert now["running"] == before["running"] + 3
    finished = [Run.from_dict({**run.to_dict(), "status": "ok"}) for run in running]
    for run in finished:  # they end ok: running to ok, in the journal
        ledger.record(run)
    ended = get_counts(client)["counts"]
    assert ended["running"] == 0 and ended["ok"] == before["ok"] + 3
    assert ledger.flush(60)
    assert get_counts(client)["counts"] == ended  # on the branch now: counted once
    assert get_counts(client, "type=build")["counts"] == status_counts(
        wanted(committed + finished, rtype="build"))


def test_counts_include_another_process_s_running_and_uncommitted_runs(
        app: Flask, git_repo: Path, children: list[Child], no_commits: None) -> None:
    client = app.test_client()
    ledger = ledger_for(str(git_repo))
    committed = [make_run(i) for i in range(9)]
    record(ledger, committed, commit=True)
    base = get_counts(client)
    child = Child(git_repo)
    children.append(child)
    child.send("bulk 5")  # test:unit, ok, not committed
    held = child.send("hold")  # build:docker, running
    got = get_counts(client)
    assert got["total"] == base["total"] + 6
    assert got["counts"]["ok"] == base["counts"]["ok"] + 5
    assert got["counts"]["running"] == 1
    unit = get_counts(client, "subtype=test:unit")
    assert unit["counts"]["ok"] == 5 + status_counts(wanted(committed, subtype="test:unit"))["ok"]
    assert get_ids(client, "status=running&subtype=docker") == [held]
    child.send(f"release {held}")
    child.exit()  # its exit flush commits its runs
    done = get_counts(client)
    assert done["total"] == base["total"] + 6 and done["counts"]["running"] == 0


def test_counts_and_recent_at_20000_committed_runs(git_repo: Path) -> None:
    """20,000 runs on the branch (written in batches, as the committer does): counts of
    any filter are right, the list's newest page and a page deep in a time range too,
    and a new commit is counted without counting the branch again."""
    ledger = ledger_for(str(git_repo))
    runs = [make_run(i, at=BASE + timedelta(seconds=30 * i)) for i in range(20_000)]
    for k in range(0, len(runs), 2_500):
        assert ledger.store.write_batch([(r.to_dict(), []) for r in runs[k:k + 2_500]]) == 2_500
    app = make_app(git_repo)
    client = app.test_client()
    cases: list[dict[str, Any]] = [
        {}, {"rtype": "deploy"}, {"subtype": "e2e"},
        {"since": BASE + timedelta(days=3)},
        {"since": BASE + timedelta(days=1, minutes=7), "until": BASE + timedelta(days=2, hours=5)},
        {"rtype": "build", "subtype": "wheel", "until": BASE + timedelta(hours=30)},
    ]
    for flt in cases:
        expected = wanted(runs, **flt)
        assert get_counts(client, query(**flt))["counts"] == status_counts(expected), flt
        assert get_ids(client, f"{query(**flt)}&limit=50") == [r.run_id for r in expected[:50]]
        if len(expected) > 130:
            cursor = expected[99].run_id
            assert get_ids(client, f"{query(**flt)}&limit=30&before={cursor}") == \
                [r.run_id for r in expected[100:130]], flt
    tally = tally_of(ledger)
    full = tally.full_counts
    more = [make_run(i, at=BASE + timedelta(seconds=30 * i)) for i in range(20_000, 20_010)]
    record(ledger, more, commit=True)
    assert get_counts(client)["total"] == 20_010
    assert get_counts(client, query(since=BASE + timedelta(seconds=30 * 20_000)))["total"] == 10
    assert tally.full_counts == full  # the new commit only


def test_counts_past_the_journal_bound_say_they_are_not_exact(
        app: Flask, git_repo: Path, no_commits: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """More runs not committed yet than one count reads: lower bounds, ``exact`` false."""
    monkeypatch.setattr(_reads, "MAX_JOURNAL_COUNT", 4)
    client = app.test_client()
    ledger = ledger_for(str(git_repo))
    record(ledger, [make_run(i) for i in range(10)], commit=False)
    body = get_counts(client)
    assert body["exact"] is False and 4 <= body["total"] < 10
    assert ledger.flush(60)
    assert get_counts(client)["total"] == 10  # all on the branch, none twice


def test_counts_after_a_sync_merged_two_ledgers(tmp_path: Path) -> None:
    """A merge (``otel-runs sync`` of two clones) is counted again, each run once."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "-q", str(bare), str(seed))
    git(seed, "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-q", "--allow-empty",
        "-m", "init")
    git(seed, "push", "-q", "origin", "HEAD:main")
    a, b = tmp_path / "a", tmp_path / "b"
    for clone in (a, b):
        git(tmp_path, "clone", "-q", str(bare), str(clone))
    runs_a, runs_b = [make_run(i) for i in range(7)], [make_run(i) for i in range(7, 12)]
    record(ledger_for(str(a)), runs_a, commit=True)
    record(ledger_for(str(b)), runs_b, commit=True)
    client_b = make_app(b).test_client()
    assert get_counts(client_b)["counts"] == status_counts(runs_b)  # the tally is made
    sync_ledger(a, "origin")
    assert sync_ledger(b, "origin").merge == "merged"
    sync_ledger(a, "origin")
    for clone, client in ((a, make_app(a).test_client()), (b, client_b)):
        assert get_counts(client)["counts"] == status_counts(runs_a + runs_b), clone
        since = BASE + timedelta(minutes=5)
        assert get_counts(client, f"since={ms(since)}")["counts"] == \
            status_counts(wanted(runs_a + runs_b, since=since)), clone
        assert get_ids(client, f"since={ms(since)}&limit=100") == \
            [r.run_id for r in wanted(runs_a + runs_b, since=since)], clone


def expected_histogram(runs: list[Run], start: int, step: int, n: int) -> list[dict[str, int]]:
    out: list[Counter[str]] = [Counter() for _ in range(n)]
    for r in runs:
        at = ms(datetime.strptime(r.started_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc))
        i = (at - start) // step
        if 0 <= i < n:
            out[i][r.status] += 1
    return [dict(c) for c in out]


def test_counts_draw_the_runs_over_time_in_buckets(
        app: Flask, git_repo: Path, no_commits: None) -> None:
    """``buckets=N``: per status in N equal slices of the filter's range, over committed,
    uncommitted and running runs alike (what the page's runs-over-time chart draws)."""
    client = app.test_client()
    runs = seed(ledger_for(str(git_repo)), 300, 20, 5)
    for flt, n in (({}, 30), ({"subtype": "docker"}, 7),
                   ({"since": BASE + timedelta(minutes=50), "until": BASE + timedelta(minutes=290)}, 12),
                   ({"rtype": "test", "since": BASE + timedelta(minutes=100)}, 200)):
        body = get_counts(client, f"{query(**flt)}&buckets={n}")
        hist = body["histogram"]
        assert len(hist["buckets"]) == n and hist["step_ms"] >= 1
        mine = wanted(runs, **flt)
        first = ms(flt["since"]) if "since" in flt else min(
            ms(datetime.strptime(r.started_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc))
            for r in mine)
        assert hist["start_ms"] == first
        assert hist["buckets"] == expected_histogram(mine, first, hist["step_ms"], n), flt
        assert sum(sum(b.values()) for b in hist["buckets"]) == body["total"] == len(mine)
    assert "histogram" not in get_counts(client)  # only when asked
    assert get_counts(client, "subtype=nothing-like-this&buckets=5")["histogram"]["buckets"] == []
    for bad in ("0", "201", "x", "٣"):
        resp = client.get(f"/api/runs/counts?buckets={bad}")
        assert resp.status_code == 400 and "buckets" in resp.get_json()["error"]
