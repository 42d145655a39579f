"""Scale benchmark of the git ledger store: does the cost stay flat as the ledger grows?

Side by side in one run, on tmp repositories:

* ``recent(50)`` and recording one batch (of 100: loose tags; of 2,000: tags written into
  packed-refs), with ``--small`` (1k) vs ``--runs`` (100k) runs already
  recorded, for two shapes: all runs on ONE day, and runs spread over a year (goal: ratio <= 1.5);
* the user's own ``git status`` with ``--runs`` runs vs an empty ledger (goal: ratio <= 3), and
  ``git log -1 --decorate`` for reference (no goal: git 2.39 reads every ref to decorate, so it
  grows with the run tags; see ``log.excludeDecoration`` in docs/ledger-storage.md).

Usage: ``python bench/scale.py [--runs 100000] [--small 1000] [--batch 100] [--big-batch 2000]
[--reps 9]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otel_runs._ids import new_run_id  # noqa: E402
from otel_runs.ledger._store import GitStore  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@example.com",
           "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@example.com"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True,
                          text=True).stdout


def user_repo(path: Path) -> Path:
    """A user project: 300 files, 20 commits on main, a dirty file and an untracked one."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for c in range(20):
        for f in range(15):
            d = path / f"pkg{f % 10}"
            d.mkdir(exist_ok=True)
            (d / f"mod{c}_{f}.py").write_text(f"x = {c * f}\n" * 20)
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", f"commit {c}")
    (path / "pkg0" / "mod0_0.py").write_text("dirty\n")
    (path / "notes.txt").write_text("untracked\n")
    return path


def run_dict(at: datetime, i: int) -> dict[str, Any]:
    return {
        "run_id": new_run_id(at), "type": "deploy", "subtype": "deploy:k8s", "status": "ok",
        "summary": f"deployed api build {i} to prod", "started_at": at.isoformat(),
        "ended_at": at.isoformat(), "duration_ms": 812.5, "metadata": {"build": i, "env": "prod"},
        "trace_id": "ab" * 16, "span_id": "cd" * 8, "parent_run_id": None, "service": "api",
        "events": [],
    }


class Timeline:
    """Run start times: all on one day, or spread over a year (chronological, like real use)."""

    def __init__(self, shape: str, total: int) -> None:
        span = timedelta(days=1) if shape == "one day" else timedelta(days=365)
        self.step = span / (total + 10_000)
        self.n = 0

    def next(self) -> datetime:
        self.n += 1
        return START + self.step * self.n


def fill(repo: Path, runs: int, timeline: Timeline, build_batch: int) -> GitStore:
    store = GitStore(repo, fsync=False, auto_maintenance=False)
    done = 0
    while done < runs:
        n = min(build_batch, runs - done)
        store.write_batch([(run_dict(timeline.next(), done + i), []) for i in range(n)])
        done += n
    store.maintenance()  # steady state: tags packed, packs rolled up
    return store


