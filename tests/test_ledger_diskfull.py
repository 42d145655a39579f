"""A full disk and a read-only ``.git``, for real: a small tmpfs holding the repository,
and read-only bind mounts. Nothing raises by default, no torn line is left in a
segment, runs that could not be journaled are kept in memory and journaled again,
commits resume once space is back, and the log and ``flush()`` say how it is.
``OTEL_RUNS_ON_JOURNAL_ERROR=raise`` makes the tracked block raise instead.

These tests mount file systems, so they need root (they are skipped otherwise).
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import git, wait_until

import otel_runs
from otel_runs.ledger import JournalUnavailable, Ledger, ledger_for
from otel_runs.ledger._journal_records import record_run_id


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)  # lazy: even if busy


@contextmanager
def small_disk(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (skips the test if it cannot be mounted)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    proc = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        _unmount(path)


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` made read-only by a read-only bind mount over it (chmod does not stop root)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    proc = _mount("--bind", str(path), str(path))
    if proc.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {proc.stderr.strip()}")
    try:
        proc = _mount("-o", "remount,bind,ro", str(path))
        if proc.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {proc.stderr.strip()}")
        yield path
    finally:
        _unmount(path)


def make_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("hello\n")
    git(path, "add", "README.md")
    git(path, "commit", "-q", "-m", "initial")
    return path


def fill(disk: Path) -> Path:
    """Write a filler file until the file system is full."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0"):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def journal_ids(ledger: Ledger) -> set[str]:
    """The ids of the runs whose end record is in the journal; asserts that every line of
    every segment is complete JSON (no torn line, in the middle or at the end). Read under
    the journal writer's lock: a write this process's background threads (the retry of runs
    only in memory) may be making, and taking back, is not seen half done."""
    ids = set()
    with ledger._journal._lock:
        segments = {path: path.read_bytes() for path in sorted(ledger.journal_dir.glob("*.jsonl"))}
    for segment, data in segments.items():
        assert not data or data.endswith(b"\n"), f"{segment.name}: torn last line"
        for number, line in enumerate(data.split(b"\n")[:-1], 1):
            try:
                rec = json.loads(line)
            except ValueError:
                raise AssertionError(f"{segment.name}:{number}: torn line {line[:80]!r}") from None
            if rec["e"] == "end":
                ids.add(record_run_id(rec))
    return ids


def on_branch(repo: Path) -> set[str]:
    names = git(repo, "ls-tree", "-r", "--name-only", "scp-ledger", check=False).split()
    return {n.split("/")[-2] for n in names if n.endswith("/run.json")}


def counts(messages: list[str], pattern: str) -> list[int]:
    return [int(m.group(1)) for msg in messages if (m := re.search(pattern, msg))]


def messages(caplog: pytest.LogCaptureFixture, start: int = 0) -> list[str]:
    return [r.getMessage() for r in caplog.records[start:]]


def test_disk_full_keeps_runs_and_commits_resume_when_space_is_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_RUNS_COMMIT_INTERVAL", "0.2")
    monkeypatch.setenv("OTEL_RUNS_COMMIT_PROCESS", "never")
    with small_disk(tmp_path / "disk") as disk:
        repo = make_repo(disk / "project")
        otel_runs.configure(repo)
        ledger = ledger_for(repo)
        with otel_runs.tracked_run(repo, "build", "build:docker") as first:
            pass
        assert ledger.flush(60)
        filler = fill(disk)
        ids = []
        for i in range(40):  # none of them raises
            with otel_runs.tracked_run(repo, "deploy", "deploy:k8s", summary=f"deploy {i}",
                                       notes="x" * 300) as run:
                pass
            ids.append(run.run_id)
        # The truth, with the journal as the judge: runs not in it are the ones in memory only.
        while True:
            memory, journaled, again = ledger.only_in_memory, journal_ids(ledger), \
                ledger.only_in_memory
            if memory == again:
                break
        assert memory == len(set(ids) - journaled) and memory > 0
        mark = len(caplog.records)
        first_failure = next(m for m in messages(caplog) if "could not journal run" in m)
        assert "; 1 run(s) are now only in this process's memory" in first_failure
        left = ledger.leftovers()
        assert left is not None and f"{memory} run(s) could not be journaled" in left
        assert not ledger.flush(1)
        assert on_branch(repo) == {first.run_id}
        filler.unlink()  # space is back: nothing calls flush(), the committer resumes
        wait_until(lambda: set(ids) <= on_branch(repo), timeout=90, interval=0.2)
        wait_until(lambda: ledger.only_in_memory == 0, timeout=30)
        after = messages(caplog, mark)
        recovered = sum(counts(after, r"journaled (\d+) run\(s\) that were only in memory")) + \
            sum(counts(after, r"committed (\d+) run\(s\) that were only in memory"))
        assert recovered == memory
        assert ledger.flush(60)
        journal_ids(ledger)  # (still no torn line anywhere)
        other = Ledger(repo)
        try:
            assert all(other.get(i) is not None for i in ids)
        finally:
            other.close()
        otel_runs.shutdown()


