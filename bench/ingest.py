"""Ingest throughput: runs recorded durably per second, shipped path vs a naive one.

    python bench/ingest.py [--runs 6000] [--naive 200] [--seconds 20] [--durability journal]
                           [--existing 100000] [--turns 3] [--turn-runs 4000]

In one process, on fresh git repositories in a temp dir:
  shipped  ``tracked_run`` end to end through ``configure()``: each run is durable
           (journaled) when its block exits; a background thread commits batches.
           Reported twice: runs/s until the last block exited (durable), and
           runs/s until the last run was committed to the branch (``flush()``).
  naive    the same runs (their Run dicts, read back from the shipped ledger),
           one commit + one tag per run through gitpython (blob via the object
           database, a private index file, write-tree, Commit.create_from_tree
           with explicit parents, update-ref with the old value, create_tag).
Prints runs/s of each and the ratios (goals: shipped >= 40x naive, >= 3,000 runs/s
end to end on 2 cores), and the committed throughput on an empty ledger vs one with
``--existing`` (100k) runs already, taking turns (goal: within 1.5x). Loops are bounded by count and by ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import git  # noqa: E402
from git.objects import Commit, Tree  # noqa: E402
from gitdb import IStream  # noqa: E402

import otel_runs  # noqa: E402
from otel_runs.ledger import ledger_for  # noqa: E402


def new_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com"}
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "README.md").write_text("bench\n")
    subprocess.run(["git", "-C", str(path), "add", "README.md"], check=True)
    subprocess.run(["git", "-C", str(path), "commit", "-q", "-m", "init"], check=True, env=env)
    return path


def shipped(repo: Path, runs: int, seconds: float, durability: str) -> dict[str, float]:
    otel_runs.configure(repo, durability=durability)
    ledger = ledger_for(repo)
    ledger.flush()
    start = time.perf_counter()
    deadline = start + seconds
    n = 0
    while n < runs and time.perf_counter() < deadline:
        with otel_runs.tracked_run(repo, "deploy", "deploy:k8s", summary=f"rolled out web #{n}",
                                   replicas=3, image="registry.local/web:1.4.2") as run:
            run.add_event("applied", objects=3)
        n += 1
    durable = time.perf_counter() - start
    assert ledger.flush(600), "not everything was committed"
    committed = time.perf_counter() - start
    return {"runs": n, "durable_s": durable, "committed_s": committed}


def prefill(repo: Path, runs: int) -> None:
    """``runs`` runs already on the ledger (written through the store in batches of 5,000)."""
    from otel_runs._ids import new_run_id
    from otel_runs.ledger._store import GitStore

    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    with GitStore(repo, fsync=False) as store:
        for first in range(0, runs, 5_000):
            batch = []
            for i in range(first, min(first + 5_000, runs)):
                batch.append(({"run_id": new_run_id(start + timedelta(seconds=i)),
                               "type": "deploy", "subtype": "deploy:k8s", "status": "ok",
                               "summary": f"earlier run {i}", "started_at": "", "ended_at": None,
                               "duration_ms": 1.0, "metadata": {}, "trace_id": "",
                               "span_id": "", "parent_run_id": None, "service": "bench",
                               "events": []}, []))
            store.write_batch(batch)
        store.maintenance()


def naive(repo: Path, items: list[dict[str, Any]]) -> float:
    """One commit + one tag per run through gitpython; returns seconds."""
    r = git.Repo(repo)
    index_file = Path(r.git_dir) / "naive-index"
    env = {"GIT_INDEX_FILE": str(index_file)}
    ref = "refs/heads/naive-ledger"
    parent: Commit | None = None
    start = time.perf_counter()
    for run in items:
        data = json.dumps(run, indent=2, sort_keys=True).encode()
        blob_sha = r.odb.store(IStream("blob", len(data), BytesIO(data))).binsha.hex()
        rid = run["run_id"]
        path = f"ledger/runs/{rid[:4]}/{rid[4:6]}/{rid[6:8]}/{rid}/run.json"
        r.git.update_index("--add", "--cacheinfo", f"100644,{blob_sha},{path}", env=env)
        tree_sha = r.git.write_tree(env=env)
        commit = Commit.create_from_tree(r, Tree.new(r, tree_sha), f"run {rid}",
                                         parent_commits=[parent] if parent else [], head=False)
        old = parent.hexsha if parent else "0" * 40
        r.git.update_ref(ref, commit.hexsha, old)
        r.create_tag(f"naive-run/{rid}", ref=commit)
        parent = commit
    elapsed = time.perf_counter() - start
    r.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6000)
    parser.add_argument("--naive", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0, help="bound on the shipped loop")
    parser.add_argument("--durability", choices=("journal", "fsync"), default="journal")
    parser.add_argument("--existing", type=int, default=100_000,
                        help="runs already on the ledger for the scale comparison")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--turn-runs", type=int, default=4_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.pop("OTEL_RUNS_COMMIT_INTERVAL", None)

    tmp = Path(tempfile.mkdtemp(prefix="otel-runs-ingest-"))
    got = shipped(new_repo(tmp / "shipped"), args.runs, args.seconds, args.durability)
    ledger = ledger_for(tmp / "shipped")
    items = [r.to_dict() for r, _ in zip(ledger.iter_runs(), range(args.naive), strict=False)]
    otel_runs.shutdown()
    naive_s = naive(new_repo(tmp / "naive"), items)

    # Committed throughput with --existing runs already on the ledger vs an empty one, taking
    # turns (empty, full, empty, full, ...) so the machine's noise hits both alike.
    full_repo = new_repo(tmp / "full")
    t0 = time.perf_counter()
    prefill(full_repo, args.existing)
    print(f"(prefilled {args.existing:,} runs in {time.perf_counter() - t0:.0f} s)")
    empty_rates: list[float] = []
    full_rates: list[float] = []
    for turn in range(args.turns):
        for repo, rates in ((new_repo(tmp / f"empty-{turn}"), empty_rates), (full_repo, full_rates)):
            r = shipped(repo, args.turn_runs, args.seconds, args.durability)
            rates.append(r["runs"] / r["committed_s"])
            otel_runs.shutdown()
    empty_rate, full_rate = statistics.median(empty_rates), statistics.median(full_rates)

    n = got["runs"]
    durable_rate = n / got["durable_s"]
    committed_rate = n / got["committed_s"]
    naive_rate = len(items) / naive_s
    print(f"shipped ({args.durability}): {n} runs through tracked_run")
    print(f"  durable (journaled, block exited): {durable_rate:8.0f} runs/s")
    print(f"  committed to the branch (+flush):  {committed_rate:8.0f} runs/s")
    print(f"naive gitpython, one commit + tag per run: {len(items)} runs, {naive_rate:6.1f} runs/s")
    print(f"ratio durable/naive   = {durable_rate / naive_rate:6.1f}x  (goal >= 40x)")
    print(f"ratio committed/naive = {committed_rate / naive_rate:6.1f}x  (goal >= 40x)")
    print(f"end to end (durable) {durable_rate:.0f} runs/s (goal >= 3000 on 2 cores)")
    print(f"committed runs/s, {args.turns} turns of {args.turn_runs:,}: empty ledger "
          f"{empty_rate:.0f}, {args.existing:,} runs already {full_rate:.0f}: empty/full = "
          f"{empty_rate / full_rate:.2f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
