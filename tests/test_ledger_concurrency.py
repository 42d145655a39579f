"""Many writers at once: processes x threads through configure()/tracked_run, and
workers forked after configure() (gunicorn --preload)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import git, user_state

from otel_runs.ledger import Ledger

CHILD = str(Path(__file__).with_name("ledger_child.py"))


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    import os

    return subprocess.Popen([sys.executable, CHILD, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def finish(proc: subprocess.Popen[str]) -> str:
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err
    return out


def check_ledger(repo: Path, expected: int) -> list[str]:
    """The branch holds ``expected`` distinct runs, one tag each; fsck is clean."""
    ledger = Ledger(repo)
    try:
        ids = [r.run_id for r in ledger.iter_runs()]
    finally:
        ledger.close()
    assert len(ids) == len(set(ids)) == expected
    tags = git(repo, "for-each-ref", "--format=%(refname)", "refs/tags/scp-run/").split()
    assert sorted(t.removeprefix("refs/tags/scp-run/") for t in tags) == sorted(ids)
    paths = [p for p in git(repo, "ls-tree", "-r", "--name-only", "scp-ledger").split()
             if p.endswith("/run.json")]
    assert len(paths) == expected
    fsck = subprocess.run(["git", "fsck", "--strict"], cwd=repo, capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr + fsck.stdout
    return ids


@pytest.mark.parametrize("commit_process", ["never", "always"])
def test_four_processes_by_four_threads(git_repo: Path, commit_process: str) -> None:
    before = user_state(git_repo)
    # A short commit interval so the processes really commit concurrently, in a
    # thread of each process or in each one's commit helper process.
    procs = [start("threads", str(git_repo), "4", "40",
                   env={"OTEL_RUNS_COMMIT_INTERVAL": "0.05",
                        "OTEL_RUNS_COMMIT_PROCESS": commit_process}) for _ in range(4)]
    outs = [finish(p) for p in procs]
    assert all(o.startswith("finished") for o in outs)
    ids = check_ledger(git_repo, 4 * 4 * 40)
    ledger = Ledger(git_repo)
    try:
        summaries = Counter(r.summary.split()[0] for r in ledger.iter_runs())
    finally:
        ledger.close()
    assert sorted(summaries.values()) == [160] * 4  # 160 runs from each process
    assert len(ids) == 640
    assert not list((git_repo / ".git" / "otel-runs").glob("journal-*/*.jsonl"))
    assert user_state(git_repo) == before


@pytest.mark.parametrize("commit_process", ["never", "always"])
def test_forked_workers_keep_recording(git_repo: Path, commit_process: str) -> None:
    before = user_state(git_repo)
    out = finish(start("fork", str(git_repo), "20", "exit",
                       env={"OTEL_RUNS_COMMIT_PROCESS": commit_process}))
    done = [line.split()[1] for line in out.splitlines() if line.startswith("done")]
    assert len(done) == 41  # 1 before the fork, 20 in the child, 20 in the parent
    ids = check_ledger(git_repo, 41)
    assert sorted(ids) == sorted(done)
    assert user_state(git_repo) == before


def test_a_forked_worker_killed_after_recording_loses_nothing(git_repo: Path) -> None:
    before = user_state(git_repo)
    # The child is SIGKILLed right after its runs; the parent's flush recovers its journal.
    out = finish(start("fork", str(git_repo), "15", "kill",
                       env={"OTEL_RUNS_COMMIT_INTERVAL": "30"}))
    done = [line.split()[1] for line in out.splitlines() if line.startswith("done")]
    assert len(done) == 31
    ids = check_ledger(git_repo, 31)
    assert sorted(ids) == sorted(done)
    assert user_state(git_repo) == before
