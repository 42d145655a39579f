"""``Ledger``: the git ledger of one project, durable at once, committed in batches.

A finished run goes to this process's journal (see ``_journal``) before
:meth:`Ledger.record` returns, and into a git commit shortly after, by a
background thread that folds everything pending into one ``write_batch``. Reads
merge what this process has finished but not yet committed (read-your-writes,
through every Ledger of the same ledger in the process) with the branch. A run
that cannot be journaled is kept in memory and journaled again when writing
works; a record that can never be committed is quarantined (``_quarantine``);
failing batches are split (``_commits``).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import re
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from .. import _settings
from .._ratelimit import RateLimitedLog
from ._commits import BatchSizer
from ._committer import (
    OTEL_RUNS_COMMIT_INTERVAL,
    OTEL_RUNS_COMMIT_PROCESS,
    Committing,
    commit_interval,
    commit_process,
)
from ._journal import JournalWriter
from ._pending import Pending, PendingQueue, share
from ._quarantine import Quarantined, quarantined
from ._reads import Reading
from ._recording import Recording, _process
from ._recovery import RECOVER_INTERVAL, Recovering
from ._store import GitStore

__all__ = ["Ledger", "ledger_for", "journal_dir_for", "OTEL_RUNS_COMMIT_INTERVAL",
           "OTEL_RUNS_COMMIT_PROCESS", "RECOVER_INTERVAL", "commit_interval", "commit_process"]

logger = logging.getLogger("otel_runs.ledger")

HELPER_MIN_BATCH = 100
DEFAULT_BRANCH = "scp-ledger"
DEFAULT_TAG_PREFIX = "scp-run/"
#: Most runs folded into one commit batch.
MAX_BATCH = 2_000


def journal_dir_for(git_dir: str | os.PathLike[str], branch: str, tag_prefix: str | None) -> Path:
    """The journal directory of a ledger: ``<git common dir>/otel-runs/journal-<branch>-<hash>``."""
    digest = hashlib.sha1(f"{branch}\0{tag_prefix}".encode()).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", branch)[:40]
    return Path(git_dir) / "otel-runs" / f"journal-{safe}-{digest}"


class Ledger(Recording, Reading, Recovering, Committing):
    """The git ledger of the project at ``project_root``.

    ``record()`` is durable when it returns (``durability="journal"``: survives
    the process being killed; ``"fsync"``: also a power loss, with group commit);
    a background thread commits within about ``OTEL_RUNS_COMMIT_INTERVAL`` s, and
    :meth:`flush` forces it. Reads are newest first and include runs this process
    finished but has not committed yet (through any Ledger of the same ledger).
    Raises :class:`NotAGitRepository` when the root is not inside a git
    repository. Safe to share between threads and to keep across ``os.fork()``.
    """

    def __init__(self, project_root: str | os.PathLike[str], branch: str | None = None,
                 tag_prefix: str | None = DEFAULT_TAG_PREFIX, *,
                 durability: str | None = None) -> None:
        self.project_root = str(Path(project_root).expanduser().resolve())
        self.branch = branch or _settings.env_str(_settings.OTEL_RUNS_LEDGER_BRANCH,
                                                  DEFAULT_BRANCH) or DEFAULT_BRANCH
        self.tag_prefix = tag_prefix
        self._durability = _settings.durability(durability)
        self.commit_interval = commit_interval()
        self.commit_process = commit_process()
        self._store: GitStore | None = self._open_store()
        self.journal_dir = journal_dir_for(self._store.git_dir, self.branch, tag_prefix)
        self._journal = JournalWriter(self.journal_dir, fsync=self._durability == "fsync")
        self._init_runtime()
        _live_ledgers.add(self)
        share(str(self.journal_dir), self)
        self.recover()

    def _open_store(self) -> GitStore:
        # Packs are fsynced only in fsync mode: in journal mode the journal is what
        # survives a crash, and a pack fsync would stall request threads' journal
        # appends (ext4 commits its journal for the whole file system).
        return GitStore(self.project_root, branch=self.branch, tag_prefix=self.tag_prefix,
                        fsync=self._durability == "fsync")

    def _init_runtime(self) -> None:
        self._pid = os.getpid()
        self._log = RateLimitedLog(logger)  # each ledger reports its own failures
        self.pending = PendingQueue()
        self._cond = self.pending.cond
        self._fold_lock = threading.RLock()
        self._store_lock = threading.Lock()
        self._retry_lock = threading.Lock()
        self._poison: list[tuple[Pending, str]] = []  # quarantine not written yet
        self._sizer = BatchSizer(MAX_BATCH)
        self._helper_min_batch = HELPER_MIN_BATCH
        self._retry_at = 0.0
        self._helper: Any = None  # a _journal_helper.CommitHelper once started
        self._helper_failed = False
        self._thread: threading.Thread | None = None
        self._closed = False
        self._recovered = True  # the last recovery pass left nothing behind
        self._next_recover = time.monotonic() + RECOVER_INTERVAL
        self._next_journal_retry = 0.0

    # -- configuration ----------------------------------------------------------

    @property
    def durability(self) -> str:
        """``journal`` or ``fsync``."""
        return self._durability

    @durability.setter
    def durability(self, value: str) -> None:
        self._durability = _settings.durability(value)
        self._journal.fsync = self._durability == "fsync"
        store = self._store
        if store is not None:
            store.fsync = self._durability == "fsync"
        helper, self._helper = self._helper, None  # the next one gets the new mode
        if helper is not None:
            with self._fold_lock:
                helper.close()

    def __repr__(self) -> str:
        return f"<Ledger {self.project_root} branch={self.branch} durability={self._durability}>"

    @property
    def store(self) -> GitStore:
        """The git plumbing layer (opened again if the ledger was closed)."""
        store = self._store
        if store is None:
            with self._store_lock:
                if self._store is None:
                    self._store = self._open_store()
                store = self._store
        return store

    @property
    def only_in_memory(self) -> int:
        """How many runs recorded here are neither committed nor in the journal (nor in
        quarantine): lost if this process exits before they are."""
        with self._cond:
            return self.pending.unjournaled + sum(1 for e, _ in self._poison if e.segment < 0)

    def quarantined(self) -> list[Quarantined]:
        """The records of this ledger that were quarantined (see :func:`quarantined`)."""
        return quarantined(self.journal_dir)

    # -- writing ----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Commit everything committable: this process's runs and dead processes'
        journals. True when nothing is left (records that can never be committed are
        quarantined; False while any run is only in memory or a dead journal could
        not be recovered). ``timeout`` in seconds (None: 60)."""
        deadline = time.monotonic() + (60.0 if timeout is None else timeout)
        recovered_at = -float("inf")
        while True:
            if time.monotonic() - recovered_at >= 1.0 and (recovered_at < 0 or not self._recovered):
                self.recover()
                recovered_at = time.monotonic()
            if self.only_in_memory:
                self._retry_journal()
            ok = True
            while ok and len(self.pending) and time.monotonic() < deadline:
                ok = self._fold()
            with self._cond:
                done = not len(self.pending) and not self._poison
            if done and self._recovered:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if ok or self._sizer.solo_streak:  # (a halved batch is tried again at once)
                time.sleep(min(0.2 if not ok else 0.05, remaining))

    # -- lifecycle ---------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is pending, stop the committer and release git processes.
        Idempotent; the ledger reopens itself if used again."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if not self.flush(timeout):
            left = self.leftovers()
            if left:
                logger.warning("otel-runs: closing the ledger of %s (%s): %s", self.project_root,
                               self.branch, left)
        with self._fold_lock:
            self._journal.close()
            helper, self._helper = self._helper, None
            if helper is not None:
                helper.close()
            with self._store_lock:
                store, self._store = self._store, None
            if store is not None:
                store.close()
        with self._cond:
            self._closed = False  # usable again (reopens lazily)

    # -- fork safety -------------------------------------------------------------

    def _before_fork(self) -> None:
        self._fold_lock.acquire()  # no commit (and no store lock) is midway at fork

    def _after_fork_in_parent(self) -> None:
        self._fold_lock.release()

    def _after_fork_in_child(self) -> None:
        # The parent's thread, locks and journal files are not ours; the store
        # resets its own (its at-fork hook), so start afresh on the next record.
        self._journal.reset_after_fork()
        if self._helper is not None:
            self._helper.close()  # in a child: only closes our copies of its pipes
        self._init_runtime()


