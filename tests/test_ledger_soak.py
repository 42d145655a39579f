"""Soak: tens of thousands of runs through ``tracked_run`` in real child processes, then
checked with git itself: every run on the branch exactly once, one tag each pointing at a
commit of the branch whose tree holds the run, ``git fsck --strict`` clean.

* 30,000 runs in one process (past the size where a long-lived writer once dropped runs);
* 4 processes x 6,000 runs at once on one repository;
* one dead journal of 60,000 finished runs (its process SIGKILLed before any commit),
  recovered by the next process that opens the ledger.

The children are ``ledger_child.py soak`` (each run id is written to a file); this process
never configures OpenTelemetry. Every wait is bounded.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from conftest import git, user_state

from otel_runs.ledger import Ledger

CHILD = str(Path(__file__).with_name("ledger_child.py"))
BRANCH = "scp-ledger"
TAG_PREFIX = "refs/tags/scp-run/"
CHILD_TIMEOUT = 240.0


def start_soak(repo: Path, runs: int, ids_file: Path, finish: str = "flush",
               env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``ledger_child.py soak``: ``runs`` runs through configure() + tracked_run."""
    return subprocess.Popen(
        [sys.executable, CHILD, "soak", str(repo), str(runs), str(ids_file), finish],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})})


def finish_soak(proc: subprocess.Popen[str], ids_file: Path) -> list[str]:
    """Wait (bounded) for a ``flush`` child; it must exit 0 after ``flush()`` returned True."""
    try:
        out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=30)
        raise
    assert proc.returncode == 0, err[-4000:]
    assert out.split() == ["flushed", "True"], (out, err[-4000:])
    return ids_file.read_text().split()


def wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    """The child's first stdout line starting with ``prefix`` (bounded wait)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read() if proc.stderr else ""
                raise AssertionError(f"child exited ({proc.wait(30)}) before {prefix!r}: "
                                     f"{err[-4000:]}")
            if line.startswith(prefix):
                return line
    raise AssertionError(f"no {prefix!r} line from the child within {timeout}s")


def run_path(run_id: str) -> str:
    """The run's file on the branch, as docs/ledger-storage.md lays it out."""
    digest = hashlib.sha1(run_id.encode("ascii")).hexdigest()
    return "/".join(["ledger", "runs", run_id[0:4], run_id[4:6], run_id[6:8], *digest[:4],
                     run_id, "run.json"])


