"""Ledger maintenance: git's own ``pack-refs``, ``repack --geometric`` and ``gc --auto``,
run now and then by the writers (plumbing never triggers auto-gc itself).

The cadence is counted across processes in ``.git/otel-runs/maintenance.json`` (under the write
lock): ``pack-refs`` every max(1,000, packed tags / 20) runs with loose tags, so its cost per
run stays flat; ``repack -d --geometric=2`` every 20 commits; ``gc --auto`` every 250.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING

from ._errors import LedgerError

if TYPE_CHECKING:
    from ._store import GitStore

__all__ = ["GC_AUTO_EVERY_COMMITS", "PACK_REFS_EVERY_RUNS", "REPACK_EVERY_COMMITS",
           "count_and_maintain", "maintain_now"]

logger = logging.getLogger("otel_runs")

#: Maintenance cadence (per ledger, counted across processes under the write lock).
PACK_REFS_EVERY_RUNS = 1_000
REPACK_EVERY_COMMITS = 20
GC_AUTO_EVERY_COMMITS = 250


def count_and_maintain(store: GitStore, runs: int) -> None:
    """Count commits/runs across processes (we hold the flock) and maintain when due."""
    state_file = store.private_dir / "maintenance.json"
    try:
        state = json.loads(state_file.read_text())
        commits, loose_runs = int(state["commits"]), int(state["loose_runs"])
    except (OSError, ValueError, KeyError, TypeError):
        commits, loose_runs = 0, 0
    commits += 1
    loose_runs += runs
    try:
        try:  # pack-refs rewrites every packed tag: keep its amortized cost per run flat
            packed = (store.git_dir / "packed-refs").stat().st_size // 80
        except OSError:
            packed = 0
        due = max(PACK_REFS_EVERY_RUNS, packed // 20)
        if store.tag_prefix is not None and loose_runs >= due:
            store._run_git("pack-refs")
            loose_runs = 0
        if commits % REPACK_EVERY_COMMITS == 0:
            store._run_git("repack", "-d", "-q", "--geometric=2")
        if commits % GC_AUTO_EVERY_COMMITS == 0:
            store._run_git("gc", "--auto", "--quiet")
    except LedgerError as exc:
        logger.warning("ledger maintenance failed (the ledger is fine): %s", exc)
    try:
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"commits": commits, "loose_runs": loose_runs}))
        os.replace(tmp, state_file)
    except OSError as exc:
        logger.warning("ledger maintenance state not saved (the ledger is fine): %s", exc)


def maintain_now(store: GitStore) -> None:
    """All three now (the caller holds the write locks)."""
    store._run_git("pack-refs")
    store._run_git("repack", "-d", "-q", "--geometric=2")
    store._run_git("gc", "--auto", "--quiet")
