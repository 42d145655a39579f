"""Reads that merge the runs not committed yet, of every process, with the branch.

:class:`Reading` is the read half of a :class:`~otel_runs.ledger.Ledger` (a mixin). A
read takes, in this order, each run once:

1. the pending runs of every Ledger of the same journal directory in this process
   (``_pending``: ``Ledger(root)`` and ``ledger_for(root)`` see the same runs);
2. the journals of every process (``_journal_view``, refreshed for this read): runs
   finished and maybe not committed, then the branch, then runs started and not
   finished (``running``, or ``interrupted`` once their process is found dead; a copy
   on the branch wins over those);
3. the branch. The journals are read before it: a segment is deleted only after its
   runs are on the branch, so no run falls between the two.

Records that cannot be read are skipped (the committer quarantines them).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._ids import validate_run_id
from .._model import Run
from ._filter import RunFilter, id_ms
from ._journal_view import JournalView, journal_view
from ._journal_view_read import Found, ViewRead
from ._pending import Pending, shared_entries, shared_entry
from ._tally import MAX_JOURNAL_COUNT, RunCounts, committed_in, tally_of

__all__ = ["Reading", "matches", "merge", "merge_iter", "pending_runs", "to_run"]

logger = logging.getLogger("otel_runs.ledger")
_PLAIN = re.compile(r"[a-z0-9_.:/-]+", re.ASCII)


def to_run(data: Any) -> Run | None:
    """``Run.from_dict(data)``, or None (with a warning) for data that is not a run."""
    try:
        return Run.from_dict(data)
    except (ValueError, TypeError) as exc:
        rid = data.get("run_id") if isinstance(data, dict) else None
        logger.warning("otel-runs: skipping unreadable run %r in the ledger: %s", rid, exc)
        return None


def _key(data: Any) -> str:
    return str(data.get("run_id", "")) if isinstance(data, dict) else ""


def pending_runs(entries: list[Pending]) -> Iterator[dict[str, Any]]:
    """The Run dicts of ``entries``, newest first (built as consumed; unreadable ones,
    which the committer quarantines, are left out)."""
    entries = sorted(entries, key=lambda e: e.run_id, reverse=True)
    for entry in entries:
        run = entry.readable_run()
        if run is not None:
            yield run


def matches(run: dict[str, Any], text: str) -> bool:
    """The store's search rule: every word of ``text`` is a run id prefix, part of
    the subtype, or starts a word of the summary (case-insensitive)."""
    words = text.lower().split()
    if not words:
        return False
    run_id = str(run.get("run_id", "")).lower()
    sub = str(run.get("subtype", "")).lower()
    summary_words = re.findall(r"\w[\w.:/-]*", str(run.get("summary", "")).lower())
    return all(run_id.startswith(w) or w in sub or any(sw.startswith(w) for sw in summary_words)
               for w in words)


def merge(mine: list[dict[str, Any]], stored: Iterable[dict[str, Any]], limit: int) -> list[Run]:
    """The newest ``limit`` runs of both (``stored`` newest first), each id once (this
    process's copy first)."""
    return list(itertools.islice(merge_iter(sorted(mine, key=_key, reverse=True), stored),
                                 limit))


def merge_iter(*sources: Iterable[dict[str, Any]]) -> Iterator[Run]:
    """All sources (each newest first), newest first, each id once: the copy of the
    earliest source wins."""
    seen: set[str] = set()
    for data in heapq.merge(*sources, key=_key, reverse=True):
        rid = _key(data)
        if rid in seen:
            continue
        seen.add(rid)
        run = to_run(data)
        if run is not None:
            yield run


def _split(found: Iterable[Found], committed: set[str]
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Journaled runs as ``(finished, open)`` dicts; open ones on the branch are left out."""
    done: list[dict[str, Any]] = []
    live: list[dict[str, Any]] = []
    for f in found:
        if f.finished:
            done.append(f.run)
        elif f.run_id not in committed:
            live.append(f.run)
    return done, live


class Reading:
    """``get``, ``spans``, ``recent``, ``counts``, ``search``, ``iter_runs`` (mixin of Ledger)."""

    journal_dir: Path
    store: Any

    def _pending_runs(self) -> Iterator[dict[str, Any]]:
        """This process's uncommitted runs of this ledger, newest first."""
        return pending_runs(shared_entries(str(self.journal_dir)))

    @property
    def journal_view(self) -> JournalView:
        """Every process's journal of this ledger (shared in this process)."""
        return journal_view(self.journal_dir)

    def _committed(self, found: list[Found]) -> set[str]:
        """Which open (start-only) journaled runs are on the branch after all."""
        opens = [f.run_id for f in found if not f.finished]
        return self.store.contains(opens) if opens else set()

    def get(self, run_id: str) -> Run | None:
        """The run with this id, or None (a running run too). Raises ``InvalidRunId``."""
        validate_run_id(run_id)
        entry = shared_entry(str(self.journal_dir), run_id)
        run = entry.readable_run() if entry is not None else None
        if run is not None:
            return to_run(run)
        with self.journal_view.read() as journal:
            found = journal.get(run_id)
        if found is not None and found.finished:
            return to_run(found.run)
        data = self.store.get(run_id)
        if data is not None:
            return to_run(data)
        return None if found is None else to_run(found.run)

    def spans(self, run_id: str) -> list[dict[str, Any]]:
        """The child spans recorded with the run (``span_to_dict`` records)."""
        validate_run_id(run_id)
        entry = shared_entry(str(self.journal_dir), run_id)
        if entry is not None and entry.readable_run() is not None:
            return list(entry.spans())
        with self.journal_view.read() as journal:
            spans = journal.spans(run_id)
        if spans is not None:
            return list(spans)
        return list(self.store.spans(run_id))

    def output(self, run_id: str) -> list[dict[str, Any]] | None:
        """The output lines of run ``run_id`` (``{"n", "t", "stream", "text"}``, and
        ``level``/``logger`` for log lines; a running run's so far, from any process of the
        host), oldest first; None if there is no such run. Raises ``InvalidRunId``."""
        validate_run_id(run_id)
        entry = shared_entry(str(self.journal_dir), run_id)
        if entry is not None and entry.readable_run() is not None:
            return entry.output()
        with self.journal_view.read() as journal:
            found = journal.get(run_id)
            if found is not None and found.finished:
                return journal.output(run_id) or []
            committed = self.store.output(run_id)
            if committed is not None:
                return committed
            return None if found is None else (journal.output(run_id) or [])

    def recent(self, limit: int = 50, type: str | None = None,  # noqa: A002 - API name
               status: str | None = None, before: str | None = None, *,
               subtype: str | None = None, since: datetime | None = None,
               until: datetime | None = None) -> list[Run]:
        """The newest ``limit`` runs, optionally of one type and/or status (``running``
        too: runs of any process of this host that have started and not ended); with
        ``before`` (a run id: raises ``InvalidRunId``), only runs older than that one;
        ``subtype``: runs whose subtype contains it (case-insensitive); ``since`` /
        ``until``: runs started at or after / before these times (naive: UTC; at the
        millisecond of the run id)."""
        if limit <= 0:
            return []
        flt = RunFilter.of(type, subtype, status, since, until,
                           None if before is None else validate_run_id(before))
        if flt.narrowed:
            return self._recent_in(limit, flt)
        mine = sorted(itertools.islice(
            (d for d in self._pending_runs() if (type is None or d.get("type") == type)
             and (status is None or d.get("status") == status)), limit), key=_key, reverse=True)
        with self.journal_view.read() as journal:
            found = journal.recent(limit, type, status)
        done, live = _split(found, self._committed(found))
        # Runs are committed when they end (or by recovery, as interrupted): running runs
        # come from the journals only, and the branch is not scanned for them (that would
        # read its whole history on every call).
        stored = [] if status == "running" else self.store.recent(limit=limit, type=type,
                                                                   status=status)
        return list(itertools.islice(merge_iter(mine, done, stored, live), limit))

    def _recent_in(self, limit: int, flt: RunFilter) -> list[Run]:
        """``recent`` of a subtype and/or an id range: the journals and the branch are
        walked from ``flt.hi`` down (the newer runs' blobs are not read) and stop at
        ``flt.lo``."""
        mine = sorted(itertools.islice((d for d in self._pending_runs() if flt.run_ok(d)),
                                       limit), key=_key, reverse=True)
        found: list[Found] = []
        with self.journal_view.read() as journal:
            finished = 0
            opens = False if flt.status == "running" else None  # running: open runs only
            for f in journal.runs(flt.type, finished=opens, lo=flt.lo, hi=flt.hi):
                if flt.run_ok(f.run):
                    found.append(f)
                    finished += f.finished
                    if finished >= limit:
                        break
        done, live = _split(found, self._committed(found))
        stored: list[dict[str, Any]] = [] if flt.status == "running" \
            else list(self.store.matching(flt, limit))
        return list(itertools.islice(merge_iter(mine, done, stored, live), limit))

    def counts(self, type: str | None = None,  # noqa: A002 - API name
               subtype: str | None = None, since: datetime | None = None,
               until: datetime | None = None, buckets: int = 0) -> RunCounts:
        """Runs per status of a type, subtype (part of it) and start time range (as
        :meth:`recent` takes them): the branch's from its :class:`RunTally` (no run is
        read), plus the runs not committed yet (running ones too), each run once. With
        ``buckets``, also per status in that many equal slices of the range (from
        ``since``, or the first such run, to ``until``, or the last one)."""
        flt = RunFilter.of(type, subtype, None, since, until)
        extra: dict[str, str] = {}  # run id -> status, of runs maybe not on the branch
        budget = MAX_JOURNAL_COUNT  # uncommitted runs read, at most
        for d in self._pending_runs():
            budget -= 1
            if budget < 0:
                break
            if flt.run_ok(d):
                extra.setdefault(_key(d), str(d.get("status")))
        with self.journal_view.read() as journal:  # before the branch (see the module)
            for f in journal.runs(flt.type, lo=flt.lo, hi=flt.hi) if budget >= 0 else ():
                budget -= 1
                if budget < 0:
                    break
                if f.run_id not in extra and flt.run_ok(f.run):
                    extra[f.run_id] = str(f.run.get("status"))
        tally = tally_of(self)
        tip, counts = tally.count(flt)
        if extra and tip is not None:
            for rid in committed_in(self.store, tip.tree, extra):
                del extra[rid]  # counted with the branch
        counts.update(extra.values())
        got = RunCounts(dict(counts), sum(counts.values()), budget >= 0)
        return _with_histogram(got, tally, flt, extra, buckets) if buckets > 0 else got

    def search(self, text: str, limit: int = 10) -> list[Run]:
        """Runs where every word of ``text`` is a run id prefix, part of the subtype
        or starts a word of the summary (case-insensitive); newest first."""
        if limit <= 0 or not text.split():
            return []
        mine = sorted(itertools.islice((d for d in self._pending_runs()
                                        if matches(d, text)), limit), key=_key, reverse=True)
        found: list[Found] = []
        # Words JSON writes as they are must be in a line that matches (those lines only
        # are decoded): every match is a substring of the run id, subtype or summary.
        needles = tuple(w.encode() for w in text.lower().split() if _PLAIN.fullmatch(w))
        with self.journal_view.read() as journal:
            finished = 0
            for f in journal.runs(needles=needles):
                if matches(f.run, text):
                    found.append(f)
                    finished += f.finished
                    if finished >= limit:
                        break
        done, live = _split(found, self._committed(found))
        stored = self.store.search(text, limit=limit)
        return list(itertools.islice(merge_iter(mine, done, stored, live), limit))

    def iter_runs(self, since: datetime | None = None,
                  type: str | None = None) -> Iterator[Run]:  # noqa: A002 - API name
        """Every run (started at or after ``since``, of ``type``), newest first."""
        since_iso = None
        if since is not None:
            if since.tzinfo is None:
                since = since.replace(tzinfo=timezone.utc)
            since_iso = since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        def wanted(d: dict[str, Any]) -> bool:
            return (type is None or d.get("type") == type) \
                and (since_iso is None or str(d.get("started_at", "")) >= since_iso)

        mine = sorted((d for d in self._pending_runs() if wanted(d)), key=_key, reverse=True)
        journal = self.journal_view.read()  # its segments stay readable while iterating
        try:
            opens = [f for f in journal.runs(type, finished=False) if wanted(f.run)]
            done = journal.runs(type, finished=True)  # taken now, decoded as consumed
            _, live = _split(opens, self._committed(opens))
        except BaseException:
            journal.close()
            raise
        return _iterate(self, journal, done, mine, live, wanted, since, type)


def _iterate(ledger: Reading, journal: ViewRead, done: Iterator[Found],
             mine: list[dict[str, Any]], live: list[dict[str, Any]],
             wanted: Callable[[dict[str, Any]], bool], since: datetime | None,
             rtype: str | None) -> Iterator[Run]:
    """``iter_runs``' merge (the branch is read from here on, after the journals)."""
    try:
        finished = (f.run for f in done if wanted(f.run))
        stored = ledger.store.iter_runs(since=since, type=rtype)
        yield from merge_iter(mine, finished, stored, live)
    finally:
        journal.close()


def _with_histogram(got: RunCounts, tally: Any, flt: RunFilter, extra: dict[str, str],
                    buckets: int) -> RunCounts:
    """``got`` with its runs per status in ``buckets`` equal slices of the filter's range
    (committed runs from the tally, then ``extra``: run id -> status of the others)."""
    span = tally.span(flt)
    extra_ms = [id_ms(rid) for rid in extra]
    firsts = [t for t in (span[0] if span else None, min(extra_ms, default=None)) if t is not None]
    lasts = [t for t in (span[1] if span else None, max(extra_ms, default=None)) if t is not None]
    if not firsts:
        return got._replace(histogram=[], start_ms=0, step_ms=0)
    lo = id_ms(flt.lo) if flt.lo else min(firsts)
    hi = id_ms(flt.hi) if flt.hi else max(lasts) + 1
    step = max(1, -(-(hi - lo) // buckets))  # (rounded up: the last slice ends at or past hi)
    edges = [lo + i * step for i in range(buckets + 1)]
    slices = tally.histogram(flt, edges)
    for rid, ms in zip(extra, extra_ms, strict=True):
        i = (ms - lo) // step
        if 0 <= i < buckets:
            slices[i][extra[rid]] += 1
    return got._replace(histogram=[dict(c) for c in slices], start_ms=lo, step_ms=step)
