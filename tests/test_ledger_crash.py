"""Crash recovery with real processes: SIGKILL loses nothing whose block exited,
runs in flight become ``interrupted``, a live process's runs are left alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import git, user_state, wait_until

from otel_runs.ledger import Ledger
from otel_runs.ledger._journal import dead_journals

CHILD = str(Path(__file__).with_name("ledger_child.py"))


class Child:
    """A ledger_child.py process whose stdout lines are collected by a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, CHILD, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.lines: list[list[str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.split())

    def ids(self, kind: str) -> list[str]:
        return [parts[1] for parts in list(self.lines) if parts and parts[0] == kind]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)

    def finish(self, timeout: float = 60) -> None:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(timeout=10)
        assert self.proc.returncode == 0, err


def test_sigkill_loses_no_finished_run_and_marks_runs_in_flight_interrupted(git_repo: Path) -> None:
    before = user_state(git_repo)
    # A long commit interval: most finished runs exist only in the journal when killed.
    child = Child("loop", str(git_repo), env={"OTEL_RUNS_COMMIT_INTERVAL": "30"})
    wait_until(lambda: len(child.ids("done")) >= 40 and child.ids("inflight"), timeout=60)
    child.kill()
    done = child.ids("done")
    started = child.ids("started")
    inflight = child.ids("inflight")[0]
    pid = child.proc.pid
    # Nothing was committed yet: every run below comes back from the journal.
    assert git(git_repo, "rev-parse", "-q", "--verify", "scp-ledger", check=False) == ""

    ledger = Ledger(git_repo)  # the next process to open the ledger recovers it
    try:
        for run_id in done:
            run = ledger.get(run_id)
            assert run is not None, f"run {run_id} whose block exited was lost"
            assert run.status == "ok", run
        long_run = ledger.get(inflight)
        assert long_run is not None and long_run.status == "interrupted"
        assert long_run.summary == f"process {pid} exited before the run finished"
        assert long_run.subtype == "deploy:k8s"
        assert long_run.events[-1]["name"] == "interrupted"
        # A loop run whose block had not exited is interrupted (or ok if it ended
        # between its last line and the kill); every run the child started is there.
        for run_id in set(started) - set(done):
            run = ledger.get(run_id)
            assert run is not None and run.status in ("interrupted", "ok")
        # It is on the branch itself, not only in this process's memory.
        assert ledger.flush(60)
        names = git(git_repo, "ls-tree", "-r", "--name-only", "scp-ledger").split()
        for run_id in [*done, inflight]:
            assert any(n.endswith(f"/{run_id}/run.json") for n in names), run_id
        tags = git(git_repo, "tag", "-l", "scp-run/*").split()
        assert len(tags) == len(set(tags))
        expected = {f"scp-run/{i}" for i in [*started, inflight]}
        # (plus at most one run started just before the kill, before its line was printed)
        assert expected <= set(tags) and len(tags) <= len(expected) + 1
        # The dead journal is gone; recovering again writes nothing.
        assert ledger.recover() == 0
        assert list(dead_journals(ledger.journal_dir)) == []
    finally:
        ledger.close()
    assert user_state(git_repo) == before


def test_recorded_status_is_never_replaced_by_interrupted(git_repo: Path) -> None:
    before = user_state(git_repo)
    child = Child("loop", str(git_repo), env={"OTEL_RUNS_COMMIT_INTERVAL": "0"})
    # Commit interval 0: finished runs are committed while the child runs.
    wait_until(lambda: len(child.ids("done")) >= 20 and child.ids("inflight"), timeout=60)
    ledger = Ledger(git_repo)
    try:
        first = child.ids("done")[0]
        wait_until(lambda: ledger.store.get(first) is not None, timeout=30)
        child.kill()
        done = child.ids("done")
        assert ledger.flush(60)  # recovers: the start markers of `done` runs stay unused
        for run_id in done:
            run = ledger.get(run_id)
            assert run is not None and run.status == "ok"
            assert ledger.store.get(run_id)["status"] == "ok"  # type: ignore[index]
    finally:
        ledger.close()
    assert user_state(git_repo) == before


