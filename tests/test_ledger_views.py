"""Every Ledger opened in a process reads the runs this process finished and has not
committed yet: ``Ledger(root)``, ``ledger_for(root)`` and handles of the same ledger
from another directory of the repository see the same runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import git, user_state
from opentelemetry import trace

import otel_runs
from otel_runs import Run, new_run_id
from otel_runs.ledger import Ledger, ledger_for


def on_branch(repo: Path) -> set[str]:
    names = git(repo, "ls-tree", "-r", "--name-only", "scp-ledger", check=False).split()
    return {n.split("/")[-2] for n in names if n.endswith("/run.json")}


def test_a_new_ledger_sees_runs_not_yet_committed(git_repo: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_COMMIT_INTERVAL", "600")  # nothing commits by itself
    before = user_state(git_repo)
    (git_repo / "services").mkdir()
    opened_before = Ledger(git_repo)
    otel_runs.configure(git_repo)
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s", summary="rolled out web") as a:
        with trace.get_tracer("t").start_as_current_span("kubectl apply"):
            pass
    direct = Run(new_run_id(), "build", "build:docker", status="ok", summary="built image")
    opened_before.record(direct)  # recorded through a handle of its own
    assert on_branch(git_repo) == set()
    opened_after = Ledger(git_repo)
    elsewhere = Ledger(git_repo / "services")  # another directory, the same ledger
    other_branch = Ledger(git_repo, branch="ops-ledger")
    try:
        for ledger in (ledger_for(git_repo), opened_before, opened_after, elsewhere):
            got = ledger.get(a.run_id)
            assert got is not None and got.summary == "rolled out web"
            assert [s["name"] for s in ledger.spans(a.run_id)] == ["kubectl apply"]
            assert ledger.get(direct.run_id) == direct
            assert [r.run_id for r in ledger.recent(10)] == sorted([a.run_id, direct.run_id],
                                                                   reverse=True)
            assert [r.run_id for r in ledger.recent(10, type="build")] == [direct.run_id]
            assert [r.run_id for r in ledger.search("rolled web")] == [a.run_id]
            assert [r.run_id for r in ledger.iter_runs(type="deploy")] == [a.run_id]
        assert other_branch.get(a.run_id) is None and other_branch.recent(10) == []
        # Once committed (each by the handle that recorded it), all read it from the branch.
        assert ledger_for(git_repo).flush(60) and opened_before.flush(60)
        assert on_branch(git_repo) == {a.run_id, direct.run_id}
        for ledger in (opened_after, elsewhere, opened_before):
            assert [r.run_id for r in ledger.iter_runs()] == sorted([a.run_id, direct.run_id],
                                                                    reverse=True)
    finally:
        for ledger in (opened_before, opened_after, elsewhere, other_branch):
            ledger.close()
    assert user_state(git_repo) == before
