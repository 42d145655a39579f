"""GitStore: the git storage layer of the ledger, on real repositories in tmp dirs."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import git, user_state

from otel_runs._ids import InvalidRunId, new_run_id
from otel_runs.ledger import _maintenance as maintenance_module
from otel_runs.ledger import _tags as tags_module
from otel_runs.ledger._errors import NotAGitRepository, PoisonRecords
from otel_runs.ledger._layout import run_path
from otel_runs.ledger._store import GitStore

BASE = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
PATH_RE = re.compile(
    r"^ledger/runs/\d{4}/\d{2}/\d{2}/[0-9a-f]/[0-9a-f]/[0-9a-f]/[0-9a-f]/"
    r"(\d{8}T\d{9}Z-[0-9a-f]{10})/(run\.json|spans\.jsonl)$"
)


def make_run(
    i: int,
    *,
    at: datetime | None = None,
    type: str = "deploy",
    subtype: str | None = None,
    status: str = "ok",
    summary: str | None = None,
) -> dict[str, Any]:
    return {
        "run_id": new_run_id(at or BASE + timedelta(seconds=i)),
        "type": type,
        "subtype": subtype or f"{type}:k8s",
        "status": status,
        "summary": summary if summary is not None else f"run number {i}",
        "started_at": "2026-11-27T10:00:00.000000Z",
        "ended_at": "2026-11-27T10:00:01.000000Z",
        "duration_ms": 1000.0,
        "metadata": {"i": i},
        "trace_id": "0" * 32,
        "span_id": "0" * 16,
        "parent_run_id": None,
        "service": "svc",
        "events": [],
    }


def span(i: int) -> dict[str, Any]:
    return {"name": f"child-{i}", "attributes": {"n": i}}


@pytest.fixture
def store(git_repo: Path):
    s = GitStore(git_repo)
    yield s
    s.close()


def tags(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/tags/").split(
        "\n"
    )[:-1]


def fsck(repo: Path) -> None:
    git(repo, "fsck", "--strict", "--no-dangling")


# -- writing -------------------------------------------------------------------------------------


def test_first_write_creates_an_orphan_branch_and_one_tag_per_run(git_repo: Path, store: GitStore):
    before = user_state(git_repo)
    runs = [make_run(i) for i in range(3)]
    assert store.write_batch([(r, []) for r in runs]) == 3

    commit = git(git_repo, "rev-parse", "scp-ledger").strip()
    assert git(git_repo, "rev-list", "--parents", "scp-ledger").split() == [commit]  # no parent
    assert git(git_repo, "merge-base", "main", "scp-ledger", check=False) == ""
    assert sorted(tags(git_repo)) == sorted(f"scp-run/{r['run_id']} {commit}" for r in runs)
    assert user_state(git_repo) == before
    fsck(git_repo)


def test_one_commit_per_batch_listing_its_runs(git_repo: Path, store: GitStore):
    before = user_state(git_repo)
    store.write_batch([(make_run(i), []) for i in range(2)])
    store.write_batch([(make_run(i), []) for i in range(2, 7)])
    assert git(git_repo, "rev-list", "--count", "scp-ledger").strip() == "2"
    message = git(git_repo, "log", "-1", "--format=%B", "scp-ledger")
    assert message.startswith("otel-runs: record 5 runs\n")
    assert "Otel-Runs-Max-Id: " in message
    second_tip = git(git_repo, "rev-parse", "scp-ledger").strip()
    assert sum(1 for t in tags(git_repo) if t.endswith(second_tip)) == 5
    assert user_state(git_repo) == before


def test_layout_is_date_and_hash_bucketed_with_spans_next_to_the_run(git_repo: Path, store: GitStore):
    before = user_state(git_repo)
    with_spans, without = make_run(1), make_run(2)
    store.write_batch([(with_spans, [span(1), span(2)]), (without, [])])
    paths = git(git_repo, "ls-tree", "-r", "--name-only", "scp-ledger").split()
    assert all(PATH_RE.match(p) for p in paths), paths
    assert run_path(with_spans["run_id"]) in paths
    assert run_path(with_spans["run_id"], "spans.jsonl") in paths
    assert run_path(without["run_id"], "spans.jsonl") not in paths
    assert "/2026/11/27/" in run_path(without["run_id"])
    stored = json.loads(git(git_repo, "show", f"scp-ledger:{run_path(with_spans['run_id'])}"))
    assert stored == with_spans
    lines = git(git_repo, "show", f"scp-ledger:{run_path(with_spans['run_id'], 'spans.jsonl')}")
    assert [json.loads(x) for x in lines.splitlines()] == [span(1), span(2)]
    assert user_state(git_repo) == before


def test_already_recorded_runs_are_skipped_first_write_wins(git_repo: Path, store: GitStore):
    before = user_state(git_repo)
    runs = [make_run(i) for i in range(4)]
    assert store.write_batch([(r, []) for r in runs[:2]]) == 2
    tip = git(git_repo, "rev-parse", "scp-ledger").strip()
    changed = dict(runs[0], summary="rewritten")
    assert store.write_batch([(changed, []), (runs[1], [])]) == 0
    assert git(git_repo, "rev-parse", "scp-ledger").strip() == tip  # nothing new: no commit
    # a replay mixing old and new runs, with a repeat inside the batch
    assert store.write_batch([(r, []) for r in [*runs, runs[3]]]) == 2
    assert store.get(runs[0]["run_id"])["summary"] == "run number 0"
    assert len(tags(git_repo)) == 4
    assert store.contains([r["run_id"] for r in runs] + [new_run_id()]) == {
        r["run_id"] for r in runs
    }
    assert user_state(git_repo) == before
    fsck(git_repo)


def test_tag_prefix_none_writes_no_tags(git_repo: Path):
    before = user_state(git_repo)
    with GitStore(git_repo, branch="other-ledger", tag_prefix=None) as s:
        assert s.write_batch([(make_run(1), [])]) == 1
    assert tags(git_repo) == []
    assert git(git_repo, "rev-parse", "--verify", "-q", "other-ledger").strip()
    assert user_state(git_repo) == before


def test_bad_branch_name_is_rejected(git_repo: Path):
    with pytest.raises(Exception, match="not a valid ref name"):
        GitStore(git_repo, branch="bad..name")


# -- reading -------------------------------------------------------------------------------------


def test_get_and_spans_round_trip(git_repo: Path, store: GitStore):
    before = user_state(git_repo)
    run = make_run(1)
    store.write_batch([(run, [span(1)])])
    assert store.get(run["run_id"]) == run
    assert store.spans(run["run_id"]) == [span(1)]
    missing = new_run_id()
    assert store.get(missing) is None
    assert store.spans(missing) == []
    assert user_state(git_repo) == before


def test_reads_on_an_empty_ledger(store: GitStore):
    assert store.recent() == []
    assert store.search("deploy") == []
    assert list(store.iter_runs()) == []
    assert store.contains([new_run_id()]) == set()
    assert store.get(new_run_id()) is None


def test_recent_is_newest_first_by_run_id_across_batches(git_repo: Path, store: GitStore):
    before = user_state(git_repo)
    runs = [make_run(i) for i in range(30)]
    # recorded out of order: a late batch carries older runs (a journal replay)
    store.write_batch([(r, []) for r in runs[10:20]])
    store.write_batch([(r, []) for r in runs[20:]])
    store.write_batch([(r, []) for r in runs[:10]])
    want = sorted((r["run_id"] for r in runs), reverse=True)
    assert [r["run_id"] for r in store.recent(50)] == want
    assert [r["run_id"] for r in store.recent(5)] == want[:5]
    assert [r["run_id"] for r in store.recent(12)] == want[:12]
    assert store.recent(0) == []
    assert user_state(git_repo) == before


def test_recent_filters_by_type_and_status(git_repo: Path, store: GitStore):
    before = user_state(git_repo)
    runs = [
        make_run(i, type="deploy" if i % 2 else "backup", status="failed" if i % 3 == 0 else "ok")
        for i in range(24)
    ]
    for k in range(0, 24, 6):
        store.write_batch([(r, []) for r in runs[k : k + 6]])

    def ids(rs):
        return [r["run_id"] for r in rs]

    newest = sorted(runs, key=lambda r: r["run_id"], reverse=True)
    assert ids(store.recent(50, type="deploy")) == ids(r for r in newest if r["type"] == "deploy")
    assert ids(store.recent(3, status="failed")) == ids(
        [r for r in newest if r["status"] == "failed"][:3]
    )
    both = [r for r in newest if r["type"] == "backup" and r["status"] == "failed"]
    assert ids(store.recent(50, type="backup", status="failed")) == ids(both)
    assert store.recent(50, type="nope") == []
    assert user_state(git_repo) == before


def test_recent_reads_only_the_newest_commits(git_repo: Path, store: GitStore, monkeypatch):
    """recent(n) stops walking history once no older commit can hold a newer run."""
    before = user_state(git_repo)
    for b in range(40):
        store.write_batch([(make_run(b * 10 + i), []) for i in range(10)])
    loaded: list[bytes] = []
    real = GitStore._remember_commit

    def counting(self, commit):
        loaded.append(commit.oid)
        return real(self, commit)

    monkeypatch.setattr(GitStore, "_remember_commit", counting)
    store = GitStore(git_repo)  # a fresh reader: nothing cached
    got = store.recent(15)
    assert len(got) == 15
    assert len(loaded) <= 3, loaded  # tip + 2 parents of 40 commits
    store.close()
    assert user_state(git_repo) == before


def test_search_matches_id_prefix_subtype_and_summary_words(git_repo: Path, store: GitStore):
    before = user_state(git_repo)
    runs = [
        make_run(1, type="deploy", subtype="deploy:k8s", summary="Rolled out api v2 to prod"),
        make_run(2, type="backup", subtype="backup:s3", summary="Nightly database dump"),
        make_run(3, type="deploy", subtype="deploy:lambda", summary="Rolled back api"),
        make_run(4, type="deploy", subtype="deploy:k8s", summary="x" * 300 + " needle"),
    ]
    store.write_batch([(r, []) for r in runs])

    def ids(rs):
        return [r["run_id"] for r in rs]

    assert ids(store.search("rolled")) == [runs[2]["run_id"], runs[0]["run_id"]]
    assert ids(store.search("rolled prod")) == [runs[0]["run_id"]]
    assert ids(store.search("K8S")) == [runs[3]["run_id"], runs[0]["run_id"]]
    assert ids(store.search("s3")) == [runs[1]["run_id"]]
    assert ids(store.search(runs[1]["run_id"][:-3])) == [runs[1]["run_id"]]
    assert ids(store.search("needle")) == [runs[3]["run_id"]]  # beyond the indexed 200 chars
    assert ids(store.search("rolled", limit=1)) == [runs[2]["run_id"]]
    assert store.search("   ") == []
    assert store.search("zebra") == []
    assert user_state(git_repo) == before


def test_iter_runs_all_since_and_type(git_repo: Path, store: GitStore):
    before = user_state(git_repo)
    runs = [make_run(i, at=BASE + timedelta(days=i), type="a" if i % 2 else "b") for i in range(10)]
    store.write_batch([(r, []) for r in runs[5:]])
    store.write_batch([(r, []) for r in runs[:5]])
    newest = sorted((r["run_id"] for r in runs), reverse=True)
    assert [r["run_id"] for r in store.iter_runs()] == newest
    since = BASE + timedelta(days=6)
    assert [r["run_id"] for r in store.iter_runs(since=since)] == newest[:4]
    assert [r["run_id"] for r in store.iter_runs(type="a")] == [
        r for r in newest if int(store.get(r)["metadata"]["i"]) % 2
    ]
    naive = since.replace(tzinfo=None)
    assert len(list(store.iter_runs(since=naive))) == 4
    assert user_state(git_repo) == before


def _hand_commit(repo: Path, files: dict[str, bytes], tmp: Path) -> None:
    """Commit files onto scp-ledger by hand (a private index, like a user with plumbing)."""
    env_index = tmp / "hand-index"
    env = {**os.environ, "GIT_INDEX_FILE": str(env_index)}
    run = lambda *a, **kw: subprocess.run(  # noqa: E731
        ["git", *a], cwd=repo, env=env, check=True, capture_output=True, **kw
    ).stdout
    run("read-tree", "scp-ledger")
    for path, data in files.items():
        oid = run("hash-object", "-w", "--stdin", input=data).decode().strip()
        run("update-index", "--add", "--cacheinfo", f"100644,{oid},{path}")
    tree = run("write-tree").decode().strip()
    commit = run(
        "-c", "user.name=t", "-c", "user.email=t@e", "commit-tree", tree, "-p", "scp-ledger",
        "-m", "hand edit",
    ).decode().strip()
    run("update-ref", "refs/heads/scp-ledger", commit)
    env_index.unlink()


def test_corrupt_or_hand_edited_run_files_are_skipped_with_a_warning(
    git_repo: Path, store: GitStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    runs = [make_run(i) for i in range(5)]
    store.write_batch([(r, [span(1)]) for r in runs])
    before = user_state(git_repo)
    extra = dict(runs[1], brand_new_field=1)
    _hand_commit(
        git_repo,
        {
            run_path(runs[0]["run_id"]): b"{not json",
            run_path(runs[1]["run_id"]): json.dumps(extra).encode(),
            run_path(runs[2]["run_id"]): json.dumps(dict(runs[2], status="exploded")).encode(),
            run_path(runs[3]["run_id"]): json.dumps(dict(runs[3], run_id=runs[4]["run_id"])).encode(),
            run_path(runs[4]["run_id"], "spans.jsonl"): b'{"name": "ok"}\nnot json\n[1]\n',
        },
        tmp_path,
    )
    caplog.set_level(logging.WARNING, logger="otel_runs")
    listed = [r["run_id"] for r in store.recent(50)]
    assert listed == [runs[4]["run_id"], runs[1]["run_id"]]
    assert "brand_new_field" not in store.get(runs[1]["run_id"])
    assert store.get(runs[0]["run_id"]) is None
    assert len(list(store.iter_runs())) == 2
    assert store.spans(runs[4]["run_id"]) == [{"name": "ok"}]
    text = caplog.text
    assert "corrupt run file" in text and runs[0]["run_id"] in text
    assert "brand_new_field" in text
    assert "bad span line 2" in text
    # the store keeps writing on top of a hand-made commit
    assert store.write_batch([(make_run(9), [])]) == 1
    assert len(store.recent(50)) == 3
    assert user_state(git_repo) == before
    fsck(git_repo)


@pytest.mark.parametrize(
    "bad",
    ["../../etc/passwd", "20261127T101500123Z-3fa9c2d1e5/../../x", "HEAD", "a b", "", "x" * 200,
     "20261127T101500123Z-3FA9C2D1E5", "20261127T101500123Z-3fa9c2d1e5\nupdate HEAD 0"],
)
def test_ids_from_outside_are_validated(git_repo: Path, store: GitStore, bad: str):
    before = user_state(git_repo)
    with pytest.raises(InvalidRunId):
        store.get(bad)
    with pytest.raises(InvalidRunId):
        store.spans(bad)
    with pytest.raises(InvalidRunId):
        store.contains([bad])
    with pytest.raises(PoisonRecords) as info:
        store.write_batch([(dict(make_run(1), run_id=bad), [])])
    assert [index for index, _, _ in info.value.rejected] == [0]
    assert git(git_repo, "for-each-ref").count("\n") == 1  # only main
    assert user_state(git_repo) == before


def test_unwritable_items_are_rejected_together_and_nothing_is_written(git_repo: Path,
                                                                      store: GitStore):
    """Poison items (not JSON, not finite, not a run) are named at once and nothing is written:
    the caller sets them aside and writes the rest."""
    before = user_state(git_repo)
    good = make_run(1)
    items = [(dict(make_run(2), metadata={"x": object()}), []), (good, []), ("nonsense", []),
             (dict(make_run(3), duration_ms=float("nan")), []),
             (dict(make_run(4), run_id="２０２６１１２７T101500123Z-3fa9c2d1e5"), [])]
    with pytest.raises(PoisonRecords) as info:
        store.write_batch(items)  # type: ignore[arg-type]
    assert [index for index, _, _ in info.value.rejected] == [0, 2, 3, 4]
    assert store.recent() == []
    assert store.write_batch([(good, [])]) == 1
    assert [r["run_id"] for r in store.recent()] == [good["run_id"]]
    assert user_state(git_repo) == before


# -- where it runs -------------------------------------------------------------------------------


def test_repository_without_commits(tmp_path: Path):
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "untracked.txt").write_text("mine\n")
    before = user_state(repo)
    with GitStore(repo) as s:
        assert s.write_batch([(make_run(1), [])]) == 1
        assert len(s.recent()) == 1
    assert user_state(repo) == before
    assert git(repo, "rev-parse", "--verify", "-q", "HEAD", check=False) == ""
    assert git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    fsck(repo)


def test_linked_worktree_writes_to_the_common_repository(git_repo: Path, tmp_path: Path):
    wt = tmp_path / "wt"
    git(git_repo, "worktree", "add", "-q", "-b", "feature", str(wt))
    (wt / "wip.txt").write_text("dirty\n")
    before_main, before_wt = user_state(git_repo), user_state(wt)
    with GitStore(wt / ".") as s:
        assert s.git_dir == (git_repo / ".git").resolve()
        assert s.write_batch([(make_run(1), [])]) == 1
    assert user_state(git_repo) == before_main
    assert user_state(wt) == before_wt
    assert git(git_repo, "rev-list", "--count", "scp-ledger").strip() == "1"
    assert not (git_repo / ".git" / "worktrees" / "wt" / "otel-runs").exists()


def test_project_root_in_a_subdirectory(git_repo: Path):
    sub = git_repo / "services" / "api"
    sub.mkdir(parents=True)
    before = user_state(git_repo)
    with GitStore(sub) as s:
        assert s.git_dir == (git_repo / ".git").resolve()
        assert s.write_batch([(make_run(1), [])]) == 1
    assert user_state(git_repo) == before
    assert not any(p.name == "ledger" for p in git_repo.rglob("ledger"))


def _conflict(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "other")
    (repo / "README.md").write_text("theirs\n")
    git(repo, "commit", "-q", "-am", "theirs")
    git(repo, "checkout", "-q", "main")
    (repo / "README.md").write_text("ours\n")
    git(repo, "commit", "-q", "-am", "ours")


@pytest.mark.parametrize("operation", ["merge", "rebase"])
def test_mid_merge_or_rebase_with_a_dirty_tree(git_repo: Path, operation: str):
    _conflict(git_repo)
    git(git_repo, operation, "other", check=False)
    gitdir = git_repo / ".git"
    marker = "MERGE_HEAD" if operation == "merge" else "rebase-merge"
    assert (gitdir / marker).exists()
    (git_repo / "new-untracked.txt").write_text("wip\n")
    (git_repo / "staged.txt").write_text("staged\n")
    git(git_repo, "add", "staged.txt")
    before = user_state(git_repo)
    assert "UU README.md" in before["status"] or "AA" in before["status"]
    with GitStore(git_repo) as s:
        for i in range(3):
            assert s.write_batch([(make_run(i), [])]) == 1
    assert user_state(git_repo) == before
    assert (gitdir / marker).exists()
    assert (git_repo / "README.md").read_text().startswith("<<<<<<<")


def test_not_a_repository_names_the_path_and_the_fix(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(NotAGitRepository) as info:
        GitStore(plain)
    message = str(info.value)
    assert str(plain) in message and "git init" in message and "OTEL_RUNS_PROJECT_ROOT" in message
    with pytest.raises(NotAGitRepository, match="not a directory"):
        GitStore(tmp_path / "missing")


# -- processes, threads, maintenance -------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys, threading
    from otel_runs.ledger._store import GitStore
    repo, plan_file, worker = sys.argv[1], sys.argv[2], int(sys.argv[3])
    plan = json.load(open(plan_file))
    store = GitStore(repo)
    written, errors = [], []
    def work(batches):
        try:
            for batch in batches:
                written.append(store.write_batch([(run, [{"name": "s"}]) for run in batch]))
        except BaseException as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=work, args=(b,)) for b in plan[worker]]
    for t in threads: t.start()
    for t in threads: t.join(120)
    store.close()
    print(json.dumps({"written": sum(written), "errors": errors}))
    """
)