def test_running_run_of_a_live_process_is_not_marked(git_repo: Path) -> None:
    before = user_state(git_repo)
    child = Child("hold", str(git_repo))
    try:
        wait_until(lambda: child.ids("inflight"), timeout=60)
        run_id = child.ids("inflight")[0]
        ledger = Ledger(git_repo)
        try:
            assert ledger.recover() == 0
            assert ledger.flush(30)
            seen = ledger.get(run_id)  # from the live writer's journal: running, never marked
            assert seen is not None and seen.status == "running"
            assert ledger.store.get(run_id) is None  # and nothing committed
            assert git(git_repo, "tag", "-l", f"scp-run/{run_id}") == ""
        finally:
            ledger.close()
    finally:
        assert child.proc.stdin is not None
        child.proc.stdin.write("go\n")
        child.proc.stdin.flush()
        child.finish()
    # The child finished the run and exited normally: recorded as reported.
    ledger = Ledger(git_repo)
    try:
        run = ledger.get(run_id)
        assert run is not None and run.status == "ok" and run.summary == "held"
    finally:
        ledger.close()
    assert user_state(git_repo) == before


def test_recovery_skips_torn_and_corrupt_journal_lines(git_repo: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    before = user_state(git_repo)
    child = Child("loop", str(git_repo), env={"OTEL_RUNS_COMMIT_INTERVAL": "30"})
    wait_until(lambda: len(child.ids("done")) >= 5, timeout=60)
    child.kill()
    done = child.ids("done")
    segments = sorted((git_repo / ".git" / "otel-runs").glob("journal-*/*.jsonl"))
    assert segments, "the child wrote no journal"
    with open(segments[-1], "ab") as fh:
        fh.write(b'{"e": "end", "run": {"run_id": "../../etc"}}\n')  # bad id
        fh.write(b"not json at all\n")
        fh.write(b'{"e": "end", "span": {"attrs": {"run.id": "20261127T1015')  # torn
    ledger = Ledger(git_repo)
    try:
        for run_id in done:
            run = ledger.get(run_id)
            assert run is not None and run.status == "ok"
        assert any("bad journal line" in r.getMessage() for r in caplog.records)
        assert not any("etc" in t for t in git(git_repo, "tag", "-l").split())
    finally:
        ledger.close()
    assert user_state(git_repo) == before


def test_periodic_check_in_a_running_process_recovers_a_dead_one(git_repo: Path) -> None:
    before = user_state(git_repo)
    ledger = Ledger(git_repo)
    try:
        ledger._next_recover = time.monotonic() + 0.5  # the next periodic check, soon
        ledger._start_thread()
        child = Child("loop", str(git_repo), env={"OTEL_RUNS_COMMIT_INTERVAL": "30"})
        wait_until(lambda: len(child.ids("done")) >= 10 and child.ids("inflight"), timeout=60)
        child.kill()
        inflight = child.ids("inflight")[0]
        # No call from us: the committer thread's periodic check finds the dead journal.
        wait_until(lambda: ledger.store.get(inflight) is not None, timeout=60)
        assert ledger.store.get(inflight)["status"] == "interrupted"  # type: ignore[index]
        for run_id in child.ids("done"):
            assert ledger.get(run_id) is not None
    finally:
        ledger.close()
    assert user_state(git_repo) == before


def test_journal_lines_are_json_records_under_the_git_dir(git_repo: Path) -> None:
    before = user_state(git_repo)
    child = Child("loop", str(git_repo), env={"OTEL_RUNS_COMMIT_INTERVAL": "30"})
    wait_until(lambda: len(child.ids("done")) >= 3, timeout=60)
    child.kill()
    segments = sorted((git_repo / ".git" / "otel-runs").glob("journal-scp-ledger-*/*.jsonl"))
    kinds = [json.loads(line)["e"] for seg in segments
             for line in seg.read_text().splitlines() if line.endswith("}")]
    assert "start" in kinds and "end" in kinds
    assert not any(p.name.startswith("otel-runs") for p in git_repo.iterdir())
    Ledger(git_repo).close()
    assert user_state(git_repo) == before