_live_ledgers: weakref.WeakSet[Ledger] = weakref.WeakSet()
_registry: dict[str, Ledger] = {}
_registry_lock = threading.Lock()


def ledger_for(project_root: str | os.PathLike[str], *, durability: str | None = None) -> Ledger:
    """The process-wide shared :class:`Ledger` of ``project_root`` (the one the
    exporter writes through, so readers see this process's runs at once).

    Branch from ``OTEL_RUNS_LEDGER_BRANCH``. ``durability="fsync"`` upgrades the
    shared instance. Raises :class:`NotAGitRepository`.
    """
    key = str(Path(project_root).expanduser().resolve())
    with _registry_lock:
        ledger = _registry.get(key)
        if ledger is None:
            ledger = Ledger(key, durability=durability)
            _registry[key] = ledger
        elif durability is not None and durability != ledger.durability:
            if durability == "fsync":
                ledger.durability = "fsync"
    return ledger


_forking: list[Ledger] = []


def _before_fork() -> None:
    _registry_lock.acquire()
    _forking[:] = list(_live_ledgers)
    for ledger in _forking:
        ledger._before_fork()


def _after_fork_in_parent() -> None:
    for ledger in _forking:
        ledger._after_fork_in_parent()
    _forking.clear()
    _registry_lock.release()


def _after_fork_in_child() -> None:
    global _registry_lock
    _process[0] = os.getpid()
    for ledger in _forking:
        ledger._after_fork_in_child()
    _forking.clear()
    _registry_lock = threading.Lock()


def _flush_at_exit() -> None:
    for ledger in list(_live_ledgers):
        if ledger._pid == os.getpid():
            try:
                if not ledger.flush(timeout=10.0):
                    left = ledger.leftovers(exiting=True)
                    if left:
                        logger.warning("otel-runs: exiting with runs of %s (%s) not committed: "
                                       "%s", ledger.project_root, ledger.branch, left)
            except Exception:  # pragma: no cover - best effort at exit
                logger.exception("otel-runs: flushing %r at exit failed", ledger)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
