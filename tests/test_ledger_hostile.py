"""Foreign and hostile repositories, and a ledger branch deleted or moved by someone else."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import git, user_state
from test_ledger_store import fsck, make_run

import otel_runs
from otel_runs import tracked_run
from otel_runs.cli import runs_group
from otel_runs.ledger import Ledger
from otel_runs.ledger._errors import BranchLost, UnsafeRepository
from otel_runs.ledger._layout import run_path
from otel_runs.ledger._repair import repair_ledger
from otel_runs.ledger._store import GitStore
from otel_runs.ledger._tags import PACKED_TAGS_MIN_BATCH
from otel_runs.ledger._verify import verify_ledger

HOOKS = ("reference-transaction", "post-commit", "pre-commit", "pre-push", "post-rewrite",
         "pre-auto-gc", "post-checkout", "post-index-change", "fsmonitor-watchman")


def plant_hooks(repo: Path, marker: Path) -> None:
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for name in HOOKS:
        hook = hooks / name
        hook.write_text(f"#!/bin/sh\necho {name} >> {marker}\n")
        hook.chmod(hook.stat().st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)


def snapshot(path: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``path``: (owner, size, mtime)."""
    out = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_uid, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def clean_git_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No system config and an empty global one (no safe.directory from the machine)."""
    home_config = tmp_path / "gitconfig"
    home_config.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home_config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return home_config


def test_hooks_never_run_when_the_ledger_writes(git_repo: Path, tmp_path: Path):
    before = user_state(git_repo)
    marker = tmp_path / "hooks-ran.txt"
    plant_hooks(git_repo, marker)
    git(git_repo, "commit", "-q", "--allow-empty", "-m", "hooks work for the user")
    assert marker.exists()  # the planted hooks do run for the user's own git
    git(git_repo, "reset", "-q", "--soft", "HEAD~1")
    marker.unlink()
    with GitStore(git_repo) as s:
        assert s.write_batch([(make_run(i), []) for i in range(5)]) == 5  # tags in the txn
        big = [make_run(100 + i) for i in range(PACKED_TAGS_MIN_BATCH)]
        assert s.write_batch([(r, []) for r in big]) == len(big)  # tags into packed-refs
        s.maintenance()
    assert not marker.exists(), marker.read_text()
    git(git_repo, "branch", "-D", "scp-ledger")  # the user's git: its hooks run
    marker.unlink()
    repair_ledger(git_repo)
    assert not marker.exists(), marker.read_text()
    assert user_state(git_repo) == before
    fsck(git_repo)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the repository another owner")
def test_a_repository_owned_by_another_user_is_refused_and_left_alone(
        git_repo: Path, tmp_path: Path, clean_git_config: Path,
        caplog: pytest.LogCaptureFixture):
    marker = tmp_path / "hooks-ran.txt"
    plant_hooks(git_repo, marker)
    os.chmod(tmp_path, 0o777)  # the hook may write its marker as any user
    subprocess.run(["chown", "-R", "65534:65534", str(git_repo)], check=True)
    before = snapshot(git_repo)
    with pytest.raises(UnsafeRepository) as info:
        Ledger(git_repo)
    message = str(info.value)
    assert "dubious ownership" in message and str(git_repo) in message
    assert f"git config --global --add safe.directory {git_repo}" in message
    caplog.set_level(logging.ERROR, logger="otel_runs")
    otel_runs.configure(git_repo)
    with tracked_run(git_repo, "deploy", "deploy:k8s") as run:  # the action still runs
        run.summary = "unrecorded"
    assert otel_runs.flush()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "dubious ownership" in errors[0].getMessage()
    assert not marker.exists()
    assert snapshot(git_repo) == before  # nothing written, no root-owned file left
    otel_runs.shutdown()
    # Trusted the way git says: the ledger works (and still runs no hook).
    git(tmp_path, "config", "--global", "--add", "safe.directory", str(git_repo))
    with GitStore(git_repo) as s:
        assert s.write_batch([(make_run(1), [])]) == 1
    assert not marker.exists()


def _write(store: GitStore, first: int, n: int) -> list[str]:
    runs = [make_run(first + i) for i in range(n)]
    assert store.write_batch([(r, []) for r in runs]) == n
    return [r["run_id"] for r in runs]


def _on_branch(repo: Path) -> set[str]:
    names = git(repo, "ls-tree", "-r", "--name-only", "scp-ledger").split()
    return {n.rsplit("/", 2)[-2] for n in names if n.endswith("/run.json")}


def test_a_deleted_branch_is_detected_and_repaired_from_the_tags(git_repo: Path):
    before = user_state(git_repo)
    with GitStore(git_repo) as s:
        ids = _write(s, 0, 20) + _write(s, 20, 15)
    git(git_repo, "branch", "-D", "scp-ledger")
    with GitStore(git_repo) as s:
        with pytest.raises(BranchLost, match="deleted.*otel-runs repair"):
            s.write_batch([(make_run(99), [])])
    assert git(git_repo, "branch", "--list", "scp-ledger") == ""  # no new history started
    report = verify_ledger(git_repo)
    assert report.repairable and "missing-branch" in {p.kind for p in report.problems}
    result = repair_ledger(git_repo)
    assert result.action == "rebuilt" and result.runs == 35
    assert _on_branch(git_repo) == set(ids)
    with GitStore(git_repo) as s:
        ids += _write(s, 40, 3)
    assert _on_branch(git_repo) == set(ids)
    assert verify_ledger(git_repo).problems == []
    assert repair_ledger(git_repo).action == "up-to-date"
    fsck(git_repo)
    assert user_state(git_repo) == before


def test_a_branch_moved_back_is_detected_and_merged_back(git_repo: Path):
    with GitStore(git_repo) as s:
        ids = _write(s, 0, 10)
        old = git(git_repo, "rev-parse", "scp-ledger").strip()
        ids += _write(s, 10, 10)
    git(git_repo, "update-ref", "refs/heads/scp-ledger", old)
    with GitStore(git_repo) as s:
        with pytest.raises(BranchLost, match="moved"):
            s.write_batch([(make_run(99), [])])
    assert verify_ledger(git_repo).repairable
    assert repair_ledger(git_repo).restored == 10
    assert _on_branch(git_repo) == set(ids)
    assert verify_ledger(git_repo).problems == []
    fsck(git_repo)


def test_runs_removed_by_a_commit_on_top_are_restored(git_repo: Path):
    """Someone commits onto the ledger branch deleting run files: verify names the orphan
    tags and says to repair; repair puts the files back from the tags' commits."""
    with GitStore(git_repo) as s:
        ids = _write(s, 0, 12)
    gone = ids[3:6]
    tip = git(git_repo, "rev-parse", "scp-ledger").strip()
    stream = (f"commit refs/heads/scp-ledger\ncommitter x <x@y> 0 +0000\ndata 6\nprune\n"
              f"from {tip}\n" + "".join(f"D {run_path(r).rsplit('/', 1)[0]}\n" for r in gone)
              + "\n")
    subprocess.run(["git", "fast-import", "--quiet"], cwd=git_repo, input=stream.encode(),
                   check=True)
    assert _on_branch(git_repo) == set(ids) - set(gone)
    report = verify_ledger(git_repo)
    assert {p.kind for p in report.problems} == {"orphan-tag"} and report.repairable
    result = repair_ledger(git_repo)
    assert result.restored == 3
    assert _on_branch(git_repo) == set(ids)
    assert verify_ledger(git_repo).problems == []
    fsck(git_repo)


def test_the_ledger_waits_for_repair_and_the_cli_repairs(git_repo: Path,
                                                         caplog: pytest.LogCaptureFixture):
    otel_runs.configure(git_repo)
    for i in range(5):
        with tracked_run(git_repo, "deploy", "deploy:k8s", summary=f"before {i}"):
            pass
    assert otel_runs.flush()
    git(git_repo, "branch", "-D", "scp-ledger")
    caplog.set_level(logging.ERROR, logger="otel_runs")
    with tracked_run(git_repo, "deploy", "deploy:k8s", summary="after") as run:
        pass
    assert not otel_runs.flush(timeout_millis=1500)  # kept, not written into a new history
    assert "otel-runs repair" in caplog.text
    assert git(git_repo, "branch", "--list", "scp-ledger") == ""
    result = CliRunner().invoke(runs_group, ["verify", "--project", str(git_repo)])
    assert result.exit_code == 1 and "otel-runs repair" in result.output
    result = CliRunner().invoke(runs_group, ["repair", "--project", str(git_repo)])
    assert result.exit_code == 0, result.output
    assert "rebuilt" in result.output
    assert otel_runs.flush()
    assert run.run_id in _on_branch(git_repo) and len(_on_branch(git_repo)) == 6
