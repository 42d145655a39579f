"""``RunCensus``: how many runs the ledger branch holds, by type and status, cheaply.

Counted from the commits' index lines (one line per run a commit recorded: id, status,
type, subtype, summary), never from the run files. The first count walks the branch's
history once (commit messages only); each later :meth:`RunCensus.refresh` reads only the
commits added since (a linear walk from the new tip back to the one counted last). A
merge (``otel-runs sync``), a rebuilt branch (``otel-runs repair``) or a total that does
not match the tip's ``Otel-Runs-Count`` trailer makes the next refresh count again from
scratch.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ._layout import IndexLine

__all__ = ["MAX_LINEAR_WALK", "BranchWalk", "RunCensus"]

#: Most new commits a refresh follows back to the last counted tip before it counts
#: the whole branch again instead.
MAX_LINEAR_WALK = 5_000


class BranchWalk:
    """What :class:`RunCensus` and :class:`~otel_runs.ledger._tally.RunTally` share:
    bring counts kept from the commits' index lines up to the branch's tip, reading
    only the commits added since the last refresh. Subclasses say how lines are counted
    (``_reset``, ``_add``, ``_total``)."""

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger
        self._lock = threading.Lock()
        self._tip: bytes | None = None
        #: Full counts done (the first one included); for tests and diagnostics.
        self.full_counts = 0

    def _reset(self) -> None:
        raise NotImplementedError

    def _add(self, lines: Iterable[IndexLine]) -> None:
        raise NotImplementedError

    def _total(self) -> int:
        raise NotImplementedError

    def _refresh(self) -> Any:
        """Under the lock: counts up to the current tip; the tip (None: no branch)."""
        store = self._ledger.store
        with store._read_lock:
            tip = store._tip()
        if tip is None:
            self._reset()
            self._tip = None
            return None
        if tip.oid != self._tip:
            added = self._since_last(store, tip) if self._tip is not None else None
            if added is None:
                self._count_all(store, tip)
            else:
                self._add(added)
            if tip.count is not None and self._total() != tip.count:
                self._count_all(store, tip)
            self._tip = tip.oid
        return tip

    def _since_last(self, store: Any, tip: Any) -> list[IndexLine] | None:
        """Runs of the commits between the last counted tip and ``tip``; None when the
        way back is not a plain line of commits (then everything is counted again)."""
        added: list[IndexLine] = []
        commit = tip
        for _ in range(MAX_LINEAR_WALK):
            if len(commit.parents) != 1:
                return None  # a merge, or a root that is not the last tip: history changed
            added.extend(commit.lines)
            parent = commit.parents[0]
            if bytes.fromhex(parent) == self._tip:
                return added
            with store._read_lock:
                found = store._commits([parent], quiet=True)[0]
            if found is None:
                return None
            commit = found
        return None

    def _count_all(self, store: Any, tip: Any) -> None:
        """Count every run of the branch from its index lines (each run once)."""
        self._reset()
        self._add(line for _, line in store._index())
        self.full_counts += 1


class RunCensus(BranchWalk):
    """Committed runs of one :class:`~otel_runs.ledger.Ledger` by ``(type, status)``.

    :meth:`refresh` brings the counts up to the branch's tip and returns them; it is
    safe to call from several threads (one refresh at a time). Runs not committed yet
    (journaled, running) are not counted: the ledger's reads have those.
    """

    def __init__(self, ledger: Any) -> None:
        super().__init__(ledger)
        self._counts: Counter[tuple[str, str]] = Counter()

    @property
    def total(self) -> int:
        """Runs counted so far."""
        return sum(self._counts.values())

    def counts(self) -> dict[tuple[str, str], int]:
        """The last counts, without reading git."""
        with self._lock:
            return dict(self._counts)

    def refresh(self) -> dict[tuple[str, str], int]:
        """Counts as of the branch's current tip (read from git: only new commits)."""
        with self._lock:
            self._refresh()
            return dict(self._counts)

    def _reset(self) -> None:
        self._counts = Counter()

    def _add(self, lines: Iterable[IndexLine]) -> None:
        self._counts.update((line.type, line.status) for line in lines)

    def _total(self) -> int:
        return sum(self._counts.values())
