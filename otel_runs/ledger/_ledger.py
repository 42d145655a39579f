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
import json
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from .. import _settings
from .._attributes import RUN_ID
from .._ids import is_run_id, validate_run_id
from .._model import Run
from .._ratelimit import RateLimitedLog
from ._commits import BatchSizer
from ._committer import (
    OTEL_RUNS_COMMIT_INTERVAL,
    OTEL_RUNS_COMMIT_PROCESS,
    Committing,
    commit_interval,
    commit_process,
)
from ._journal import JournalUnavailable, JournalWriter
from ._journal_records import encode_record, encoded_line, output_line, raw_span, spans_line
from ._pending import Pending, PendingQueue, share
from ._quarantine import Quarantined, quarantined
from ._reads import Reading
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


def _shown(value: object) -> str:
    return value if isinstance(value, str) and len(value) <= 80 else repr(value)[:80]


class Ledger(Reading, Recovering, Committing):
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

    def record_started(self, run: Run) -> None:
        """Note that ``run`` started, so that it is recorded as ``interrupted`` if
        this process dies before it finishes. Not a durability point."""
        self._start(validate_run_id(run.run_id), {"run": run.to_dict()})

    def record(self, run: Run, spans: Sequence[dict[str, Any]] = (),
               output: Sequence[dict[str, Any]] = ()) -> None:
        """Record a finished run with its child spans (``span_to_dict`` records) and its
        output lines (``{"n", "t", "stream", "text"}``, see :meth:`output`).

        Durable when it returns; committed to git in the background. A run id
        already on the branch is not written again (the first write wins).
        """
        self._end(validate_run_id(run.run_id), {"run": run.to_dict()}, list(spans),
                  output=list(output) or None)

    def record_span_started(self, span: ReadableSpan) -> None:
        """:meth:`record_started` for a run span (cheap: the Run is built later)."""
        self._start((span.attributes or {})[RUN_ID], {"span": raw_span(span)})

    def record_span(self, span: ReadableSpan, spans: Sequence[dict[str, Any]] = (), *,
                    output: list[dict[str, Any]] | None = None) -> None:
        """:meth:`record` for a finished run span: only its raw data is journaled on
        the caller's time; the Run is built off the request path."""
        self._end((span.attributes or {})[RUN_ID], {"span": raw_span(span)}, list(spans),
                  output=output)

    def record_encoded(self, run_id: str, run_json: str,
                       spans: Sequence[dict[str, Any]] | None = None, *,
                       started: bool = False,
                       output: list[dict[str, Any]] | None = None) -> None:
        """:meth:`record` (or, ``started``, :meth:`record_started`) of a run otel-runs'
        processors encoded already (``OpenRun.start_json``: scrubbed, bounded, strict
        JSON): the journal line is built around that text, which the live feed sends too."""
        if started:
            line = encoded_line("start", run_json, None)
            assert line is not None
            self._start(run_id, {}, line)
            return
        children = list(spans or ())
        line = encoded_line("end", run_json, children, output)
        if line is None:  # child spans to normalise: the slow path
            self._end(run_id, {"run": json.loads(run_json)}, children, output=output)
            return
        self._end(run_id, {}, children, line)

    def record_output(self, run_id: str, lines: list[dict[str, Any]]) -> None:
        """Journal a chunk of an open run's output (``otel_runs._output`` lines), so that
        it is kept with the run if this process dies before the run ends, and readable by
        every process of the host meanwhile. Not a durability point: failures are logged."""
        if self._pid != _process[0]:  # pragma: no cover - the at-fork hook does this
            self._after_fork_in_child()
        if not is_run_id(run_id) or not lines:
            return
        try:
            self._journal.append_output(run_id, output_line(run_id, lines))
        except (OSError, ValueError, TypeError) as exc:
            self._log.warning("journal-output", "otel-runs: could not journal output of run %s "
                              "in %s: %s", run_id, self.journal_dir, exc)

    def record_live_spans(self, run_id: str, spans: list[dict[str, Any]],
                          events: list[dict[str, Any]] | None = None) -> None:
        """Journal child spans an open run ended and (``events``) every event it has so
        far, while it runs, so that every process of the host shows its timeline and
        events so far; its end record holds all of them. Not a durability point:
        failures are logged."""
        if not is_run_id(run_id) or (not spans and events is None):
            return
        try:
            self._journal.append_output(run_id, spans_line(run_id, spans, events))
        except (OSError, ValueError, TypeError) as exc:
            self._log.warning("journal-output", "otel-runs: could not journal spans of run %s "
                              "in %s: %s", run_id, self.journal_dir, exc)

    def _start(self, run_id: Any, record: dict[str, Any], line: bytes | None = None) -> None:
        if self._pid != _process[0]:  # pragma: no cover - the at-fork hook does this
            self._after_fork_in_child()
        if not is_run_id(run_id):
            return  # its end record is quarantined
        if line is None:
            line, _ = encode_record({"e": "start", **record})
        try:
            self._journal.append_start(run_id, line)
        except OSError as exc:
            self._log.exception("journal-start", "otel-runs: could not journal the start of run "
                              "%s in %s (if this process dies before it ends, it is not recorded "
                              "as interrupted)", run_id, self.journal_dir)
            if _settings.on_journal_error() == "raise":
                raise JournalUnavailable(run_id, self.journal_dir, exc, "start") from exc

    def _end(self, run_id: Any, record: dict[str, Any], spans: list[dict[str, Any]],
             line: bytes | None = None, output: list[dict[str, Any]] | None = None) -> None:
        if self._pid != _process[0]:  # pragma: no cover - the at-fork hook does this
            self._after_fork_in_child()
        normalised = False
        if line is None:
            extra = {"output": output} if output else {}
            line, normalised = encode_record({"e": "end", **record, "spans": spans, **extra})
        if normalised:
            self._log.warning("normalised", "otel-runs: run %s held values the ledger cannot "
                            "store as they are (times out of range, NaN/Infinity, ...); they "
                            "were normalised", _shown(run_id))
        if not is_run_id(run_id):
            self._reject(Pending(_shown(run_id), line, -1),
                         f"malformed run id {_shown(run_id)!r}", queued=False)
            return
        error: OSError | None = None
        offset = -1
        try:
            segment, offset = self._journal.append_end_at(run_id, line)
        except OSError as exc:
            segment, error = -1, exc
        with self._cond:
            if not len(self.pending):
                self.pending.first_at = time.monotonic()
            if segment >= 0:
                count = self.pending.add_journaled(run_id, line, segment, offset, self._journal)
            else:
                count = self.pending.add(Pending(run_id, line, -1))
            memory = self.pending.unjournaled
            if count in (1, self._helper_min_batch) or count >= self._sizer.limit:
                self._cond.notify_all()
        if self._thread is None:
            self._start_thread()
        if error is not None:
            self._log.exception("journal", "otel-runs: could not journal run %s in %s: %s; %d "
                              "run(s) are now only in this process's memory (kept, journaled "
                              "again when writing works, committed when possible)",
                              run_id, self.journal_dir, error, memory)
            if _settings.on_journal_error() == "raise":
                raise JournalUnavailable(run_id, self.journal_dir, error, "end") from error
        elif memory:  # writing works again: the committer journals the others now
            with self._cond:
                self._next_journal_retry = 0.0
                self._cond.notify_all()

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
#: This process's pid, kept by the at-fork hook (``getpid()`` is a system call: the
#: request path compares with this instead, twice a run).
_process = [os.getpid()]
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