def median_time(fn: Callable[[], object], reps: int) -> float:
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def side_by_side(a: Callable[[], object], b: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median times of a and b, interleaved so machine noise hits both alike."""
    ta, tb = [], []
    for _ in range(reps):
        ta.append(median_time(a, 1))
        tb.append(median_time(b, 1))
    return statistics.median(ta), statistics.median(tb)


def report(label: str, small: float, big: float, goal: float, unit: str = "ms") -> bool:
    ratio = big / small if small else float("inf")
    ok = ratio <= goal
    print(f"  {label:<44} {small * 1e3:9.2f} {unit} {big * 1e3:9.2f} {unit}   ratio {ratio:5.2f}"
          f"  (goal <= {goal})  {'OK' if ok else 'MISSED'}")
    return ok


def scenario(shape: str, base: Path, empty: Path, args: argparse.Namespace) -> bool:
    """Measure one shape of ledger (all runs on one day, or over a year); True if goals met."""
    all_ok = True
    print(f"\n== {args.small:,} vs {args.runs:,} runs recorded, all on {shape} ==")
    t0 = time.perf_counter()
    tl_small, tl_big = Timeline(shape, args.small), Timeline(shape, args.runs)
    small = fill(user_repo(base / f"small-{shape}"), args.small, tl_small, args.build_batch)
    big_repo = user_repo(base / f"big-{shape}")
    big = fill(big_repo, args.runs, tl_big, args.build_batch)
    print(f"  (filled in {time.perf_counter() - t0:.1f} s; columns: {args.small:,} | {args.runs:,})")
    for store, tl in ((small, tl_small), (big, tl_big)):  # steady state: normal-size batches on top
        for _ in range(3):
            store.write_batch([(run_dict(tl.next(), i), []) for i in range(args.batch)])
    all_ok &= report("recent(50), warm store", *side_by_side(
        lambda: small.recent(50), lambda: big.recent(50), args.reps * 3), goal=1.5)

    def cold_recent(store: GitStore) -> Callable[[], object]:
        def go() -> object:
            with GitStore(store.git_dir, fsync=False) as s:
                return s.recent(50)
        return go

    all_ok &= report("recent(50), new store (spawns cat-file)", *side_by_side(
        cold_recent(small), cold_recent(big), args.reps), goal=1.5)
    assert len(big.recent(50)) == 50

    def one_batch(store: GitStore, tl: Timeline) -> Callable[[], object]:
        def go() -> object:
            store._commit_cache.clear()  # as if another process wrote the previous commit
            items = [(run_dict(tl.next(), i), []) for i in range(args.batch)]
            assert store.write_batch(items) == args.batch
            return None
        return go

    all_ok &= report(f"record one batch of {args.batch} (cold commit cache)", *side_by_side(
        one_batch(small, tl_small), one_batch(big, tl_big), args.reps), goal=1.5)

    def warm_batch(store: GitStore, tl: Timeline) -> Callable[[], object]:
        def go() -> object:
            items = [(run_dict(tl.next(), i), []) for i in range(args.batch)]
            return store.write_batch(items)
        return go

    report(f"record one batch of {args.batch} (warm, one writer)", *side_by_side(
        warm_batch(small, tl_small), warm_batch(big, tl_big), args.reps), goal=1.5)

    def big_batch(store: GitStore, tl: Timeline) -> Callable[[], object]:
        def go() -> object:  # a committer's full batch: its tags go straight into packed-refs
            store._commit_cache.clear()
            items = [(run_dict(tl.next(), i), []) for i in range(args.big_batch)]
            assert store.write_batch(items) == args.big_batch
            return None
        return go

    all_ok &= report(f"record one batch of {args.big_batch:,} (tags into packed-refs)",
                     *side_by_side(big_batch(small, tl_small), big_batch(big, tl_big), 5),
                     goal=1.5)
    report("maintenance() (pack-refs + repack + gc --auto)", *side_by_side(
        small.maintenance, big.maintenance, 3), goal=float("inf"))
    small.close()
    big.close()
    print(f"  user's git commands: empty ledger | {args.runs:,}+ runs ({shape})")
    report("git log -1 --decorate (reference, no goal)", *side_by_side(
        lambda: git(empty, "log", "-1", "--decorate"),
        lambda: git(big_repo, "log", "-1", "--decorate"), args.reps * 2), goal=float("inf"))
    all_ok &= report("git status", *side_by_side(
        lambda: git(empty, "status"), lambda: git(big_repo, "status"), args.reps * 2), goal=3)
    report("git tag -l (reference, no goal)", *side_by_side(
        lambda: git(empty, "tag", "-l"), lambda: git(big_repo, "tag", "-l"), 5),
        goal=float("inf"))
    return all_ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100_000, help="runs in the big ledger")
    ap.add_argument("--small", type=int, default=1_000, help="runs in the small ledger")
    ap.add_argument("--batch", type=int, default=100, help="runs per measured batch")
    ap.add_argument("--big-batch", type=int, default=2_000,
                    help="runs per measured big batch (the committer's MAX_BATCH)")
    ap.add_argument("--build-batch", type=int, default=5_000, help="runs per batch while filling")
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    all_ok = True
    with tempfile.TemporaryDirectory(prefix="otel-runs-scale-") as tmp:
        base = Path(tmp)
        empty = user_repo(base / "empty")
        GitStore(empty).close()
        for shape in ("one day", "year"):
            all_ok &= scenario(shape, base, empty, args)
    print("\nall goals met" if all_ok else "\nsome goals MISSED (see above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
