"""A backlog (runs finished faster than they are committed) waits in the journal, not in
memory: past ``KEEP_LINES`` pending runs a journaled run is only a position in its
segment (16 bytes), and the committer makes entries for it again from the journal.
Readers still see every run (through the journal view); the commit gets every run once."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest
from conftest import git

from otel_runs import Run, new_run_id
from otel_runs.ledger import Ledger, _pending


def on_branch(repo: Path) -> list[str]:
    names = git(repo, "ls-tree", "-r", "--name-only", "scp-ledger", check=False).split()
    return [n.split("/")[-2] for n in names if n.endswith("/run.json")]


def segments(ledger: Ledger) -> list[Path]:
    return sorted(Path(ledger.journal_dir).glob("*.jsonl"))


def thirty_recorded(repo: Path) -> tuple[Ledger, list[Run], Path]:
    """A ledger with 30 runs recorded (20 of them spilled) and its one journal segment."""
    ledger = Ledger(repo)
    runs = [Run(new_run_id(), "deploy", "deploy:k8s", status="ok") for _ in range(30)]
    for run in runs:
        ledger.record(run, [])
    (segment,) = segments(ledger)
    return ledger, runs, segment


@pytest.fixture
def backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pending, "KEEP_LINES", 10)
    monkeypatch.setenv("OTEL_RUNS_COMMIT_INTERVAL", "600")  # nothing commits by itself


@pytest.mark.parametrize("commit_process", ["never", "always"])
def test_spilled_runs_are_read_and_committed_like_the_others(
        git_repo: Path, backlog: None, monkeypatch: pytest.MonkeyPatch,
        commit_process: str) -> None:
    monkeypatch.setenv("OTEL_RUNS_COMMIT_PROCESS", commit_process)  # here / the helper reads
    ledger = Ledger(git_repo)
    try:
        runs = [Run(new_run_id(), "deploy", "deploy:k8s", status="ok", summary=f"run {i}")
                for i in range(40)]
        for run in runs:
            ledger.record(run, [{"name": f"span {run.summary}"}])
        assert len(ledger.pending) == 40 and ledger.pending.spilled == 30
        assert len(ledger.pending.snapshot()) == 10  # the others have no entry at all
        last = runs[-1]
        assert ledger.get(last.run_id) == last
        assert [s["name"] for s in ledger.spans(last.run_id)] == ["span run 39"]
        assert [r.run_id for r in ledger.recent(5)] == sorted(r.run_id for r in runs)[-5:][::-1]
        assert ledger.flush(60)
        assert sorted(on_branch(git_repo)) == sorted(r.run_id for r in runs)
        assert Ledger(git_repo).get(last.run_id) == last
    finally:
        ledger.close()
    assert segments(ledger) == []  # every line accounted for: the journal is gone


def test_a_backlog_of_30000_runs_costs_about_16_bytes_a_run(
        git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tested full: 30,000 runs pending at once, memory measured while they wait, then
    every one committed exactly once."""
    monkeypatch.setattr(_pending, "KEEP_LINES", 100)
    monkeypatch.setenv("OTEL_RUNS_COMMIT_INTERVAL", "600")
    ledger = Ledger(git_repo)
    try:
        warm = [Run(new_run_id(), "deploy", "deploy:k8s", status="ok") for _ in range(200)]
        for run in warm:
            ledger.record(run, [])
        runs = [Run(new_run_id(), "deploy", "deploy:k8s", status="ok", summary=f"r{i}")
                for i in range(30_000)]
        with ledger._fold_lock:  # the committer waits: as if git were slow for a while
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for run in runs:
                ledger.record(run, [])
            grown = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
        assert ledger.pending.spilled == 30_100 and len(ledger.pending.snapshot()) == 100
        assert grown / len(runs) < 48, f"{grown / len(runs):.0f} bytes per pending run"
        assert ledger.get(runs[0].run_id) == runs[0]  # the oldest spilled one, via the view
        assert ledger.flush(120)
        ids = on_branch(git_repo)
        assert len(ids) == len(set(ids)) == 30_200
        assert set(ids) == {r.run_id for r in warm + runs}
        assert len(ledger.pending) == 0
    finally:
        ledger.close()


def test_a_run_recorded_twice_is_committed_once_and_its_segments_go(
        git_repo: Path, backlog: None) -> None:
    ledger = Ledger(git_repo)
    try:
        runs = [Run(new_run_id(), "deploy", "deploy:k8s", status="ok") for _ in range(20)]
        for run in runs:
            ledger.record(run, [])
        ledger.record(runs[15], [])  # spilled twice
        ledger.record(runs[2], [])  # kept, then spilled again
        assert len(ledger.pending) == 22
        assert ledger.flush(60)
        ids = on_branch(git_repo)
        assert sorted(ids) == sorted(r.run_id for r in runs)
        assert len(ledger.pending) == 0
    finally:
        ledger.close()
    assert segments(ledger) == []  # every line accounted for: the journal is gone


def test_a_spilled_line_that_cannot_be_read_now_waits_and_is_not_lost(
        git_repo: Path, backlog: None) -> None:
    """The segment reads short (here: truncated under the writer): nothing is made of it,
    ``flush`` says False; once it reads again every run is committed."""
    ledger, runs, segment = thirty_recorded(git_repo)
    try:
        data = segment.read_bytes()
        os.truncate(segment, 0)
        assert not ledger.flush(1.5)
        assert ledger.pending.read_failures > 0 and ledger.pending.spilled == 20
        with open(segment, "r+b") as fh:
            fh.write(data)
        assert ledger.flush(60)
        assert sorted(on_branch(git_repo)) == sorted(r.run_id for r in runs)
    finally:
        ledger.close()


def test_a_spilled_line_that_is_not_a_run_is_quarantined_and_the_others_committed(
        git_repo: Path, backlog: None) -> None:
    ledger, runs, segment = thirty_recorded(git_repo)
    try:
        data = segment.read_bytes()
        lines = data.splitlines(keepends=True)
        ends = [i for i, line in enumerate(lines) if line.startswith(b'{"e":"end"')]
        bad = ends[25]  # a spilled one
        lines[bad] = b"x" * (len(lines[bad]) - 1) + b"\n"  # same length, not JSON
        with open(segment, "r+b") as fh:
            fh.write(b"".join(lines))
        assert ledger.flush(60)
        good = {r.run_id for i, r in enumerate(runs) if i != 25}
        assert set(on_branch(git_repo)) == good
        (quarantined,) = ledger.quarantined()
        assert quarantined.line == b"x" * (len(lines[bad]) - 1) + b"\n"
    finally:
        ledger.close()