def test_processes_and_threads_write_one_ledger_exactly_once(git_repo: Path, tmp_path: Path):
    before = user_state(git_repo)
    procs, threads, batches, size = 4, 3, 6, 4
    runs = [make_run(i, at=BASE + timedelta(milliseconds=i)) for i in range(procs * threads * batches * size)]
    # worker w, thread t writes its own runs AND replays a neighbour's (overlaps across processes)
    plan: list[list[list[list[dict]]]] = []
    for w in range(procs):
        per_thread = []
        for t in range(threads):
            k = (w * threads + t) * batches * size
            own = [runs[k + b * size : k + (b + 1) * size] for b in range(batches)]
            other = (k + batches * size) % len(runs)
            replay = [runs[other + b * size : other + (b + 1) * size] for b in range(2)]
            per_thread.append(own + replay)
        plan.append(per_thread)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(git_repo), str(plan_file), str(w)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for w in range(procs)
    ]
    results = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["errors"] for r in results] == [[]] * procs
    assert sum(r["written"] for r in results) == len(runs)  # nothing lost, nothing twice
    with GitStore(git_repo) as s:
        listed = [r["run_id"] for r in s.iter_runs()]
        assert listed == sorted((r["run_id"] for r in runs), reverse=True)
        assert all(s.spans(r) == [{"name": "s"}] for r in listed[:5])
    paths = git(git_repo, "ls-tree", "-r", "--name-only", "scp-ledger").split()
    assert len([p for p in paths if p.endswith("/run.json")]) == len(runs)
    tag_lines = tags(git_repo)
    assert len(tag_lines) == len(runs)
    for line in tag_lines[:: max(1, len(tag_lines) // 10)]:
        name, commit = line.split()
        run_id = name.split("/", 1)[1]
        assert run_path(run_id) in git(git_repo, "show", "--name-only", "--format=", commit)
    fsck(git_repo)
    assert user_state(git_repo) == before


def test_maintenance_packs_tags_and_rolls_up_packs(git_repo: Path, monkeypatch):
    monkeypatch.setattr(maintenance_module, "PACK_REFS_EVERY_RUNS", 20)
    monkeypatch.setattr(maintenance_module, "REPACK_EVERY_COMMITS", 4)
    before = user_state(git_repo)
    with GitStore(git_repo) as s:
        for b in range(16):
            s.write_batch([(make_run(b * 5 + i), []) for i in range(5)])
        loose = list((git_repo / ".git" / "refs" / "tags" / "scp-run").glob("*"))
        assert len(loose) < 20
        packs = list((git_repo / ".git" / "objects" / "pack").glob("*.pack"))
        assert len(packs) < 8
        assert len(s.recent(100)) == 80
        s.maintenance()
        assert not list((git_repo / ".git" / "refs" / "tags" / "scp-run").glob("*"))
    assert len(tags(git_repo)) == 80
    fsck(git_repo)
    assert user_state(git_repo) == before


def test_close_stops_the_reader_and_forked_children_read_their_own(git_repo: Path):
    s = GitStore(git_repo)
    run = make_run(1)
    s.write_batch([(run, [])])
    assert s.get(run["run_id"]) == run
    reader = s._reader
    assert reader is not None and reader._proc is not None
    proc = reader._proc
    pid = os.fork()
    if pid == 0:  # child: must not share the parent's cat-file pipes
        code = 0
        try:
            code = 0 if s.get(run["run_id"]) == run and s.write_batch([(make_run(2), [])]) == 1 else 3
            s.close()
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert s.get(run["run_id"]) == run  # the parent's reader still works
    assert len(s.recent()) == 2
    s.close()
    assert proc.poll() is not None
    with pytest.raises(Exception, match="closed"):
        s.get(run["run_id"])


# -- run tags written straight into packed-refs ----------------------------------------------------


def loose_run_tags(repo: Path) -> list[Path]:
    return list((repo / ".git" / "refs" / "tags" / "scp-run").glob("*"))


def test_run_tags_go_into_packed_refs_next_to_the_users_refs(git_repo: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tags_module, "PACKED_TAGS_MIN_BATCH", 10)
    git(git_repo, "tag", "-a", "-m", "release", "v1.0")  # annotated: a peel line when packed
    git(git_repo, "tag", "zz-last")
    git(git_repo, "branch", "feature")
    git(git_repo, "pack-refs", "--all")
    git(git_repo, "tag", "loose-one")  # stays loose
    before = user_state(git_repo)
    user_refs = git(git_repo, "for-each-ref", "--format=%(refname) %(objectname)")
    ids = []
    with GitStore(git_repo) as s:
        for b in range(3):
            runs = [make_run(b * 10 + i) for i in range(10)]
            assert s.write_batch([(r, []) for r in runs]) == 10
            ids += [r["run_id"] for r in runs]
    assert not loose_run_tags(git_repo)  # no file per tag
    packed = (git_repo / ".git" / "packed-refs").read_text().splitlines()
    names = [line.split(" ", 1)[1] for line in packed[1:] if not line.startswith("^")]
    assert names == sorted(names) and len(names) == len(set(names))
    assert packed[0].startswith("# pack-refs with:") and " sorted" in packed[0]
    got = {t.split()[0] for t in tags(git_repo)}
    assert {f"scp-run/{r}" for r in ids} <= got
    for line in user_refs.splitlines():  # every ref of the user is unchanged
        name, oid = line.split()
        assert git(git_repo, "rev-parse", name).strip() == oid
    assert git(git_repo, "rev-parse", "v1.0^{}").strip() == git(git_repo, "rev-parse", "main").strip()
    for run_id in ids[::7]:  # each tag points at the commit that recorded its run
        commit = git(git_repo, "rev-parse", f"scp-run/{run_id}").strip()
        assert run_path(run_id) in git(git_repo, "show", "--name-only", "--format=", commit)
    git(git_repo, "pack-refs", "--all")  # git still reads and rewrites the file
    assert len(tags(git_repo)) == len(got)
    fsck(git_repo)
    assert user_state(git_repo) == before


def test_tags_left_out_by_a_killed_writer_are_created_by_the_next_write(
    git_repo: Path, monkeypatch: pytest.MonkeyPatch
):
    """Killed after the branch moved, holding packed-refs.lock: the next write repairs."""
    monkeypatch.setattr(tags_module, "PACKED_TAGS_MIN_BATCH", 1)
    before = user_state(git_repo)
    lock = git_repo / ".git" / "packed-refs.lock"

    def killed(git_dir: Path, refs: Any, **kwargs: Any) -> bool:
        lock.write_bytes(b"half-written")  # what a writer killed in add_packed_refs leaves
        raise KeyboardInterrupt("killed")

    first = [make_run(i) for i in range(4)]
    real_add_packed_refs = tags_module.add_packed_refs
    with GitStore(git_repo) as s:
        monkeypatch.setattr(tags_module, "add_packed_refs", killed)
        with pytest.raises(KeyboardInterrupt):
            s.write_batch([(r, []) for r in first])
    monkeypatch.setattr(tags_module, "add_packed_refs", real_add_packed_refs)
    with GitStore(git_repo) as s:
        assert s.contains(r["run_id"] for r in first) == {r["run_id"] for r in first}
    assert not [t for t in tags(git_repo) if t.startswith("scp-run/")]
    marker = git_repo / ".git" / "otel-runs" / "tags-pending.json"
    state = json.loads(marker.read_text())
    state["time"] -= 60  # the kill happened a minute ago: the lock it left is stale
    marker.write_text(json.dumps(state))
    os.utime(lock, (state["time"] + 1, state["time"] + 1))
    second = [make_run(10 + i) for i in range(3)]
    with GitStore(git_repo) as s:
        assert s.write_batch([(r, []) for r in second]) == 3
    assert not marker.exists() and not lock.exists()
    assert {t.split()[0] for t in tags(git_repo)} == {
        f"scp-run/{r['run_id']}" for r in first + second
    }
    from otel_runs.ledger._verify import verify_ledger

    assert verify_ledger(git_repo).problems == []
    fsck(git_repo)
    assert user_state(git_repo) == before


def test_a_busy_packed_refs_lock_falls_back_to_loose_tags(
    git_repo: Path, monkeypatch: pytest.MonkeyPatch
):
    """Someone else (the user's git) holds packed-refs.lock: wait a bit, then let update-ref
    create loose tags; never remove a lock that is not ours."""
    monkeypatch.setattr(tags_module, "PACKED_REFS_LOCK_TIMEOUT_S", 0.2)
    monkeypatch.setattr(tags_module, "PACKED_TAGS_MIN_BATCH", 1)
    before = user_state(git_repo)
    lock = git_repo / ".git" / "packed-refs.lock"
    lock.write_bytes(b"")
    runs = [make_run(i) for i in range(3)]
    with GitStore(git_repo) as s:
        assert s.write_batch([(r, []) for r in runs]) == 3
    assert lock.exists()
    lock.unlink()
    assert sorted(p.name for p in loose_run_tags(git_repo)) == sorted(r["run_id"] for r in runs)
    fsck(git_repo)
    assert user_state(git_repo) == before


def test_a_stale_loose_run_tag_is_replaced(git_repo: Path, monkeypatch: pytest.MonkeyPatch):
    """A loose tag wins over a packed one in git: one left by an older interrupted write must
    not shadow the tag of the commit that recorded the run."""
    before = user_state(git_repo)
    monkeypatch.setattr(tags_module, "PACKED_TAGS_MIN_BATCH", 1)
    run = make_run(1)
    git(git_repo, "update-ref", f"refs/tags/scp-run/{run['run_id']}", "main")
    with GitStore(git_repo) as s:
        assert s.write_batch([(run, []), (make_run(2), [])]) == 2
    commit = git(git_repo, "rev-parse", f"scp-run/{run['run_id']}").strip()
    assert commit == git(git_repo, "rev-parse", "scp-ledger").strip()
    fsck(git_repo)
    assert user_state(git_repo) == before


def test_small_batches_and_a_big_packed_refs_make_loose_tags(git_repo: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    """Rewriting packed-refs must stay a small share of a batch: a batch smaller than
    PACKED_TAGS_MIN_BATCH, or small next to the packed-refs file, gets loose tags."""
    monkeypatch.setattr(tags_module, "PACKED_TAGS_MIN_BATCH", 5)
    monkeypatch.setattr(tags_module, "PACKED_REFS_BYTES_PER_TAG", 100)
    with GitStore(git_repo) as s:
        small = [make_run(i) for i in range(4)]
        s.write_batch([(r, []) for r in small])
        assert len(loose_run_tags(git_repo)) == 4
        big = [make_run(10 + i) for i in range(6)]  # 600 bytes >= the file: packed
        s.write_batch([(r, []) for r in big])
        assert len(loose_run_tags(git_repo)) == 4
        git(git_repo, "pack-refs")
        for b in range(3):  # the file is now larger than 6 tags x 100 bytes: loose again
            s.write_batch([(make_run(100 + b * 10 + i), []) for i in range(6)])
        assert len(loose_run_tags(git_repo)) == 18
    assert len(tags(git_repo)) == 28
    fsck(git_repo)


def _packed_writer(repo: str, worker: int, batches: int, per_batch: int) -> None:
    tags_module.PACKED_TAGS_MIN_BATCH = 1  # every batch writes its tags into packed-refs
    with GitStore(repo) as s:
        for b in range(batches):
            runs = [make_run(worker * 1000 + b * per_batch + i,
                             at=BASE + timedelta(minutes=worker, seconds=b * per_batch + i))
                    for i in range(per_batch)]
            assert s.write_batch([(r, []) for r in runs]) == per_batch


def test_packed_tags_with_concurrent_writers_and_the_users_git(git_repo: Path):
    """4 processes write batches whose tags go into packed-refs while the user's git creates,
    packs and deletes refs: every run has exactly its tag, the user's refs are intact."""
    import multiprocessing

    before_head = git(git_repo, "rev-parse", "HEAD").strip()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_packed_writer, args=(str(git_repo), w, 6, 15)) for w in range(4)]
    for p in procs:
        p.start()
    n = 0
    while any(p.is_alive() for p in procs) and n < 200:  # bounded
        git(git_repo, "tag", f"user-{n}")
        if n % 3 == 0:
            git(git_repo, "pack-refs", "--all")
        if n % 5 == 4:
            git(git_repo, "tag", "-d", f"user-{n - 1}")
        n += 1
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    run_tags = [t for t in tags(git_repo) if t.startswith("scp-run/")]
    assert len(run_tags) == 4 * 6 * 15
    with GitStore(git_repo) as s:
        ids = [t.split()[0].removeprefix("scp-run/") for t in run_tags]
        assert s.contains(ids) == set(ids)
    user_tags = {t.split()[0] for t in tags(git_repo) if t.startswith("user-")}
    assert user_tags == {f"user-{i}" for i in range(n) if not (i % 5 == 3 and i + 1 < n)}
    from otel_runs.ledger._verify import verify_ledger

    assert verify_ledger(git_repo).problems == []
    fsck(git_repo)
    assert git(git_repo, "rev-parse", "HEAD").strip() == before_head
