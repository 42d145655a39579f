"""``Ledger``: the git ledger of one project, durable at once, committed in batches.

A finished run goes to this process's journal (see ``_journal``) before
:meth:`Ledger.record` returns, and into a git commit shortly after, by a
background thread that folds everything pending into one ``write_batch``. Reads
merge what this process has finished but not yet committed (read-your-writes)
with the branch.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import heapq
import itertools
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from .. import _settings
from .._attributes import RUN_ID
from .._ids import validate_run_id
from .._model import Run
from .._ratelimit import RateLimitedLog
from ._journal import DeadJournal, JournalWriter, dead_journals, encode_line
from ._journal_records import raw_span, run_dict
from ._store import GitStore

__all__ = ["Ledger", "ledger_for", "OTEL_RUNS_COMMIT_INTERVAL"]

logger = logging.getLogger("otel_runs.ledger")
_errors = RateLimitedLog(logger)

#: Seconds a finished run may wait before its batch is committed (default 0.5).
OTEL_RUNS_COMMIT_INTERVAL = "OTEL_RUNS_COMMIT_INTERVAL"
#: Where batches are committed: ``auto`` (a helper process for batches of at
#: least ``HELPER_MIN_BATCH`` runs, else a thread of this process), ``always``, ``never``.
OTEL_RUNS_COMMIT_PROCESS = "OTEL_RUNS_COMMIT_PROCESS"
HELPER_MIN_BATCH = 100
DEFAULT_BRANCH = "scp-ledger"
DEFAULT_TAG_PREFIX = "scp-run/"
#: Most runs folded into one commit batch.
MAX_BATCH = 2_000
#: Seconds between checks for runs of dead processes (in running processes).
RECOVER_INTERVAL = 5.0
_RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)

class _Pending:
    """A run journaled here, not yet committed; its Run dict is built on demand."""

    __slots__ = ("run_id", "record", "spans", "line", "segment", "_run")

    def __init__(self, run_id: str, record: dict[str, Any], spans: list[dict[str, Any]],
                 line: bytes, segment: int) -> None:
        self.run_id, self.record, self.spans = run_id, record, spans
        self.line, self.segment = line, segment
        self._run: dict[str, Any] | None = record.get("run")

    def run(self) -> dict[str, Any] | None:
        """The ``Run.to_dict()`` (None if the record cannot be read)."""
        if self._run is None:
            try:
                self._run = run_dict(self.record)
            except ValueError as exc:
                logger.warning("otel-runs: cannot read journaled run %s: %s", self.run_id, exc)
                return None
        return self._run


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


def _journal_dir(git_dir: Path, branch: str, tag_prefix: str | None) -> Path:
    digest = hashlib.sha1(f"{branch}\0{tag_prefix}".encode()).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", branch)[:40]
    return Path(git_dir) / "otel-runs" / f"journal-{safe}-{digest}"


def _to_run(data: Any) -> Run | None:
    try:
        return Run.from_dict(data)
    except (ValueError, TypeError) as exc:
        rid = data.get("run_id") if isinstance(data, dict) else None
        logger.warning("otel-runs: skipping unreadable run %r in the ledger: %s", rid, exc)
        return None


def _matches(run: dict[str, Any], text: str) -> bool:
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


class Ledger:
    """The git ledger of the project at ``project_root``.

    ``record()`` is durable when it returns (``durability="journal"``: survives
    the process being killed; ``"fsync"``: also a power loss, with group commit);
    a background thread commits within about ``OTEL_RUNS_COMMIT_INTERVAL`` s, and
    :meth:`flush` forces it. Reads are newest first and include runs this process
    finished but has not committed yet. Raises :class:`NotAGitRepository` when the
    root is not inside a git repository. Safe to share between threads and to
    keep across ``os.fork()``.
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
        self.journal_dir = _journal_dir(self._store.git_dir, self.branch, tag_prefix)
        self._journal = JournalWriter(self.journal_dir, fsync=self._durability == "fsync")
        self._init_runtime()
        _live_ledgers.add(self)
        self.recover()

    def _open_store(self) -> GitStore:
        # Packs are fsynced only in fsync mode: in journal mode the journal is what
        # survives a crash, and a pack fsync would stall request threads' journal
        # appends (ext4 commits its journal for the whole file system).
        return GitStore(self.project_root, branch=self.branch, tag_prefix=self.tag_prefix,
                        fsync=self._durability == "fsync")

    def _init_runtime(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._fold_lock = threading.RLock()
        self._store_lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._first_pending = 0.0
        self._retry_at = 0.0
        self._helper: Any = None  # a _journal_helper.CommitHelper once started
        self._helper_failed = False
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failures = 0
        self._next_recover = time.monotonic() + RECOVER_INTERVAL

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

    # -- writing ----------------------------------------------------------------

    def record_started(self, run: Run) -> None:
        """Note that ``run`` started, so that it is recorded as ``interrupted`` if
        this process dies before it finishes. Not a durability point."""
        self._start(validate_run_id(run.run_id), {"run": run.to_dict()})

    def record(self, run: Run, spans: Sequence[dict[str, Any]] = ()) -> None:
        """Record a finished run with its child spans (``span_to_dict`` records).

        Durable when it returns; committed to git in the background. A run id
        already on the branch is not written again (the first write wins).
        """
        self._end(validate_run_id(run.run_id), {"run": run.to_dict()}, list(spans))

    def record_span_started(self, span: ReadableSpan) -> None:
        """:meth:`record_started` for a run span (cheap: the Run is built later)."""
        self._start(str((span.attributes or {})[RUN_ID]), {"span": raw_span(span)})

    def record_span(self, span: ReadableSpan, spans: Sequence[dict[str, Any]] = ()) -> None:
        """:meth:`record` for a finished run span: only its raw data is journaled on
        the caller's time; the Run is built off the request path."""
        self._end(str((span.attributes or {})[RUN_ID]), {"span": raw_span(span)}, list(spans))

    def _start(self, run_id: str, record: dict[str, Any]) -> None:
        if self._pid != os.getpid():  # pragma: no cover - the at-fork hook does this
            self._after_fork_in_child()
        self._journal.append_start(run_id, record)

    def _end(self, run_id: str, record: dict[str, Any], spans: list[dict[str, Any]]) -> None:
        if self._pid != os.getpid():  # pragma: no cover - the at-fork hook does this
            self._after_fork_in_child()
        line = encode_line({"e": "end", **record, "spans": spans})
        try:
            segment = self._journal.append_end(run_id, line)
        except OSError:
            # The journal is unwritable: still commit it from memory, never drop it.
            _errors.exception("journal", "otel-runs: could not journal run %s in %s",
                              run_id, self.journal_dir)
            segment = -1
        entry = _Pending(run_id, record, spans, line, segment)
        with self._cond:
            if not self._pending:
                self._first_pending = time.monotonic()
            self._pending[run_id] = entry
            if len(self._pending) in (1, HELPER_MIN_BATCH) or len(self._pending) >= MAX_BATCH:
                self._cond.notify_all()
        if self._thread is None:
            self._start_thread()

    def flush(self, timeout: float | None = None) -> bool:
        """Commit everything this process has recorded; True if nothing is left.

        Also recovers runs of dead processes. ``timeout`` in seconds (None: 60).
        """
        deadline = time.monotonic() + (60.0 if timeout is None else timeout)
        self.recover()
        while True:
            with self._cond:
                if not self._pending:
                    return True
            ok = self._fold()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                with self._cond:
                    return not self._pending
            if not ok:
                time.sleep(min(0.2, remaining))

    def recover(self) -> int:
        """Record the runs of processes that died: finished ones as they were,
        started-but-unfinished ones as ``interrupted``. Returns how many runs
        were written. Never raises (failures are logged, retried later)."""
        written = 0
        with self._fold_lock:
            try:
                with contextlib.closing(dead_journals(self.journal_dir)) as journals:
                    for journal in journals:
                        written += self._recover_one(journal)
            except Exception:
                _errors.exception("recover", "otel-runs: recovering journals in %s failed",
                                  self.journal_dir)
        self._next_recover = time.monotonic() + RECOVER_INTERVAL
        return written

    def _commit(self, entries: list[_Pending]) -> int:
        """Write ``entries`` to the branch: in the helper process when the batch
        is big enough to be worth it (see ``OTEL_RUNS_COMMIT_PROCESS``), else here."""
        if self._use_helper(len(entries)):
            helper = self._ensure_helper()
            if helper is not None:
                try:
                    return helper.write_batch([e.line for e in entries])
                except Exception:
                    self._helper = None  # a new helper for the retry
                    helper.close()
                    raise
        items = [(run, e.spans) for e in entries if (run := e.run()) is not None]
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
        return (self._helper is None and len(self._pending) >= HELPER_MIN_BATCH
                and self._use_helper(len(self._pending)))

    def _use_helper(self, batch: int) -> bool:
        if self._helper_failed or self.commit_process == "never":
            return False
        return self.commit_process == "always" or batch >= HELPER_MIN_BATCH

    def _recover_one(self, journal: DeadJournal) -> int:
        journal.read()
        items = journal.items()
        written = 0
        for start in range(0, len(items), MAX_BATCH):
            written += self.store.write_batch(items[start:start + MAX_BATCH])
        journal.remove()
        interrupted = len(journal.starts.keys() - journal.ends.keys())
        if interrupted:
            logger.warning("otel-runs: recorded %d run(s) as interrupted: %s", interrupted,
                           journal.reason)
        return written

    def _fold(self) -> bool:
        """Commit one batch of pending runs; False if the commit failed."""
        with self._fold_lock:
            with self._cond:
                batch = list(self._pending.items())[:MAX_BATCH]
            if not batch:
                return True
            try:
                self._commit([entry for _, entry in batch])
            except Exception:
                self._failures += 1
                self._retry_at = time.monotonic() + _RETRY_DELAYS[
                    min(self._failures, len(_RETRY_DELAYS)) - 1]
                _errors.exception("commit", "otel-runs: committing %d run(s) to %s failed "
                                  "(kept in the journal, retrying)", len(batch), self.branch)
                return False
            self._failures = 0
            with self._cond:
                for run_id, entry in batch:
                    if self._pending.get(run_id) is entry:
                        del self._pending[run_id]
                if self._pending:
                    self._first_pending = time.monotonic()
                self._cond.notify_all()
            try:
                self._journal.committed([e.segment for _, e in batch if e.segment >= 0])
            except OSError:
                _errors.exception("journal-rotate", "otel-runs: journal upkeep in %s failed",
                                  self.journal_dir)
            return True

    # -- the background committer --------------------------------------------

    def _start_thread(self) -> None:
        with self._cond:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run_committer, daemon=True,
                                            name=f"otel-runs-ledger[{self.branch}]")
            self._thread.start()

    def _commit_due_locked(self, now: float) -> float:
        """When the pending batch should be committed (``inf``: nothing pending)."""
        if not self._pending:
            return float("inf")
        if self._failures:
            return max(self._first_pending + self.commit_interval, self._retry_at)
        if len(self._pending) >= MAX_BATCH:
            return now
        return self._first_pending + self.commit_interval

    def _run_committer(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    commit_due = self._commit_due_locked(now)
                    if now >= commit_due or now >= self._next_recover:
                        break
                    if self._helper_wanted_locked():
                        break
                    self._cond.wait(min(commit_due, self._next_recover) - now)
                if self._closed:
                    return
                # One clock reading: with a full batch the due time IS "now", so reading the
                # clock twice made this False forever and the thread spun, holding the GIL.
                now = time.monotonic()
                commit_now = now >= self._commit_due_locked(now)
                start_helper = self._helper_wanted_locked()
            if start_helper:
                with self._fold_lock:
                    self._ensure_helper()
            if time.monotonic() >= self._next_recover:
                self.recover()
            if commit_now:
                self._fold()

    # -- reading ----------------------------------------------------------------

    def _pending_runs(self) -> Iterator[dict[str, Any]]:
        """This process's uncommitted runs, newest first (built as consumed)."""
        with self._cond:
            entries = list(self._pending.values())
        entries.sort(key=lambda e: e.run_id, reverse=True)
        for entry in entries:
            run = entry.run()
            if run is not None:
                yield run

    def _pending_entry(self, run_id: str) -> _Pending | None:
        with self._cond:
            return self._pending.get(run_id)

    def get(self, run_id: str) -> Run | None:
        """The run with this id, or None. Raises ``InvalidRunId`` for a bad id."""
        validate_run_id(run_id)
        entry = self._pending_entry(run_id)
        if entry is not None and entry.run() is not None:
            return _to_run(entry.run())
        data = self.store.get(run_id)
        return None if data is None else _to_run(data)

    def spans(self, run_id: str) -> list[dict[str, Any]]:
        """The child spans recorded with the run (``span_to_dict`` records)."""
        validate_run_id(run_id)
        entry = self._pending_entry(run_id)
        if entry is not None:
            return list(entry.spans)
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
        return self._merge(mine, stored, limit)

    def search(self, text: str, limit: int = 10) -> list[Run]:
        """Runs where every word of ``text`` is a run id prefix, part of the subtype
        or starts a word of the summary (case-insensitive); newest first."""
        if limit <= 0 or not text.split():
            return []
        mine = list(itertools.islice((d for d in self._pending_runs() if _matches(d, text)),
                                     limit))
        stored = self.store.search(text, limit=limit)
        return self._merge(mine, stored, limit)

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
        stored = self.store.iter_runs(since=since, type=type)
        seen: set[str] = set()
        for data in heapq.merge(mine, stored, key=lambda d: str(d.get("run_id", "")),
                                reverse=True):
            rid = data.get("run_id") if isinstance(data, dict) else None
            if rid in seen:
                continue
            seen.add(rid)  # type: ignore[arg-type]
            run = _to_run(data)
            if run is not None:
                yield run

    @staticmethod
    def _merge(mine: list[dict[str, Any]], stored: Iterable[dict[str, Any]],
               limit: int) -> list[Run]:
        out: list[Run] = []
        seen: set[str] = set()
        for data in sorted([*mine, *stored], key=lambda d: str(d.get("run_id", "")),
                           reverse=True):
            rid = str(data.get("run_id", ""))
            if rid in seen:
                continue
            seen.add(rid)
            run = _to_run(data)
            if run is not None:
                out.append(run)
                if len(out) >= limit:
                    break
        return out

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
            logger.warning("otel-runs: %d run(s) not yet committed to %s; they stay in the "
                           "journal %s and are committed by the next process that opens it",
                           len(self._pending), self.branch, self.journal_dir)
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
    for ledger in _forking:
        ledger._after_fork_in_child()
    _forking.clear()
    _registry_lock = threading.Lock()


def _flush_at_exit() -> None:
    for ledger in list(_live_ledgers):
        if ledger._pid == os.getpid():
            try:
                ledger.flush(timeout=10.0)
            except Exception:  # pragma: no cover - best effort at exit
                logger.exception("otel-runs: flushing %r at exit failed", ledger)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
