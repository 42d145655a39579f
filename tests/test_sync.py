"""Sharing a ledger through a bare remote: two clones, in turn and at once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import git, user_state

import otel_runs
from otel_runs import tracked_run
from otel_runs.cli import runs_group
from otel_runs.ledger import LedgerError, NotAGitRepository, ledger_for
from otel_runs.ledger._sync import sync_ledger
from otel_runs.ledger._verify import verify_ledger


@pytest.fixture
def clones(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A bare remote with one commit on main, and two clones of it."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "-q", str(bare), str(seed))
    (seed / "README.md").write_text("shared\n")
    git(seed, "add", "README.md")
    git(seed, "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-q", "-m", "init")
    git(seed, "push", "-q", "origin", "HEAD:main")
    a, b = tmp_path / "a", tmp_path / "b"
    for clone in (a, b):
        git(tmp_path, "clone", "-q", str(bare), str(clone))
    return bare, a, b


def _record(root: Path, n: int, label: str) -> set[str]:
    ids = set()
    for i in range(n):
        with tracked_run(root, "deploy", "deploy:k8s", summary=f"{label} {i}") as run:
            ids.add(run.run_id)
    otel_runs.flush()
    return ids


def _ledger_ids(root: Path) -> set[str]:
    return {r.run_id for r in ledger_for(root).iter_runs()}


def _tags(root: Path) -> set[str]:
    return {t.removeprefix("scp-run/") for t in git(root, "tag", "-l", "scp-run/*").split()}


def test_two_clones_in_turn_end_with_the_union(clones: tuple[Path, Path, Path]) -> None:
    bare, a, b = clones
    otel_runs.configure(a)
    ids_a = _record(a, 3, "from a")
    ids_b = _record(b, 2, "from b")
    before = {a: user_state(a), b: user_state(b)}

    first = sync_ledger(a, "origin")  # the remote has no ledger yet: push
    assert first.pushed and first.merge == "local-only"
    second = sync_ledger(b, "origin")  # unrelated histories: merged, then pushed
    assert second.merge == "merged" and second.new_local_runs == 3 and second.pushed
    third = sync_ledger(a, "origin")  # a catches up by fast-forward
    assert third.merge == "fast-forward" and third.new_local_runs == 2

    union = ids_a | ids_b
    for clone in (a, b):
        assert _ledger_ids(clone) == union
        assert _tags(clone) == union
        assert all(ledger_for(clone).get(run_id) is not None for run_id in union)
        report = verify_ledger(clone)
        assert report.ok, report.problems
        assert report.runs == len(union) == report.tags
        assert user_state(clone) == before[clone]  # HEAD, index, tree, stash untouched
    assert _tags(bare) == union
    assert git(bare, "rev-parse", "scp-ledger") == git(a, "rev-parse", "scp-ledger")

    again = sync_ledger(b, "origin")
    assert again.merge == "up-to-date" and not again.pushed
    assert git(b, "rev-parse", "scp-ledger") == git(a, "rev-parse", "scp-ledger")


def test_more_rounds_in_turn_keep_converging(clones: tuple[Path, Path, Path]) -> None:
    _bare, a, b = clones
    otel_runs.configure(a)
    union: set[str] = set()
    for round_ in range(3):
        union |= _record(a, 2, f"a{round_}")
        sync_ledger(a)
        union |= _record(b, 2, f"b{round_}")
        sync_ledger(b)
    sync_ledger(a)
    for clone in (a, b):
        assert _ledger_ids(clone) == union
        assert verify_ledger(clone).ok
    git(a, "fsck", "--strict")


def test_syncing_at_the_same_time_retries_and_converges(clones: tuple[Path, Path, Path]) -> None:
    _bare, a, b = clones
    otel_runs.configure(a)
    union = _record(a, 2, "a") | _record(b, 2, "b")
    errors: list[BaseException] = []

    def sync(root: Path) -> None:
        try:
            for _ in range(3):
                sync_ledger(root, max_attempts=10)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sync, args=(root,)) for root in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    sync_ledger(a)
    sync_ledger(b)
    for clone in (a, b):
        assert _ledger_ids(clone) == union
        assert verify_ledger(clone).ok


def test_a_run_recorded_during_the_sync_is_not_lost(clones: tuple[Path, Path, Path]) -> None:
    _bare, a, b = clones
    otel_runs.configure(a)
    _record(b, 1, "b")
    sync_ledger(b)
    mine = _record(a, 1, "a")
    calls: list[str] = []

    def record_mid_sync(step: str) -> None:
        calls.append(step)
        if step == "fetch" and len(calls) == 1:
            mine.update(_record(a, 1, "a mid-sync"))  # moves a's branch under the sync

    sync_ledger(a, on_step=record_mid_sync)
    assert mine <= _ledger_ids(a)
    sync_ledger(a)
    sync_ledger(b)
    assert mine <= _ledger_ids(b)
    assert verify_ledger(a).ok and verify_ledger(b).ok


def test_errors_are_clear(clones: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _bare, a, _b = clones
    with pytest.raises(LedgerError, match="unknown remote 'upstream'"):
        sync_ledger(a, "upstream")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(NotAGitRepository, match=str(plain)):
        sync_ledger(plain)
    with pytest.raises(LedgerError, match="cannot read remote .*does not appear to be a git"):
        sync_ledger(a, str(tmp_path / "no-such-remote.git"))


def test_cli_sync_and_verify(clones: tuple[Path, Path, Path]) -> None:
    _bare, a, b = clones
    otel_runs.configure(a)
    union = _record(a, 2, "a") | _record(b, 1, "b")
    runner = CliRunner()
    for clone in (a, b, a):
        result = runner.invoke(runs_group, ["--project", str(clone), "sync"])
        assert result.exit_code == 0, result.output
        assert "synced with origin" in result.stdout
    for clone in (a, b):
        verified = runner.invoke(runs_group, ["--project", str(clone), "verify"])
        assert verified.exit_code == 0
        assert f"{len(union)} runs, {len(union)} tags on scp-ledger: ok" in verified.stdout
    gone = runner.invoke(runs_group, ["--project", str(a), "sync", "nowhere"])
    assert gone.exit_code == 1 and gone.stderr.count("\n") == 1

