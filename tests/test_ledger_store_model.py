"""Model-based test of the git store: random batches against a model of the branch.

Every step writes a batch (new runs whose ids are crafted to collide in buckets, replays of runs
already written, repeats within the batch) through one of two stores of the same repository,
with a one-digit bucket fan-out (16 buckets a day instead of 65,536) and a one-entry commit
cache, so collisions and evictions happen on every step. After each step: the branch holds
exactly the model's runs, every run tag points at a commit holding its run, the tip's run count
trailer is right, and ``git fsck --strict`` is clean.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

from conftest import git
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from otel_runs.ledger import _layout, _store_read, _tags
from otel_runs.ledger._layout import run_path
from otel_runs.ledger._store import GitStore

DAYS = ("20261130", "20261201")


def run_id(day: int, ms: int, suffix: int) -> str:
    """A run id on one of two days, at one of a few milliseconds (ids collide in buckets)."""
    return f"{DAYS[day]}T1015{ms % 60:02d}{ms % 1000:03d}Z-{suffix:010x}"


def make_run(rid: str, n: int) -> dict[str, Any]:
    return {"run_id": rid, "type": "deploy", "subtype": "deploy:k8s", "status": "ok",
            "summary": f"run {n}", "started_at": "2026-12-01T10:15:00.000000Z",
            "ended_at": None, "duration_ms": 1.5, "metadata": {"n": n}, "trace_id": "",
            "span_id": "", "parent_run_id": None, "service": "model", "events": []}


ids = st.builds(run_id, st.integers(0, 1), st.integers(0, 3), st.integers(0, 40))


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._saved = (_layout.BUCKET_DIGITS, _store_read.COMMIT_CACHE_SIZE,
                       _tags.PACKED_TAGS_MIN_BATCH, _tags.PACKED_REFS_BYTES_PER_TAG)
        _layout.BUCKET_DIGITS = 1
        _store_read.COMMIT_CACHE_SIZE = 1
        _tags.PACKED_REFS_BYTES_PER_TAG = 1
        self.tmp = tempfile.TemporaryDirectory()
        self.repo = Path(self.tmp.name) / "project"
        self.repo.mkdir()
        git(self.repo, "init", "-q", "-b", "main")
        git(self.repo, "commit", "-q", "--allow-empty", "-m", "init")
        self.stores = [GitStore(self.repo, fsync=False), GitStore(self.repo, fsync=False)]
        self.model: dict[str, int] = {}  # run id -> n of the first write
        self.n = 0

    def teardown(self) -> None:
        for store in self.stores:
            store.close()
        self.tmp.cleanup()
        (_layout.BUCKET_DIGITS, _store_read.COMMIT_CACHE_SIZE, _tags.PACKED_TAGS_MIN_BATCH,
         _tags.PACKED_REFS_BYTES_PER_TAG) = self._saved

    @rule(batch=st.lists(ids, min_size=1, max_size=40), which=st.integers(0, 1),
          replay=st.integers(0, 5), packed=st.booleans())
    def write(self, batch: list[str], which: int, replay: int, packed: bool) -> None:
        _tags.PACKED_TAGS_MIN_BATCH = 1 if packed else 10_000
        items = []
        for rid in batch + list(self.model)[:replay]:
            self.n += 1
            items.append((make_run(rid, self.n), [{"name": "child", "n": self.n}]
                          if self.n % 2 else []))
        # first write wins, within a batch too
        expected = {}
        for run, _ in items:
            rid = run["run_id"]
            if rid not in self.model and rid not in expected:
                expected[rid] = run["metadata"]["n"]
        assert self.stores[which].write_batch(items) == len(expected)
        self.model.update(expected)

    @rule(which=st.integers(0, 1), data=st.data())
    def read(self, which: int, data: st.DataObject) -> None:
        store = self.stores[which]
        if self.model:
            rid = data.draw(st.sampled_from(sorted(self.model)))
            got = store.get(rid)
            assert got is not None and got["metadata"]["n"] == self.model[rid]
        newest = [r["run_id"] for r in store.recent(5)]
        assert newest == sorted(self.model, reverse=True)[:5]

    @invariant()
    def branch_holds_exactly_the_model(self) -> None:
        if not self.model:
            return
        names = git(self.repo, "ls-tree", "-r", "--name-only", "scp-ledger").split()
        runs = [n.rsplit("/", 2)[-2] for n in names if n.endswith("/run.json")]
        assert sorted(runs) == sorted(self.model)
        assert all(n == run_path(n.rsplit("/", 2)[-2], n.rsplit("/", 1)[-1]) for n in names)
        tags = git(self.repo, "for-each-ref", "--format=%(refname:strip=3)",
                   "refs/tags/scp-run/").split()
        assert sorted(tags) == sorted(self.model)
        query = "".join(f"scp-run/{r}:{run_path(r)}\n" for r in tags)
        out = subprocess.run(["git", "cat-file", "--batch-check"], cwd=self.repo, input=query,
                             capture_output=True, text=True, check=True).stdout
        assert "missing" not in out and out.count(" blob ") == len(tags)
        tip = git(self.repo, "log", "-1", "--format=%B", "scp-ledger")
        assert f"Otel-Runs-Count: {len(self.model)}" in tip
        subprocess.run(["git", "fsck", "--strict", "--no-dangling", "--no-progress"],
                       cwd=self.repo, check=True, capture_output=True)


StoreModel.TestCase.settings = settings(max_examples=25, stateful_step_count=8, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
TestStoreModel = StoreModel.TestCase
