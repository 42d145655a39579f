"""Ledger durability and the exporter path: read-your-writes, flush, fsync mode,
configure()/tracked_run end to end, not-a-repo, unsampled runs."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import CollectingProcessor, git, user_state, wait_until
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

import otel_runs
from otel_runs import InvalidRunId, Run
from otel_runs.exporters.ledger import LedgerSpanExporter, ledger_processor_for
from otel_runs.ledger import Ledger, NotAGitRepository, ledger_for

CHILD = str(Path(__file__).with_name("ledger_child.py"))


def on_branch(repo: Path, run_id: str) -> bool:
    names = git(repo, "ls-tree", "-r", "--name-only", "scp-ledger", check=False).split()
    return any(n.endswith(f"/{run_id}/run.json") for n in names)


def test_reads_include_runs_not_yet_committed(git_repo: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_COMMIT_INTERVAL", "600")  # nothing commits by itself
    before = user_state(git_repo)
    otel_runs.configure(git_repo)
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s", summary="rolled out web",
                               replicas=3) as run:
        run.add_event("step", name="apply")
    ledger = ledger_for(git_repo)
    assert not on_branch(git_repo, run.run_id)
    got = ledger.get(run.run_id)
    assert got is not None and got.status == "ok" and got.metadata == {"replicas": 3}
    assert got.events[0]["name"] == "step"
    assert [r.run_id for r in ledger.recent(5)] == [run.run_id]
    assert [r.run_id for r in ledger.recent(5, type="deploy", status="ok")] == [run.run_id]
    assert ledger.recent(5, status="failed") == []
    assert [r.run_id for r in ledger.search("rolled web")] == [run.run_id]
    assert [r.run_id for r in ledger.search(run.run_id[:12])] == [run.run_id]
    assert [r.run_id for r in ledger.iter_runs(type="deploy")] == [run.run_id]
    assert user_state(git_repo) == before


def test_flush_commits_and_reads_merge_without_duplicates(git_repo: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_COMMIT_INTERVAL", "600")
    before = user_state(git_repo)
    otel_runs.configure(git_repo)
    ids = []
    for i in range(5):
        with otel_runs.tracked_run(git_repo, "test", "test:unit", summary=f"suite {i}") as run:
            ids.append(run.run_id)
    ledger = ledger_for(git_repo)
    assert ledger.flush(60)
    for run_id in ids:
        assert on_branch(git_repo, run_id)
        assert git(git_repo, "tag", "-l", f"scp-run/{run_id}").strip() == f"scp-run/{run_id}"
    # Two more, uncommitted: recent() merges both sources, newest first, once each.
    for i in range(2):
        with otel_runs.tracked_run(git_repo, "test", "test:unit", summary=f"late {i}") as run:
            ids.append(run.run_id)
    assert [r.run_id for r in ledger.recent(50)] == sorted(ids, reverse=True)
    assert [r.run_id for r in ledger.recent(3)] == sorted(ids, reverse=True)[:3]
    assert [r.run_id for r in ledger.iter_runs()] == sorted(ids, reverse=True)
    assert otel_runs.flush()
    assert all(on_branch(git_repo, i) for i in ids)
    assert user_state(git_repo) == before


def test_background_commit_happens_without_flush(git_repo: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_COMMIT_INTERVAL", "0.2")
    before = user_state(git_repo)
    otel_runs.configure(git_repo)
    with otel_runs.tracked_run(git_repo, "build", "build:docker") as run:
        pass
    wait_until(lambda: on_branch(git_repo, run.run_id), timeout=30)
    assert user_state(git_repo) == before


def test_child_spans_are_stored_with_their_run(git_repo: Path) -> None:
    before = user_state(git_repo)
    otel_runs.configure(git_repo)
    tracer = trace.get_tracer("test")
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
        with tracer.start_as_current_span("kubectl apply"):
            with tracer.start_as_current_span("http PATCH"):
                pass
    with tracer.start_as_current_span("outside any run"):
        pass
    ledger = ledger_for(git_repo)
    names = [s["name"] for s in ledger.spans(run.run_id)]
    assert sorted(names) == ["http PATCH", "kubectl apply"]
    assert ledger.flush(60)
    stored = ledger.store.spans(run.run_id)
    assert sorted(s["name"] for s in stored) == ["http PATCH", "kubectl apply"]
    assert all(s["attributes"]["run.id"] == run.run_id for s in stored)
    assert user_state(git_repo) == before


def test_failed_run_status_and_summary_are_recorded(git_repo: Path) -> None:
    before = user_state(git_repo)
    otel_runs.configure(git_repo)
    with pytest.raises(RuntimeError):
        with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
            raise RuntimeError("image pull failed")
    ledger = ledger_for(git_repo)
    assert ledger.flush(60)
    got = ledger.store.get(run.run_id)
    assert got is not None and got["status"] == "failed"
    assert got["summary"] == "image pull failed"
    assert Run.from_dict(got) == ledger.get(run.run_id)
    assert user_state(git_repo) == before


def test_fsync_mode_group_commits_concurrent_runs(git_repo: Path) -> None:
    before = user_state(git_repo)
    otel_runs.configure(git_repo, durability="fsync")
    ledger = ledger_for(git_repo)
    assert ledger.durability == "fsync"
    ids: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(25):
            with otel_runs.tracked_run(git_repo, "test", "test:unit") as run:
                pass
            with lock:
                ids.append(run.run_id)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    syncs = ledger._journal.syncs
    assert 0 < syncs < len(ids) == 200  # concurrent writers shared fsyncs
    assert ledger.flush(60)
    assert len({r.run_id for r in ledger.iter_runs()}) == 200
    assert user_state(git_repo) == before


def test_fsync_mode_from_the_environment(git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_DURABILITY", "fsync")
    ledger = Ledger(git_repo)
    try:
        assert ledger.durability == "fsync" and ledger._journal.fsync
    finally:
        ledger.close()


def test_get_validates_ids_from_outside(git_repo: Path) -> None:
    ledger = ledger_for(git_repo)
    for bad in ("../../etc/passwd", "20261127T101500123Z-3fa9c2d1e5/../x", "", "HEAD"):
        with pytest.raises(InvalidRunId):
            ledger.get(bad)
        with pytest.raises(InvalidRunId):
            ledger.spans(bad)
    assert ledger.get("20261127T101500123Z-3fa9c2d1e5") is None


def test_ledger_for_is_shared_per_resolved_root(git_repo: Path) -> None:
    (git_repo / "sub").mkdir()
    assert ledger_for(git_repo) is ledger_for(str(git_repo) + "/sub/..")
    assert ledger_for(git_repo / "sub") is not ledger_for(git_repo)


def test_branch_from_the_environment(git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_LEDGER_BRANCH", "ops-ledger")
    before = user_state(git_repo)
    otel_runs.configure(git_repo)
    with otel_runs.tracked_run(git_repo, "build", "build:docker") as run:
        pass
    assert otel_runs.flush()
    assert run.run_id in git(git_repo, "ls-tree", "-r", "--name-only", "ops-ledger")
    assert git(git_repo, "rev-parse", "-q", "--verify", "scp-ledger", check=False) == ""
    assert user_state(git_repo) == before


def test_not_a_git_repo_logs_one_error_and_runs_reach_other_processors(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    collector = CollectingProcessor()
    with caplog.at_level(logging.ERROR):
        otel_runs.configure(plain, processors=[collector])
        for _ in range(3):
            with otel_runs.tracked_run(plain, "deploy", "deploy:k8s") as run:
                pass
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert str(plain.resolve()) in message and "git init" in message
    assert len(collector.ended) == 3 and collector.ended[-1].run_id == run.run_id
    with pytest.raises(NotAGitRepository, match="git init"):
        ledger_for(plain)
    assert ledger_processor_for(str(plain.resolve()), durability="journal") is None


def test_unsampled_run_is_recorded(git_repo: Path) -> None:
    # The global TracerProvider is set once per pytest process: sample in a child.
    before = user_state(git_repo)
    proc = subprocess.run([sys.executable, CHILD, "unsampled", str(git_repo)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _, run_id, sampled = proc.stdout.split()
    assert sampled == "unsampled"
    ledger = Ledger(git_repo)
    try:
        run = ledger.get(run_id)
        assert run is not None and run.summary == "dropped trace"
        assert [s["name"] for s in ledger.spans(run_id)] == ["inner"]
    finally:
        ledger.close()
    assert user_state(git_repo) == before


def test_exporter_on_a_plain_sdk_pipeline(git_repo: Path) -> None:
    """LedgerSpanExporter is an ordinary SpanExporter (here behind the SDK's
    SimpleSpanProcessor, with a private provider)."""
    before = user_state(git_repo)
    ledger = Ledger(git_repo)
    exporter = LedgerSpanExporter(ledger)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    run_id = otel_runs.new_run_id()
    attrs = {"run.id": run_id, "run.type": "build", "run.subtype": "build:docker",
             "run.status": "ok", "run.summary": "built", "run.metadata": '{"tag": "v1"}'}
    with tracer.start_as_current_span("build:docker", attributes=attrs):
        with tracer.start_as_current_span("docker push", attributes={"run.id": run_id}):
            pass
    with tracer.start_as_current_span("unrelated"):
        pass
    try:
        run = ledger.get(run_id)
        assert run is not None and run.summary == "built" and run.metadata == {"tag": "v1"}
        assert [s["name"] for s in ledger.spans(run_id)] == ["docker push"]
        assert exporter.export([]) is SpanExportResult.SUCCESS
        assert exporter.force_flush()
        assert on_branch(git_repo, run_id)
    finally:
        provider.shutdown()  # shuts the exporter down: closes the ledger
    assert user_state(git_repo) == before


def test_ledger_reopens_after_shutdown(git_repo: Path) -> None:
    before = user_state(git_repo)
    otel_runs.configure(git_repo)
    with otel_runs.tracked_run(git_repo, "build", "build:docker") as first:
        pass
    otel_runs.shutdown()
    assert on_branch(git_repo, first.run_id)  # shutdown committed it
    journal = ledger_for(git_repo).journal_dir
    assert [p.name for p in journal.iterdir()] == ["recover.lock"]  # clean close
    otel_runs.configure(git_repo)
    with otel_runs.tracked_run(git_repo, "build", "build:docker") as second:
        pass
    ledger = ledger_for(git_repo)
    assert {r.run_id for r in ledger.recent()} == {first.run_id, second.run_id}
    assert user_state(git_repo) == before


def test_ledger_in_a_subdirectory_and_a_linked_worktree(git_repo: Path, tmp_path: Path) -> None:
    sub = git_repo / "services" / "api"
    sub.mkdir(parents=True)
    wt = tmp_path / "wt"
    git(git_repo, "worktree", "add", "-q", "-b", "feature", str(wt))
    before, before_wt = user_state(git_repo), user_state(wt)
    otel_runs.configure(sub)
    with otel_runs.tracked_run(sub, "build", "build:docker") as a:
        pass
    with otel_runs.tracked_run(wt, "build", "build:docker") as b:
        pass
    assert otel_runs.flush()
    assert on_branch(git_repo, a.run_id) and on_branch(git_repo, b.run_id)
    journals = list((git_repo / ".git" / "otel-runs").glob("journal-*"))
    assert journals and not (wt / ".git").is_dir()  # the common git dir, not the worktree
    assert user_state(git_repo) == before and user_state(wt) == before_wt


def test_commit_helper_process_commits_and_survives_being_killed(
        git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    monkeypatch.setenv("OTEL_RUNS_COMMIT_PROCESS", "always")
    monkeypatch.setenv("OTEL_RUNS_COMMIT_INTERVAL", "600")
    before = user_state(git_repo)
    otel_runs.configure(git_repo)
    ledger = ledger_for(git_repo)
    ids = []
    for _ in range(3):
        with otel_runs.tracked_run(git_repo, "build", "build:docker") as run:
            ids.append(run.run_id)
    assert ledger.flush(60)
    helper = ledger._helper
    assert helper is not None and helper._proc is not None
    helper_pid = helper._proc.pid
    assert helper_pid != os.getpid() and all(on_branch(git_repo, i) for i in ids)
    os.kill(helper_pid, signal.SIGKILL)
    helper._proc.wait(timeout=30)
    for _ in range(3):
        with otel_runs.tracked_run(git_repo, "build", "build:docker") as run:
            ids.append(run.run_id)
    assert ledger.flush(60)  # the dead helper is replaced; the failed batch is retried
    assert all(on_branch(git_repo, i) for i in ids)
    assert ledger._helper is not None and ledger._helper._proc is not None
    assert ledger._helper._proc.pid != helper_pid
    assert user_state(git_repo) == before


def test_a_full_batch_is_committed_in_the_background(git_repo: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A backlog of MAX_BATCH runs commits at once, without flush() (the committer once
    read the clock twice, found a full batch never due, and spun holding the GIL)."""
    from otel_runs.ledger import _ledger

    monkeypatch.setattr(_ledger, "MAX_BATCH", 5)
    monkeypatch.setenv("OTEL_RUNS_COMMIT_INTERVAL", "600")  # only a full batch is due
    monkeypatch.setenv("OTEL_RUNS_COMMIT_PROCESS", "never")
    before = user_state(git_repo)
    ledger = Ledger(git_repo)
    ids = []
    try:
        for i in range(12):
            run = Run(run_id=otel_runs.new_run_id(), type="test", subtype="test:unit",
                      status="ok", summary=f"run {i}")
            ledger.record(run)
            ids.append(run.run_id)
        # 10 of them make two full batches; the last 2 wait for the (long) interval.
        assert wait_until(lambda: len(ledger.store.contains(ids)) >= 10, timeout=60)
        assert ledger.flush(60)
        assert ledger.store.contains(ids) == set(ids)
    finally:
        ledger.close()
    assert user_state(git_repo) == before


def test_commit_helper_starts_while_a_big_batch_builds_up(git_repo: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper starts as soon as a helper-sized batch is pending (not when it is due), so
    its start-up overlaps the commit interval."""
    from otel_runs.ledger import _ledger

    monkeypatch.setattr(_ledger, "HELPER_MIN_BATCH", 3)
    monkeypatch.setenv("OTEL_RUNS_COMMIT_INTERVAL", "600")
    before = user_state(git_repo)
    ledger = Ledger(git_repo)
    try:
        runs = [Run(run_id=otel_runs.new_run_id(), type="test", subtype="test:unit",
                    status="ok") for _ in range(3)]
        for run in runs:
            ledger.record(run)
        assert wait_until(lambda: ledger._helper is not None, timeout=60)
        assert not ledger.store.contains(r.run_id for r in runs)  # started, nothing committed
        assert ledger.flush(60)
        assert ledger.store.contains(r.run_id for r in runs) == {r.run_id for r in runs}
    finally:
        ledger.close()
    assert user_state(git_repo) == before
