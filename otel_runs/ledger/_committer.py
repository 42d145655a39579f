"""The writing half of a :class:`~otel_runs.ledger.Ledger`: the background committer.

It folds pending runs into ``write_batch`` calls (in a thread, or in the commit
helper process for big batches), quarantines what can never be committed, splits
batches that fail (the rules are in ``_commits``), and journals again the runs
that could not be journaled when they were recorded. :class:`Committing` is a
mixin of ``Ledger``; the attributes it uses are set up by ``Ledger._init_runtime``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .. import _settings
from .._ratelimit import RateLimitedLog
from ._commits import BatchSizer, write_isolating
from ._errors import PoisonRecords
from ._journal import JournalWriter
from ._pending import Pending, PendingQueue, load_lines
from ._quarantine import quarantine

__all__ = ["Committing", "commit_interval", "commit_process", "OTEL_RUNS_COMMIT_INTERVAL",
           "OTEL_RUNS_COMMIT_PROCESS"]

logger = logging.getLogger("otel_runs.ledger")

#: Seconds a finished run may wait before its batch is committed (default 0.5).
OTEL_RUNS_COMMIT_INTERVAL = "OTEL_RUNS_COMMIT_INTERVAL"
#: Where batches are committed: ``auto`` (a helper process for batches of at
#: least ``HELPER_MIN_BATCH`` runs, else a thread of this process), ``always``, ``never``.
OTEL_RUNS_COMMIT_PROCESS = "OTEL_RUNS_COMMIT_PROCESS"
#: Seconds between attempts to journal again runs that are only in memory.
JOURNAL_RETRY_INTERVAL = 1.0
#: Back-off after a batch of one run failed (by how many did in a row).
RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)


def commit_interval() -> float:
    """``OTEL_RUNS_COMMIT_INTERVAL`` in seconds (default 0.5; bad values warn)."""
    raw = _settings.env_str(OTEL_RUNS_COMMIT_INTERVAL)
    if raw is None:
        return 0.5
    try:
        value = float(raw)
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        logger.warning("%s=%r is not a number of seconds >= 0; using 0.5",
                       OTEL_RUNS_COMMIT_INTERVAL, raw)
        return 0.5


def commit_process() -> str:
    """``OTEL_RUNS_COMMIT_PROCESS``: ``auto`` (default), ``always`` or ``never``."""
    raw = (_settings.env_str(OTEL_RUNS_COMMIT_PROCESS) or "auto").lower()
    value = {"1": "always", "true": "always", "yes": "always", "on": "always",
             "0": "never", "false": "never", "no": "never", "off": "never"}.get(raw, raw)
    if value not in ("auto", "always", "never"):
        logger.warning("%s=%r is not auto/always/never; using auto", OTEL_RUNS_COMMIT_PROCESS, raw)
        return "auto"
    return value


class Committing:
    """Commits a Ledger's pending runs (mixin; see the module docstring)."""

    # Set up by Ledger (__init__ / _init_runtime):
    _log: RateLimitedLog
    project_root: str
    branch: str
    tag_prefix: str | None
    journal_dir: Any
    commit_interval: float
    commit_process: str
    pending: PendingQueue
    _cond: threading.Condition
    _journal: JournalWriter
    _fold_lock: threading.RLock
    _retry_lock: threading.Lock
    _poison: list[tuple[Pending, str]]
    _sizer: BatchSizer
    _retry_at: float
    _helper: Any
    _helper_failed: bool
    _helper_min_batch: int
    _thread: threading.Thread | None
    _closed: bool
    _durability: str
    _next_recover: float
    _next_journal_retry: float
    store: Any
    only_in_memory: int
    recover: Any  # (Recovering)
    _recovered: bool

    def _retry_journal(self) -> None:
        """Journal again the runs only in memory, and write quarantines not written yet
        (one thread at a time; stops at the first failure)."""
        if not self._retry_lock.acquire(blocking=False):
            return
        try:
            self._next_journal_retry = time.monotonic() + JOURNAL_RETRY_INTERVAL
            with self._cond:
                todo = self.pending.unjournaled_entries()
                poison, self._poison = self._poison, []
            for entry, reason in poison:
                self._reject(entry, reason, queued=False)
            done = 0
            for entry in todo:
                try:
                    segment = self._journal.append_end(entry.run_id, entry.line)
                except OSError:
                    break
                with self._cond:
                    kept = self.pending.mark_journaled(entry, segment)
                if kept:
                    done += 1
                else:  # committed meanwhile: its new line is not needed
                    self._release_segments([segment])
            if done:
                logger.warning("otel-runs: journaled %d run(s) that were only in memory in %s; "
                               "%d still are", done, self.journal_dir, self.only_in_memory)
        finally:
            self._retry_lock.release()

    def _release_segments(self, segments: list[int]) -> None:
        if not segments:
            return
        try:
            self._journal.committed(segments)
        except OSError:
            self._log.exception("journal-rotate", "otel-runs: journal upkeep in %s failed",
                              self.journal_dir)

    def _quarantine(self, line: bytes, reason: str, claimed: str | None, source: str,
                    what: str | None = None) -> bool:
        """Write a quarantine record and log it once; False if it could not be written."""
        what = what or f"run {claimed}"
        try:
            path, new = quarantine(self.journal_dir, line, reason, claimed_id=claimed,
                                   source=source)
        except OSError as exc:
            self._log.warning("quarantine", "otel-runs: could not quarantine %s in %s (%s); "
                            "retrying", what, self.journal_dir, exc)
            return False
        if new:
            logger.error("otel-runs: quarantined %s: %s (kept in %s)", what, reason, path)
        return True

    def _reject(self, entry: Pending, reason: str, *, queued: bool = True) -> None:
        """Take ``entry`` out of the commit queue for good and quarantine it (kept in
        memory, and retried, while the quarantine cannot be written)."""
        segments: list[int] = []
        if queued:
            with self._cond:
                segments = self.pending.remove([entry])
                if entry.segment < 0:
                    self._journal.forget_start(entry.run_id)
        if not self._quarantine(entry.line, reason, entry.run_id, "memory"):
            with self._cond:
                self._poison.append((entry, reason))
            return
        self._release_segments(segments if queued else [entry.segment] if entry.segment >= 0
                               else [])

    def _commit(self, entries: list[Pending]) -> int:
        """Write ``entries`` to the branch: in the helper process when the batch
        is big enough to be worth it (see ``OTEL_RUNS_COMMIT_PROCESS``), else here.
        Raises ``PoisonRecords`` for entries that can never be written."""
        if self._use_helper(len(entries)):
            helper = self._ensure_helper()
            if helper is not None:
                try:  # a spilled line is read by the helper from the journal, not copied here
                    return int(helper.write_batch([e.location() or e.line for e in entries]))
                except PoisonRecords:
                    raise
                except Exception:
                    self._helper = None  # a new helper for the retry
                    helper.close()
                    raise
        load_lines(entries)
        items: list[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]] = []
        rejected: list[tuple[int, str, str]] = []
        for index, entry in enumerate(entries):
            try:
                items.append((entry.run(), entry.spans(), entry.output()))
            except ValueError as exc:
                rejected.append((index, entry.run_id, f"unreadable journal record: {exc}"))
        if rejected:
            raise PoisonRecords(rejected)
        return self.store.write_batch(items) if items else 0

    def _ensure_helper(self) -> Any:
        """The commit helper, started if needed (None if it cannot start). Under _fold_lock."""
        helper = self._helper
        if helper is None and not self._helper_failed:
            from ._journal_helper import CommitHelper  # (not at import: it is also __main__)

            try:
                helper = self._helper = CommitHelper(self.project_root, self.branch,
                                                     self.tag_prefix,
                                                     fsync=self._durability == "fsync")
            except Exception:
                self._helper_failed = True
                logger.warning("otel-runs: cannot start the ledger commit helper; "
                               "committing in this process", exc_info=True)
                helper = None
        return helper

    def _helper_wanted_locked(self) -> bool:
        """A helper-sized batch is building up and no helper runs yet: start it now, so that
        it is ready (its start-up takes ~0.3-1 s) when the batch is due."""
        return (self._helper is None and len(self.pending) >= self._helper_min_batch
                and self._use_helper(len(self.pending)))

    def _use_helper(self, batch: int) -> bool:
        if self._helper_failed or self.commit_process == "never":
            return False
        return self.commit_process == "always" or batch >= self._helper_min_batch

    def _fold(self) -> bool:
        """Commit one batch of pending runs; False if the commit failed."""
        with self._fold_lock:
            with self._cond:
                batch = self.pending.take(self._sizer.limit)
            if not batch:
                return True
            try:
                result = write_isolating(batch, self._commit, self._reject)
            except Exception as exc:
                with self._cond:  # (without the ones quarantined meanwhile)
                    batch = [e for e in batch if self.pending.is_pending(e)]
                if batch:
                    self._failed(batch, exc)
                return False
            if result is not None:  # (not when every run of it was quarantined)
                self._sizer.succeeded()
            with self._cond:
                unjournaled = [e.run_id for e in batch if e.segment < 0
                               and self.pending.is_pending(e)]
                segments = self.pending.remove(batch)
                for run_id in unjournaled:
                    self._journal.forget_start(run_id)
                if len(self.pending):
                    self.pending.first_at = time.monotonic()
                self._cond.notify_all()
            self._release_segments(segments)
            if unjournaled:
                logger.warning("otel-runs: committed %d run(s) that were only in memory; %d "
                               "still are", len(unjournaled), self.only_in_memory)
            return True

    def _failed(self, batch: list[Pending], exc: Exception) -> None:
        """A batch failed for another reason than poison: split, back off, maybe quarantine."""
        culprit = self._sizer.failed(batch)
        solo = len(batch) == 1
        delay = RETRY_DELAYS[min(self._sizer.solo_streak, len(RETRY_DELAYS)) - 1] if solo else 0.0
        self._retry_at = time.monotonic() + delay
        if culprit is not None:
            self._reject(culprit, f"its commit failed {culprit.solo_failures} times on its own "
                                  f"while other runs were committed: {type(exc).__name__}: {exc}")
        elif solo:
            with self._cond:
                self.pending.requeue(batch[0])
        self._log.exception("commit", "otel-runs: committing %d run(s) to %s failed (kept%s; "
                          "retrying with batches of %d)", len(batch), self.branch,
                          "" if self.only_in_memory else " in the journal", self._sizer.limit)

    def _start_thread(self) -> None:
        with self._cond:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run_committer, daemon=True,
                                            name=f"otel-runs-ledger[{self.branch}]")
            self._thread.start()

    def _commit_due_locked(self, now: float) -> float:
        """When the pending batch should be committed (``inf``: nothing pending)."""
        if not len(self.pending):
            return float("inf")
        if self._sizer.failures:
            return max(self.pending.first_at + self.commit_interval, self._retry_at)
        if len(self.pending) >= self._sizer.limit:
            return now
        return self.pending.first_at + self.commit_interval

    def _wake_at_locked(self, now: float) -> float:
        wake = min(self._commit_due_locked(now), self._next_recover)
        if self.pending.unjournaled or self._poison:
            wake = min(wake, self._next_journal_retry)
        return wake

    def _run_committer(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    if now >= self._wake_at_locked(now) or self._helper_wanted_locked():
                        break
                    self._cond.wait(self._wake_at_locked(now) - now)
                if self._closed:
                    return
                # One clock reading: with a full batch the due time IS "now", so reading the
                # clock twice made this False forever and the thread spun, holding the GIL.
                now = time.monotonic()
                commit_now = now >= self._commit_due_locked(now)
                start_helper = self._helper_wanted_locked()
                retry = (self.pending.unjournaled or self._poison) \
                    and now >= self._next_journal_retry
            if start_helper:
                with self._fold_lock:
                    self._ensure_helper()
            if retry:
                self._retry_journal()
            if time.monotonic() >= self._next_recover:
                self.recover()
            if commit_now:
                self._fold()

    def leftovers(self, *, exiting: bool = False) -> str | None:
        """What is not committed, with exact counts (for the close and exit logs), or None."""
        with self._cond:
            entries = self.pending.snapshot()
            spilled = self.pending.spilled
            poison = len(self._poison)
        journaled = spilled + sum(1 for e in entries if e.segment >= 0)
        memory = self.only_in_memory
        parts = []
        if journaled:
            parts.append(f"{journaled} run(s) stay in the journal {self.journal_dir} and are "
                         "committed by the next process that opens the ledger after this one "
                         "exits" + ("" if exiting else " (or by this one, later)"))
        if memory:
            parts.append(f"{memory} run(s) could not be journaled and are only in this "
                         "process's memory: " + ("they are lost now that it exits" if exiting
                                                 else "they are lost if it exits before they "
                                                 "are journaled or committed"))
        if poison:
            parts.append(f"{poison} record(s) that can never be committed could not be "
                         "quarantined yet")
        if not self._recovered:
            parts.append(f"dead journals in {self.journal_dir} are not fully recovered yet")
        return "; ".join(parts) or None
