"""Reads that merge this process's not-yet-committed runs with the branch.

:class:`Reading` is the read half of a :class:`~otel_runs.ledger.Ledger` (a mixin): it
reads the pending runs of every Ledger of the same journal directory in this
process (``_pending``), so ``Ledger(root)`` and ``ledger_for(root)`` see the same
runs, and skips records that cannot be read (the committer quarantines them).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._ids import validate_run_id
from .._model import Run
from ._pending import Pending, shared_entries, shared_entry

__all__ = ["Reading", "matches", "merge", "merge_iter", "pending_runs", "to_run"]

logger = logging.getLogger("otel_runs.ledger")


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


def merge_iter(mine: list[dict[str, Any]], stored: Iterable[dict[str, Any]]) -> Iterator[Run]:
    """Both, newest first (``stored`` is newest first too), each id once."""
    seen: set[str] = set()
    for data in heapq.merge(mine, stored, key=_key, reverse=True):
        rid = _key(data)
        if rid in seen:
            continue
        seen.add(rid)
        run = to_run(data)
        if run is not None:
            yield run


class Reading:
    """``get``, ``spans``, ``recent``, ``search``, ``iter_runs`` (mixin of Ledger)."""

    journal_dir: Path
    store: Any

    def _pending_runs(self) -> Iterator[dict[str, Any]]:
        """This process's uncommitted runs of this ledger, newest first."""
        return pending_runs(shared_entries(str(self.journal_dir)))

    def get(self, run_id: str) -> Run | None:
        """The run with this id, or None. Raises ``InvalidRunId`` for a bad id."""
        validate_run_id(run_id)
        entry = shared_entry(str(self.journal_dir), run_id)
        run = entry.readable_run() if entry is not None else None
        if run is not None:
            return to_run(run)
        data = self.store.get(run_id)
        return None if data is None else to_run(data)

    def spans(self, run_id: str) -> list[dict[str, Any]]:
        """The child spans recorded with the run (``span_to_dict`` records)."""
        validate_run_id(run_id)
        entry = shared_entry(str(self.journal_dir), run_id)
        if entry is not None and entry.readable_run() is not None:
            return list(entry.spans())
        return list(self.store.spans(run_id))

    def recent(self, limit: int = 50, type: str | None = None,  # noqa: A002 - API name
               status: str | None = None) -> list[Run]:
        """The newest ``limit`` runs, optionally of one type and/or status."""
        if limit <= 0:
            return []
        mine = list(itertools.islice(
            (d for d in self._pending_runs() if (type is None or d.get("type") == type)
             and (status is None or d.get("status") == status)), limit))
        stored = self.store.recent(limit=limit, type=type, status=status)
        return merge(mine, stored, limit)

    def search(self, text: str, limit: int = 10) -> list[Run]:
        """Runs where every word of ``text`` is a run id prefix, part of the subtype
        or starts a word of the summary (case-insensitive); newest first."""
        if limit <= 0 or not text.split():
            return []
        mine = list(itertools.islice((d for d in self._pending_runs()
                                      if matches(d, text)), limit))
        stored = self.store.search(text, limit=limit)
        return merge(mine, stored, limit)

    def iter_runs(self, since: datetime | None = None,
                  type: str | None = None) -> Iterator[Run]:  # noqa: A002 - API name
        """Every run (started at or after ``since``, of ``type``), newest first."""
        since_iso = None
        if since is not None:
            if since.tzinfo is None:
                since = since.replace(tzinfo=timezone.utc)
            since_iso = since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        mine = [d for d in self._pending_runs()
                if (type is None or d.get("type") == type)
                and (since_iso is None or str(d.get("started_at", "")) >= since_iso)]
        return merge_iter(mine, self.store.iter_runs(since=since, type=type))
