"""Size benchmark of the git ledger: bytes of ``.git`` per run after ``git gc``.

Records ``--runs`` realistic runs (summary, metadata, two events; optionally child spans) through
GitStore in batches of ``--batch`` (one commit + one tag per run, like the background committer),
then runs ``git gc`` and divides the growth of ``.git`` by the number of runs. Goal: <= 1.5 KB/run.

Usage: ``python bench/size.py [--runs 20000] [--batch 50] [--spans 3]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otel_runs._ids import new_run_id  # noqa: E402
from otel_runs.ledger._store import GitStore  # noqa: E402

START = datetime(2026, 3, 1, tzinfo=timezone.utc)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(i: int, at: datetime) -> dict[str, Any]:
    ts = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "run_id": new_run_id(at), "type": "deploy", "subtype": "deploy:k8s",
        "status": "ok" if i % 7 else "failed",
        "summary": f"Deployed api build {1000 + i} to prod (3 replicas)",
        "started_at": ts, "ended_at": ts, "duration_ms": 812.0 + i % 300,
        "metadata": {"build": 1000 + i, "env": "prod", "replicas": 3, "user": "alice"},
        "trace_id": os.urandom(16).hex(), "span_id": os.urandom(8).hex(), "parent_run_id": None,
        "service": "control-plane",
        "events": [{"name": "step", "timestamp": ts, "attributes": {"step": "build"}},
                   {"name": "step", "timestamp": ts, "attributes": {"step": "rollout"}}],
    }


def child(i: int, k: int) -> dict[str, Any]:
    return {"name": f"kubectl apply {k}", "trace_id": "ab" * 16, "span_id": os.urandom(8).hex(),
            "parent_span_id": "cd" * 8, "kind": "CLIENT", "start_time_ns": 1_700_000_000_000 + i,
            "end_time_ns": 1_700_000_900_000 + i, "status": "OK", "status_description": None,
            "attributes": {"run.id": "x", "http.status_code": 200}, "events": [], "scope": "k8s"}


def measure(runs: int, batch: int, spans: int) -> float:
    with tempfile.TemporaryDirectory(prefix="otel-runs-size-") as tmp:
        repo = Path(tmp)
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        before = du(repo / ".git")
        step = timedelta(days=30) / runs
        with GitStore(repo, fsync=False) as store:
            for start in range(0, runs, batch):
                items = [(run(i, START + step * i), [child(i, k) for k in range(spans)])
                         for i in range(start, min(runs, start + batch))]
                store.write_batch(items)
        raw = du(repo / ".git") - before
        subprocess.run(["git", "-C", str(repo), "gc", "-q"], check=True)
        after = du(repo / ".git") - before
        print(f"  runs={runs:,} batch={batch} spans/run={spans}: before gc {raw / runs:7.0f} B/run,"
              f" after gc {after / runs:6.0f} B/run  (goal <= 1536)  {'OK' if after / runs <= 1536 else 'MISSED'}")
        return after / runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--spans", type=int, default=3, help="child spans per run in the second case")
    args = ap.parse_args()
    print("bytes of .git per run after git gc (run.json ~700 B raw; one tag and one index line per run)")
    measure(args.runs, args.batch, 0)
    measure(args.runs, args.batch, args.spans)
    measure(args.runs, 1 if args.runs <= 2000 else 10, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
