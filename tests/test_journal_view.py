"""Every reader sees the journals of every process of the host (``_journal_view``): running
runs, finished runs not committed yet, runs of a writer that died (``interrupted``) before
recovery commits them; incremental refreshes, the memory bound, torn lines, copied start
markers, and no gap when a segment is deleted for its runs are on the branch."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import git, wait_until

from otel_runs import Run, new_run_id
from otel_runs.ledger import Ledger, _journal, _journal_view, _journal_view_read
from otel_runs.ledger._journal import JournalWriter
from otel_runs.ledger._journal_records import encode_record
from otel_runs.ledger._journal_view import journal_view

REPO = str(Path(__file__).resolve().parents[1])
NO_COMMITS = {"OTEL_RUNS_COMMIT_INTERVAL": "3600", "OTEL_RUNS_COMMIT_PROCESS": "never"}

#: A writer driven line by line on stdin: ``run <summary>`` (a finished run with a child
#: span), ``hold`` (a run left open in a thread), ``release <id>``, ``bulk <n>``
#: (``Ledger.record`` n runs), ``exit``. It answers one line per command.
CHILD = r'''
import os, sys, threading
import otel_runs
from opentelemetry import trace
from otel_runs import Run, new_run_id
from otel_runs.ledger import ledger_for
root = sys.argv[1]
otel_runs.configure(root)
held = {}
def say(*parts):
    print(*parts, flush=True)
def hold():
    box, started, release = {}, threading.Event(), threading.Event()
    def body():
        with otel_runs.tracked_run(root, "build", "build:docker", summary="long build",
                                   pid=os.getpid()) as run:
            box["id"] = run.run_id
            started.set()
            release.wait()
    thread = threading.Thread(target=body)
    thread.start()
    started.wait()
    held[box["id"]] = (release, thread)
    return box["id"]
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "run":
        with otel_runs.tracked_run(root, "deploy", "deploy:k8s", summary=" ".join(args)) as run:
            with trace.get_tracer("t").start_as_current_span("kubectl apply"):
                pass
        say("done", run.run_id)
    elif cmd == "hold":
        say("held", hold())
    elif cmd == "release":
        release, thread = held.pop(args[0])
        release.set()
        thread.join()
        say("released", args[0])
    elif cmd == "bulk":
        ledger = ledger_for(root)
        for i in range(int(args[0])):
            ledger.record(Run(new_run_id(), "test", "test:unit", status="ok", summary=f"bulk {i}"))
        say("bulked", args[0])
    elif cmd == "exit":
        break
'''


class Child:
    """A real writer process (:data:`CHILD`) answering one line per command."""

    def __init__(self, root: Path, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO, **NO_COMMITS, **env})
        self.pid = self.proc.pid

    def send(self, command: str, timeout: float = 120) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no answer to {command!r} within {timeout}s"
        return self.proc.stdout.readline().split()[-1]

    def exit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("exit\n")
        self.proc.stdin.close()
        assert self.proc.wait(timeout=120) == 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture
def children() -> list[Child]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


def on_branch(repo: Path) -> set[str]:
    names = git(repo, "ls-tree", "-r", "--name-only", "scp-ledger", check=False).split()
    return {n.split("/")[-2] for n in names if n.endswith("/run.json")}


def ids(runs: list[Run]) -> list[str]:
    return [r.run_id for r in runs]


def test_another_process_s_running_and_finished_runs_are_read_before_any_commit(
        git_repo: Path, children: list[Child]) -> None:
    child = Child(git_repo)
    children.append(child)
    first, second = child.send("run rolled out web"), child.send("run migrated api")
    held = child.send("hold")
    ledger = Ledger(git_repo)
    try:
        assert on_branch(git_repo) == set()  # nothing is committed: all from the journal
        got = ledger.get(first)
        assert got is not None and got.status == "ok" and got.summary == "rolled out web"
        assert [s["name"] for s in ledger.spans(first)] == ["kubectl apply"]
        running = ledger.get(held)
        assert running is not None and running.status == "running"
        assert running.type == "build" and running.metadata == {"pid": child.pid}
        assert running.ended_at is None and ledger.spans(held) == []
        assert ids(ledger.recent(10)) == [held, second, first]
        assert ids(ledger.recent(10, status="running")) == [held]
        assert ids(ledger.recent(10, status="ok")) == [second, first]
        assert ids(ledger.recent(1, type="deploy")) == [second]
        assert ids(ledger.search("migrated")) == [second]
        assert ids(ledger.search("long build")) == [held]
        assert ids(ledger.iter_runs()) == [held, second, first]
        assert ids(ledger.iter_runs(type="build")) == [held]
        child.send(f"release {held}")
        done = ledger.get(held)  # at once: its end line is in the journal
        assert done is not None and done.status == "ok" and done.duration_ms is not None
        assert ledger.recent(10, status="running") == []
        child.exit()  # (its exit flush commits them)
        assert on_branch(git_repo) == {first, second, held}
        assert ids(ledger.recent(10)) == [held, second, first]
        assert journal_view(ledger.journal_dir).records == 0
    finally:
        ledger.close()


def test_a_killed_writer_s_run_is_interrupted_before_recovery_and_a_live_one_never_is(
        git_repo: Path, children: list[Child]) -> None:
    victim, survivor = Child(git_repo), Child(git_repo)
    children.extend([victim, survivor])
    lost, alive = victim.send("hold"), survivor.send("hold")
    ledger = Ledger(git_repo)  # (recovers at open: nothing is dead yet)
    try:
        assert ids(ledger.recent(10, status="running")) == sorted([lost, alive], reverse=True)
        victim.kill()
        wait_until(lambda: ledger.get(lost).status == "interrupted", timeout=10)
        run = ledger.get(lost)
        reason = f"process {victim.pid} exited before the run finished"
        assert run.summary == reason and run.ended_at is None and run.duration_ms is None
        assert run.events[-1]["name"] == "interrupted"
        assert run.events[-1]["attributes"] == {"reason": reason}
        assert on_branch(git_repo) == set()  # before any recovery commit
        assert ids(ledger.recent(10, status="interrupted")) == [lost]
        deadline = time.monotonic() + 2.5  # longer than the liveness cache
        while time.monotonic() < deadline:
            assert ledger.get(alive).status == "running"
            assert ids(ledger.recent(10, status="running")) == [alive]
            time.sleep(0.05)
        assert ledger.recover() == 1  # recovery commits what the view showed
        assert on_branch(git_repo) == {lost}
        committed = ledger.get(lost)
        assert committed.status == "interrupted" and committed.summary == reason
        assert ids(ledger.recent(10)) == sorted([lost, alive], reverse=True)
        survivor.send(f"release {alive}")
        assert ledger.get(alive).status == "ok"
    finally:
        ledger.close()


def test_a_refresh_reads_only_what_was_appended(git_repo: Path, children: list[Child]) -> None:
    child = Child(git_repo)
    children.append(child)
    assert child.send("bulk 20000") == "20000"
    ledger = Ledger(git_repo)
    try:
        view = journal_view(ledger.journal_dir)
        started = time.perf_counter()
        view.refresh()
        first = time.perf_counter() - started
        assert view.records == 20_000 and view.lines_read == 20_000
        size = sum(p.stat().st_size for p in ledger.journal_dir.glob("*.jsonl"))
        assert view.bytes_read == size
        before = (view.bytes_read, view.lines_read)
        started = time.perf_counter()
        for _ in range(100):
            view.refresh()
        idle = (time.perf_counter() - started) / 100
        assert (view.bytes_read, view.lines_read) == before  # nothing new: 0 bytes read
        one = child.send("run one more")  # a start line and an end line
        assert ledger.get(one).summary == "one more"
        grown = sum(p.stat().st_size for p in ledger.journal_dir.glob("*.jsonl")) - size
        assert view.bytes_read - before[0] == grown and view.lines_read - before[1] == 2
        assert ids(ledger.recent(3)) [0] == one and len(ledger.recent(50)) == 50
        print(f"\n20,000 journaled runs ({size} bytes): first refresh {first * 1e3:.0f} ms, "
              f"a refresh with nothing new {idle * 1e6:.0f} us, {view.files} file(s)")
    finally:
        ledger.close()


def _journal_runs(writer: JournalWriter, n: int, **fields: str) -> list[str]:
    out = []
    for i in range(n):
        run = Run(new_run_id(), "test", "test:unit", status="ok", summary=f"run {i}",
                  metadata={"i": i, **fields})
        writer.append_end_at(run.run_id, encode_record({"e": "end", "run": run.to_dict(),
                                                        "spans": []})[0])
        out.append(run.run_id)
    return out


_MEASURED_REFRESH = """
import sys, tracemalloc
from otel_runs.ledger import _journal_view
_journal_view.MAX_RECORDS = 2_000
view = _journal_view.journal_view(sys.argv[1])
tracemalloc.start()
view.refresh()
held, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
print(view.records, view.evicted, held, peak, _journal_view.READ_CHUNK)
"""


def test_the_view_holds_at_most_max_records_and_a_bounded_cache(
        git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_journal_view, "MAX_RECORDS", 2_000)
    ledger = Ledger(git_repo)
    writer = JournalWriter(ledger.journal_dir)
    try:
        written = _journal_runs(writer, 6_000, pad="x" * 200)
        # The memory of a first refresh, measured in a fresh interpreter: tracemalloc counts
        # every thread's allocations, and threads other tests left here would be counted.
        proc = subprocess.run([sys.executable, "-c", _MEASURED_REFRESH, str(ledger.journal_dir)],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": REPO})
        assert proc.returncode == 0, proc.stderr[-3000:]
        records, evicted, held, peak, chunk = map(int, proc.stdout.split())
        assert 1_800 <= records <= 2_000 and evicted == 6_000 - records
        assert 0 < held < records * 300, f"{held / records:.0f} bytes a record"
        assert peak < chunk * 3 + held
        view = journal_view(ledger.journal_dir)
        view.refresh()
        assert (view.records, view.evicted) == (records, evicted)  # as the child's view
        newest = ids(ledger.recent(1_000))
        assert newest == written[::-1][:1_000]  # the newest are kept, the oldest forgotten
        assert ledger.get(written[0]) is None and ledger.get(written[-1]) is not None
        assert len(view.cache) == 1_000 and view.cache.bytes <= _journal_view_read.CACHE_BYTES
        monkeypatch.setattr(_journal_view_read, "CACHE_RUNS", 300)  # full by count
        more = _journal_runs(writer, 500)
        assert ids(ledger.recent(500)) == more[::-1]
        assert len(view.cache) == 300 and view.records <= 2_000
        monkeypatch.setattr(_journal_view_read, "CACHE_BYTES", 64 * 1024)  # full by bytes
        more = _journal_runs(writer, 500, pad="y" * 500)
        assert ids(ledger.recent(500)) == more[::-1]
        runs, line_bytes = len(view.cache), view.cache.bytes
        assert runs < 300 and 60 * 1024 < line_bytes <= 64 * 1024
        print(f"\n{held / view.records:.0f} bytes a record held; peak {peak} bytes; "
              f"cache {runs} runs / {line_bytes} line bytes")
    finally:
        writer.close()
        ledger.close()


def test_a_torn_last_line_waits_for_its_newline(git_repo: Path) -> None:
    ledger = Ledger(git_repo)
    writer = JournalWriter(ledger.journal_dir)
    try:
        (whole,) = _journal_runs(writer, 1)
        assert ledger.get(whole) is not None
        run = Run(new_run_id(), "deploy", "deploy:k8s", status="ok", summary="torn")
        line = encode_record({"e": "end", "run": run.to_dict(), "spans": []})[0]
        fd = os.open(writer.segment_file(1), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line[:40])
            view = journal_view(ledger.journal_dir)
            assert ledger.get(run.run_id) is None and ledger.recent(5)[0].run_id == whole
            read = view.bytes_read
            view.refresh()
            assert view.bytes_read == read  # the torn tail is not read again
            os.write(fd, line[40:])
        finally:
            os.close(fd)
        got = ledger.get(run.run_id)
        assert got is not None and got.summary == "torn" and view.bad_lines == 0
    finally:
        writer.close()
        ledger.close()


def test_start_markers_copied_to_a_new_segment_are_one_run(
        git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_journal, "SEGMENT_BYTES", 2_000)
    ledger = Ledger(git_repo)
    writer = JournalWriter(ledger.journal_dir)
    try:
        open_run = Run(new_run_id(), "build", "build:docker", summary="still building")
        writer.append_start(open_run.run_id, encode_record({"e": "start",
                                                            "run": open_run.to_dict()})[0])
        ended = _journal_runs(writer, 10)
        writer.committed([1] * 9)  # the segment is full: a new one, with the start copied
        segments = sorted(p.name for p in ledger.journal_dir.glob("*.jsonl"))
        assert len(segments) == 2
        assert all(open_run.run_id in p.read_text() for p in ledger.journal_dir.glob("*.jsonl"))
        assert ids(ledger.recent(50, status="running")) == [open_run.run_id]
        everything = ids(ledger.recent(50))
        assert everything == sorted([open_run.run_id, *ended], reverse=True)
        assert ids(ledger.iter_runs()) == everything
        writer.committed([1])  # the old segment is deleted (its runs "are on the branch")
        assert len(list(ledger.journal_dir.glob("*.jsonl"))) == 1
        assert ids(ledger.recent(50)) == [open_run.run_id]
        assert ledger.get(open_run.run_id).status == "running"
        done = Run(open_run.run_id, "build", "build:docker", status="failed", summary="broke")
        writer.append_end_at(done.run_id, encode_record({"e": "end", "run": done.to_dict(),
                                                         "spans": []})[0])
        assert [(r.run_id, r.status) for r in ledger.recent(50)] == [(done.run_id, "failed")]
    finally:
        writer.close()
        ledger.close()


HAMMER = r'''
import sys, time
import otel_runs
from otel_runs.ledger import _journal, ledger_for
_journal.SEGMENT_BYTES = 16 * 1024  # many segments, each deleted once its runs are committed
root, n = sys.argv[1], int(sys.argv[2])
otel_runs.configure(root)
for i in range(n):
    with otel_runs.tracked_run(root, "test", "test:unit", summary=f"hammer {i}") as run:
        pass
    print("done", run.run_id, flush=True)
    time.sleep(0.001)  # (so that many commits, and segment deletions, happen meanwhile)
print("flushed", ledger_for(root).flush(120), flush=True)
'''


def test_no_gap_while_segments_are_deleted_after_their_commits(git_repo: Path) -> None:
    """Every run whose block exited is found by every read, whether it is in the journal,
    in a segment being deleted, or only on the branch (2,400 runs, 3 reading threads)."""
    ledger = Ledger(git_repo)
    view = journal_view(ledger.journal_dir)
    proc = subprocess.Popen([sys.executable, "-c", HAMMER, str(git_repo), "2400"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": REPO,
                                 "OTEL_RUNS_COMMIT_INTERVAL": "0.05",
                                 "OTEL_RUNS_COMMIT_PROCESS": "never"})
    done: list[str] = []
    misses: list[str] = []
    reads = [0]
    finished = threading.Event()

    def hammer() -> None:
        rng = random.Random()
        while not finished.is_set():
            if not done:
                time.sleep(0.001)
                continue
            rid = done[-1] if rng.random() < 0.5 else rng.choice(done)
            if ledger.get(rid) is None:
                misses.append(rid)
            reads[0] += 1

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            kind, value = line.split()
            if kind == "flushed":
                assert value == "True"
                break
            if ledger.get(value) is None:  # at once, as the block exited
                misses.append(value)
            done.append(value)
    finally:
        finished.set()
        for t in threads:
            t.join(timeout=60)
        proc.wait(timeout=60)
    try:
        assert len(done) == 2_400 and misses == []
        assert view.files_dropped >= 5  # segments really were deleted under the readers
        assert reads[0] > 2_400
        assert on_branch(git_repo) == set(done)
        assert {r.run_id for r in ledger.iter_runs()} == set(done)
        print(f"\n{reads[0]} reads, {view.files_dropped} segments deleted meanwhile")
    finally:
        ledger.close()


def test_this_process_s_own_running_run_and_a_forked_child_s_fresh_view(git_repo: Path) -> None:
    import otel_runs

    otel_runs.configure(git_repo)
    ledger = Ledger(git_repo)
    try:
        with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s", summary="here") as run:
            assert ledger.get(run.run_id).status == "running"
            view = journal_view(ledger.journal_dir)
            pid = os.fork()
            if pid == 0:  # a fresh view in the child, which reads the same journals
                fresh = journal_view(ledger.journal_dir)
                ok = fresh is not view and fresh.refreshes == 0 \
                    and ledger.get(run.run_id).status == "running" and fresh.refreshes > 0
                os._exit(0 if ok else 1)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        assert ledger.get(run.run_id).status == "ok"
    finally:
        ledger.close()