def batch_check(repo: Path, names: list[str]) -> list[str]:
    """``git cat-file --batch-check=%(objecttype)`` of every name (``blob``, ``tree``, ...,
    or ``<name> missing``), pipelined: the names are split over one cat-file per core
    (each lookup of ``<commit>:<path>`` walks ~10 trees, ~0.25 ms), all fed at once."""
    workers = max(1, min(4, os.cpu_count() or 1, len(names) // 1000 or 1))
    chunks = [names[i::workers] for i in range(workers)]
    procs = [subprocess.Popen(["git", "cat-file", "--batch-check=%(objecttype)"], cwd=repo,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in chunks]
    outs: list[tuple[str, str]] = [("", "")] * workers

    def feed(i: int) -> None:
        outs[i] = procs[i].communicate("".join(f"{n}\n" for n in chunks[i]),
                                       timeout=CHILD_TIMEOUT)

    threads = [threading.Thread(target=feed, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CHILD_TIMEOUT + 10)
    answers: list[str] = [""] * len(names)
    for i, (proc, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        if proc.poll() is None:
            proc.kill()
        lines = out.splitlines()
        assert proc.wait(30) == 0 and len(lines) == len(chunks[i]), err[-2000:]
        answers[i::workers] = lines
    return answers


def branch_problems(repo: Path, produced: list[str]) -> dict[str, object]:
    """Everything wrong with the ledger branch and tags for the ``produced`` run ids,
    read with git alone. Empty lists / zero counts mean right."""
    expected = set(produced)
    tip = git(repo, "rev-parse", "--verify", f"{BRANCH}^{{commit}}").strip()
    paths = git(repo, "ls-tree", "-r", "--name-only", tip, "--", "ledger/runs").split()
    run_files = [p for p in paths if p.endswith("/run.json")]
    on_branch = Counter(p.split("/")[-2] for p in run_files)
    misplaced = [p for p in run_files if p != run_path(p.split("/")[-2])]
    missing = sorted(expected - on_branch.keys())

    # Each run is listed in the message of exactly one commit (the one that recorded it).
    listed = Counter(line.split("\t", 1)[0]
                     for line in git(repo, "log", "--format=%B", tip).splitlines()
                     if "\t" in line)

    commits = set(git(repo, "rev-list", tip).split())
    tags: dict[str, str] = {}
    tag_kinds: Counter[str] = Counter()
    for line in git(repo, "for-each-ref", "--format=%(refname) %(objectname) %(objecttype)",
                    TAG_PREFIX).splitlines():
        name, oid, kind = line.split()
        tags[name.removeprefix(TAG_PREFIX)] = oid
        tag_kinds[kind] += 1
    untagged = sorted(expected - tags.keys())
    off_branch = sorted(r for r in expected & tags.keys() if tags[r] not in commits)

    # The tagged commit's tree holds the run: ``<tag's commit>:<path>`` for every run.
    probe = sorted(expected & tags.keys())
    answers = batch_check(repo, [f"{tags[r]}:{run_path(r)}" for r in probe])
    tag_without_run = [r for r, a in zip(probe, answers, strict=True) if a != "blob"]

    fsck = subprocess.run(["git", "fsck", "--strict", "--no-dangling"], cwd=repo,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    return {
        "produced": len(produced),
        "distinct produced": len(expected),
        "on branch": len(on_branch),
        "missing from the branch tip": missing,
        "on the branch more than once": sorted(r for r, n in on_branch.items() if n > 1),
        "on the branch but never produced": sorted(on_branch.keys() - expected),
        "at a path other than the documented layout": misplaced,
        "not listed in exactly one commit message": sorted(
            r for r in expected if listed.get(r, 0) != 1),
        "without a tag": untagged,
        "tags that are not commits": {k: n for k, n in tag_kinds.items() if k != "commit"},
        "tags not pointing at a commit of the branch": off_branch,
        "tags whose commit's tree lacks the run": tag_without_run,
        "extra tags": len(tags.keys() - expected),
        "fsck": "clean" if fsck.returncode == 0 else (fsck.stdout + fsck.stderr)[-2000:],
    }


def assert_ledger_holds(repo: Path, produced: list[str]) -> None:
    problems = branch_problems(repo, produced)
    bad = {k: v for k, v in problems.items()
           if k not in ("produced", "distinct produced", "on branch") and v not in ([], {}, 0,
                                                                                    "clean")}
    summary = {k: (len(v) if isinstance(v, list) else v) for k, v in problems.items()}
    examples = {k: v[:5] for k, v in bad.items() if isinstance(v, list)}
    assert problems["distinct produced"] == len(produced), summary
    assert not bad, f"ledger check failed: {summary}; examples: {examples}"


def no_journal_left(repo: Path) -> list[Path]:
    return sorted((repo / ".git" / "otel-runs").glob("journal-*/*.jsonl"))


def test_30000_runs_in_one_process(git_repo: Path, tmp_path: Path) -> None:
    before = user_state(git_repo)
    ids_file = tmp_path / "ids.txt"
    produced = finish_soak(start_soak(git_repo, 30_000, ids_file), ids_file)
    assert len(produced) == 30_000
    assert_ledger_holds(git_repo, produced)
    assert no_journal_left(git_repo) == []
    assert user_state(git_repo) == before


def test_four_processes_by_6000_runs_at_once(git_repo: Path, tmp_path: Path) -> None:
    before = user_state(git_repo)
    files = [tmp_path / f"ids-{n}.txt" for n in range(4)]
    procs = [start_soak(git_repo, 6_000, f) for f in files]
    produced: list[str] = []
    for proc, ids_file in zip(procs, files, strict=True):
        ids = finish_soak(proc, ids_file)
        assert len(ids) == 6_000
        produced += ids
    assert_ledger_holds(git_repo, produced)
    assert no_journal_left(git_repo) == []
    assert user_state(git_repo) == before


def test_one_dead_journal_of_60000_runs_is_recovered(git_repo: Path, tmp_path: Path) -> None:
    before = user_state(git_repo)
    ids_file = tmp_path / "ids.txt"
    # The child holds the ledger's write lock, so its committer (a thread of its own:
    # no helper process that would outlive it) never commits; it is SIGKILLed once
    # every block has exited: all 60,000 runs exist only in its journal.
    proc = start_soak(git_repo, 60_000, ids_file, "blocked",
                      env={"OTEL_RUNS_COMMIT_PROCESS": "never"})
    try:
        line = wait_for_line(proc, "journaled", CHILD_TIMEOUT)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert line.split() == ["journaled", "60000"]
    produced = ids_file.read_text().split()
    assert len(produced) == 60_000
    assert git(git_repo, "rev-parse", "-q", "--verify", f"refs/heads/{BRANCH}",
               check=False) == "", "the child committed runs before it was killed"
    assert no_journal_left(git_repo), "the child left no journal"

    ledger = Ledger(git_repo)  # the next process to open the ledger recovers the journal
    try:
        assert ledger.flush(CHILD_TIMEOUT)
        assert ledger.recover() == 0  # nothing left to recover
    finally:
        ledger.close()
    assert_ledger_holds(git_repo, produced)
    assert no_journal_left(git_repo) == []
    assert user_state(git_repo) == before
