"""Crash recovery for a :class:`~otel_runs.ledger.Ledger`: the runs of dead processes.

For each dead journal (``_journal_dead``): every good run is committed (finished
ones as they were, unfinished ones as ``interrupted``), in batches split as
``_commits`` says; every record that can never be committed is quarantined; the
journal is removed only when all of that succeeded, else it is kept and tried
again later. :class:`Recovering` is a mixin of ``Ledger``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from .._ratelimit import RateLimitedLog
from ._commits import BatchSizer, commit_all
from ._journal_dead import DeadJournal, RecoveredRun, RecoveryBusy, dead_journals

__all__ = ["RECOVER_INTERVAL", "Recovering"]

logger = logging.getLogger("otel_runs.ledger")

#: Seconds between checks for runs of dead processes (in running processes).
RECOVER_INTERVAL = 5.0


class Recovering:
    """Recovers dead journals of a Ledger's journal directory (mixin)."""

    # Set up by Ledger (__init__ / _init_runtime):
    _log: RateLimitedLog
    journal_dir: Any
    store: Any
    _fold_lock: threading.RLock
    _sizer: BatchSizer
    _recovered: bool
    _next_recover: float
    _quarantine: Any  # (Committing)

    def recover(self) -> int:
        """Record the runs of processes that died: finished ones as they were,
        started-but-unfinished ones as ``interrupted``; quarantine their records that
        can never be committed. Returns how many runs were written. Never raises
        (failures are logged, retried later)."""
        written, clean = 0, True
        with self._fold_lock:
            try:
                with contextlib.closing(dead_journals(self.journal_dir,
                                                      busy_raises=True)) as journals:
                    for journal in journals:
                        n, done = self._recover_one(journal)
                        written, clean = written + n, clean and done
            except RecoveryBusy:
                clean = False  # another process is at it; flush() waits for it
            except Exception:
                clean = False
                self._log.exception("recover", "otel-runs: recovering journals in %s failed",
                                  self.journal_dir)
        self._recovered = clean
        self._next_recover = time.monotonic() + RECOVER_INTERVAL
        return written

    def _recover_one(self, journal: DeadJournal) -> tuple[int, bool]:
        """Commit a dead journal's good runs, quarantine its bad records; remove it only
        when all that is done. Returns (runs written, done)."""
        journal.read()
        runs = [_Recovering(r) for r in journal.runs()]
        saved = True
        for bad in journal.bad:
            what = f"bad journal line {bad.source}" + (f" of run {bad.claimed_id}"
                                                        if bad.claimed_id else "")
            saved = self._quarantine(bad.line, bad.reason, bad.claimed_id, bad.source,
                                     what) and saved

        def reject(item: _Recovering, reason: str) -> None:
            nonlocal saved
            saved = self._quarantine(item.line, reason, item.run_id, item.source,
                                     f"bad journal line {item.source} of run {item.run_id}") \
                and saved

        written, complete, error = commit_all(
            runs, lambda batch: self.store.write_batch([(i.run, i.spans, i.output) for i in batch]),
            reject, self._sizer.maximum)
        if not (complete and saved):
            self._log.warning("recover-incomplete", "otel-runs: the journal of %s in %s is kept "
                            "(retried later): %s", journal.reason.split(" exited")[0],
                            self.journal_dir, error or "a quarantine could not be written")
            journal.release()
            return written, False
        journal.remove()
        interrupted = len(journal.starts.keys() - journal.ends.keys())
        if interrupted:
            logger.warning("otel-runs: recorded %d run(s) as interrupted: %s", interrupted,
                           journal.reason)
        return written, True


class _Recovering:
    """A run of a dead journal on its way to the branch (with the counts ``_commits`` keeps)."""

    __slots__ = ("run_id", "run", "spans", "output", "line", "source", "failures",
                 "solo_failures", "failed_mark")

    def __init__(self, recovered: RecoveredRun) -> None:
        self.run_id, self.run, self.spans = recovered.run_id, recovered.run, recovered.spans
        self.output = recovered.output
        self.line, self.source = recovered.line, recovered.source
        self.failures = self.solo_failures = 0
        self.failed_mark = -1