def test_strict_mode_raises_when_the_disk_is_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_ON_JOURNAL_ERROR", "raise")
    monkeypatch.setenv("OTEL_RUNS_COMMIT_PROCESS", "never")
    with small_disk(tmp_path / "disk") as disk:
        repo = make_repo(disk / "project")
        otel_runs.configure(repo)
        ledger = ledger_for(repo)
        with otel_runs.tracked_run(repo, "build", "build:docker"):
            pass
        assert ledger.flush(60)
        filler = fill(disk)
        ran: list[str] = []
        refused: list[str] = []
        for i in range(300):  # the last page's free bytes first take a few lines
            body_ran = False
            try:
                with otel_runs.tracked_run(repo, "deploy", "deploy:k8s", summary=f"d{i}",
                                           notes="x" * 300) as run:
                    body_ran = True
                    ran.append(run.run_id)
            except JournalUnavailable as exc:
                assert "OTEL_RUNS_ON_JOURNAL_ERROR=raise" in str(exc)
                if not body_ran:  # refused before the block ran: its start was not journaled
                    refused.append(exc.run_id)
                    break
        assert refused, "the journal never failed"
        filler.unlink()
        assert ledger.flush(60)
        branch = on_branch(repo)
        assert set(ran) <= branch and set(refused) <= branch
        other = Ledger(repo)
        try:
            record = other.get(refused[0])
            assert record is not None and record.status == "failed"
            assert "could not journal the start" in record.summary
        finally:
            other.close()
        otel_runs.shutdown()


EXIT_CHILD = """
import sys
import otel_runs
otel_runs.configure(sys.argv[1])
for i in range(3):
    with otel_runs.tracked_run(sys.argv[1], "build", "build:docker", summary=f"child {i}"):
        pass
"""


def test_read_only_git_dir_keeps_runs_in_memory_and_says_so(
        git_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    otel_runs.configure(git_repo)
    ledger = ledger_for(git_repo)
    with otel_runs.tracked_run(git_repo, "build", "build:docker"):
        pass
    assert ledger.flush(60)
    ledger.close()  # (its journal files are gone: the next run opens new ones)
    ids = []
    with read_only(git_repo / ".git"):
        for i in range(5):  # none of them raises
            with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s", summary=f"ro {i}") as run:
                pass
            ids.append(run.run_id)
        assert ledger.only_in_memory == 5
        assert not ledger.flush(1)
        ledger.close(timeout=1)
        closing = [m for m in messages(caplog) if "closing the ledger" in m]
        assert len(closing) == 1
        assert "5 run(s) could not be journaled and are only in this process's memory" \
            in closing[0] and "stay in the journal" not in closing[0]
        # Another process exits in that state: its exit log says the runs are lost.
        child = subprocess.run([sys.executable, "-c", EXIT_CHILD, str(git_repo)],
                               capture_output=True, text=True, timeout=120)
        assert child.returncode == 0, child.stderr
        assert "3 run(s) could not be journaled and are only in this process's memory: " \
               "they are lost now that it exits" in child.stderr, child.stderr[-3000:]
    assert ledger.flush(60)  # writable again: this process's runs are committed
    assert set(ids) <= on_branch(git_repo)
    assert ledger.only_in_memory == 0
    journal_ids(ledger)


def test_strict_mode_with_a_read_only_journal(git_repo: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_ON_JOURNAL_ERROR", "raise")
    otel_runs.configure(git_repo)
    ledger = ledger_for(git_repo)
    with otel_runs.tracked_run(git_repo, "build", "build:docker"):
        pass
    assert ledger.flush(60)
    ledger.close()  # (its journal files are gone: the next run opens new ones)
    journal = ledger.journal_dir
    calls: list[Any] = []

    @otel_runs.run_tracked("build", "build:docker")
    def build() -> dict[str, Any]:
        calls.append("ran")
        return {"ok": True}

    with read_only(journal):
        body_ran = False
        with pytest.raises(JournalUnavailable) as refused:
            with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s"):
                body_ran = True
        assert not body_ran and refused.value.journal_dir == journal
        with pytest.raises(JournalUnavailable):
            build()
        assert calls == []
        # The store can still write: the refused runs are committed (as failed) from memory.
        assert ledger.flush(60)
        stored = ledger.get(refused.value.run_id)
        assert stored is not None and stored.status == "failed"
        assert "could not journal the start" in stored.summary
    assert ledger.only_in_memory == 0


def test_a_failed_write_leaves_no_torn_line_and_strict_mode_raises_on_exit(
        git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The end record cannot be written in full (the file size limit stops it midway):
    the segment is truncated back, and the block, whose start was journaled, raises on exit."""
    monkeypatch.setenv("OTEL_RUNS_ON_JOURNAL_ERROR", "raise")
    monkeypatch.setenv("OTEL_RUNS_COMMIT_INTERVAL", "600")
    otel_runs.configure(git_repo)
    ledger = ledger_for(git_repo)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    body_ran = False
    try:
        with pytest.raises(JournalUnavailable) as at_exit:
            with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s", summary="late") as run:
                body_ran = True
                run.add_event("log", text="y" * 3000)  # the end record is big
                segment = max(ledger.journal_dir.glob("*.jsonl"))
                size = segment.stat().st_size
                resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))  # 100 bytes more
        assert body_ran and at_exit.value.run_id == run.run_id
        assert segment.stat().st_size == size  # the 100 bytes written were taken back
        assert run.run_id not in journal_ids(ledger) and ledger.only_in_memory == 1
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    with otel_runs.tracked_run(git_repo, "build", "build:docker") as after:
        pass
    wait_until(lambda: ledger.only_in_memory == 0, timeout=30)  # journaled again
    assert {run.run_id, after.run_id} <= journal_ids(ledger)
    assert ledger.flush(60)
    stored = ledger.get(run.run_id)
    assert stored is not None and stored.status == "ok" and stored.summary == "late"
    assert {run.run_id, after.run_id} <= on_branch(git_repo)
