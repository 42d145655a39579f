"""``RunTally``: the ledger branch's runs by type, subtype, status and start time, to count
any filter of the runs list without reading a run.

Kept from the commits' index lines as :class:`~otel_runs.ledger.RunCensus` is (the first
count reads the history's messages once, in one ``git log``; later ones read only the
commits added since). Per
``(type, subtype, status)`` it keeps the start times of its runs (from their ids, in ms)
in one sorted array: 8 bytes a run (300,000 runs: ~2.4 MB), and a count of any time range
is two binary searches per key, whatever the size of the ledger.
"""

from __future__ import annotations

import bisect
import os
import re
import threading
from array import array
from collections import Counter
from collections.abc import Iterable
from typing import Any, NamedTuple

from .._ids import RUN_ID_PATTERN
from ._census import BranchWalk
from ._errors import LedgerError
from ._filter import RunFilter, id_ms
from ._git import run_lines
from ._layout import IndexLine, run_dir

__all__ = ["MAX_JOURNAL_COUNT", "RunCounts", "RunTally", "committed_in", "tally_of"]

#: Most journaled runs (not committed yet) one count reads; past it the count is a
#: lower bound (``RunCounts.exact`` false).
MAX_JOURNAL_COUNT = 20_000

#: An index line (see ``_layout``) in ``git log`` output: id, status, type, subtype.
_INDEX_LINE = re.compile(rb"^(" + RUN_ID_PATTERN.encode() + rb")\t([^\t\n]*)\t([^\t\n]*)"
                         rb"\t([^\t\n]*)", re.MULTILINE)

_Key = tuple[str, str, str]  # (type, subtype as the index line says it, status)


class RunCounts(NamedTuple):
    """Runs per status of a filter; ``exact`` false: at least these (a cap was hit).
    With buckets asked for: ``histogram[i]`` counts per status the runs started in
    ``[start_ms + i * step_ms, start_ms + (i + 1) * step_ms)``."""

    counts: dict[str, int]
    total: int
    exact: bool
    histogram: list[dict[str, int]] | None = None
    start_ms: int = 0
    step_ms: int = 0


class RunTally(BranchWalk):
    """Committed runs of one ledger, counted per filter (thread-safe)."""

    def __init__(self, ledger: Any) -> None:
        super().__init__(ledger)
        self.pid = os.getpid()
        self._times: dict[_Key, array[int]] = {}
        self._runs = 0

    def _reset(self) -> None:
        self._times = {}
        self._runs = 0

    def _add(self, lines: Iterable[IndexLine]) -> None:
        self._add_fields((ln.run_id, ln.status, ln.type, ln.subtype) for ln in lines)

    def _add_fields(self, runs: Iterable[tuple[str, str, str, str]]) -> None:
        """Count ``(run id, status, type, subtype)`` of runs."""
        unsorted: set[_Key] = set()
        times_of = self._times
        n = 0
        for run_id, status, rtype, subtype in runs:
            key = (rtype, subtype, status)
            times = times_of.get(key)
            if times is None:
                times = times_of[key] = array("q")
            ms = id_ms(run_id)
            if times and ms < times[-1]:
                unsorted.add(key)  # (newest first from git log; a long run committed late)
            times.append(ms)
            n += 1
        self._runs += n
        for key in unsorted:  # one sort per key and call, not one insert per run
            times_of[key] = array("q", sorted(times_of[key]))

    def _total(self) -> int:
        return self._runs

    def _count_all(self, store: Any, tip: Any) -> None:
        """Every run of a history without merges from one ``git log`` of the commit
        messages (each run is in one commit: first write wins); with merges, through the
        store's walk (which takes each run once)."""
        oid = tip.oid.hex()
        if run_lines(store.git_dir, "rev-list", "--min-parents=2", "--max-count=1", oid).strip():
            super()._count_all(store, tip)
            return
        try:
            data = run_lines(store.git_dir, "log", "--format=%B", oid)
        except LedgerError:
            super()._count_all(store, tip)
            return
        self._reset()
        self._add_fields((m.group(1).decode("ascii"), _text(m.group(2)), _text(m.group(3)),
                          _text(m.group(4))) for m in _INDEX_LINE.finditer(data))
        self.full_counts += 1

    def count(self, flt: RunFilter) -> tuple[Any, Counter[str]]:
        """``(tip commit or None, runs per status)`` of the committed runs of ``flt``
        (its type, subtype and time range; its status is ignored), as of the current tip."""
        with self._lock:
            tip = self._refresh()
            lo = id_ms(flt.lo) if flt.lo else None
            hi = id_ms(flt.hi) if flt.hi else None
            out: Counter[str] = Counter()
            for (rtype, subtype, status), times in self._times.items():
                if not flt.key_ok(rtype, subtype):
                    continue
                start = 0 if lo is None else bisect.bisect_left(times, lo)
                end = len(times) if hi is None else bisect.bisect_left(times, hi)
                if end > start:
                    out[status] += end - start
            return tip, out

    def span(self, flt: RunFilter) -> tuple[int, int] | None:
        """``(first, last)`` start time (ms) of the committed runs of ``flt``'s type and
        subtype (None: none), as of the last refresh."""
        with self._lock:
            firsts = [(times[0], times[-1]) for (rtype, subtype, _), times in self._times.items()
                      if times and flt.key_ok(rtype, subtype)]
        if not firsts:
            return None
        return min(f for f, _ in firsts), max(last for _, last in firsts)

    def histogram(self, flt: RunFilter, edges: list[int]) -> list[Counter[str]]:
        """Runs per status of ``flt`` (type and subtype) started in each ``[edges[i],
        edges[i + 1])`` (ms; ascending), as of the last refresh: binary searches only."""
        out: list[Counter[str]] = [Counter() for _ in range(len(edges) - 1)]
        with self._lock:
            for (rtype, subtype, status), times in self._times.items():
                if not times or not flt.key_ok(rtype, subtype):
                    continue
                at = [bisect.bisect_left(times, edge) for edge in edges]
                for i in range(len(out)):
                    if at[i + 1] > at[i]:
                        out[i][status] += at[i + 1] - at[i]
        return out


def committed_in(store: Any, tree: str, run_ids: Iterable[str]) -> set[str]:
    """Which of ``run_ids`` (well-formed) tree ``tree`` of the branch holds: their
    directories are looked up (a small tree object each), their files are not read."""
    ids = list(run_ids)
    if not ids:
        return set()
    with store._read_lock:
        got = store._cat().read_many([f"{tree}:{'/'.join(run_dir(r))}" for r in ids])
    return {r for r, g in zip(ids, got, strict=True) if g is not None and g[1] == "tree"}


def _text(field: bytes) -> str:
    return field.decode("utf-8", "replace")


def tally_of(ledger: Any) -> RunTally:
    """The :class:`RunTally` of ``ledger`` (one per ledger and process, made on first use)."""
    tally = ledger.__dict__.get("_run_tally")
    if tally is None or tally.pid != os.getpid():
        with _lock:
            tally = ledger.__dict__.get("_run_tally")
            if tally is None or tally.pid != os.getpid():
                tally = ledger.__dict__["_run_tally"] = RunTally(ledger)
    return tally



_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
