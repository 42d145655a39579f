"""The write-ahead journal: finished runs (and start markers) on disk before the
tracked block returns, folded into git commits later.

Layout, under ``<git common dir>/otel-runs/journal-<branch>-<hash>/``:

* ``<writer>.lock`` — one per live writer (a process's :class:`JournalWriter`),
  held with ``flock(LOCK_EX)`` for the writer's whole life. Its content is a JSON
  header (pid, process start time, host). A lock that can be taken means its
  writer is gone: the kernel drops an ``flock`` when the process dies, so pid reuse
  cannot make a dead writer look alive.
* ``<writer>.<segment>.jsonl`` — the writer's append-only segments, one JSON
  object a line: ``{"e": "start", "span": {...}}`` when a run starts and
  ``{"e": "end", "span": {...}, "spans": [...]}`` when it ends (``span``: the run
  span's raw data, see ``_journal_records``; or ``run``: a ``Run.to_dict()``;
  ``spans``: the child spans). A line is written
  with one ``write()`` on an ``O_APPEND`` descriptor, so a completed write survives
  the death of the process (and, in ``fsync`` mode, a power loss: writers share
  one ``fdatasync`` per group). A torn last line (killed mid-write) is ignored: its
  block had not returned.

A segment is deleted once every run ended in it is committed; when a writer moves
to a new segment it first copies the start markers of its still-open runs there.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._ids import InvalidRunId, validate_run_id
from ._git import _fsync_dir
from ._journal_records import record_run_id, run_dict

__all__ = ["DeadJournal", "JournalWriter", "dead_journals", "encode_line", "process_start_time"]

logger = logging.getLogger("otel_runs.ledger")

#: A writer moves to a new segment once its current one is this big.
SEGMENT_BYTES = 4 * 1024 * 1024
_RECOVER_LOCK = "recover.lock"


def process_start_time(pid: int | None = None) -> int | None:
    """The process's start time in clock ticks since boot (Linux), else None."""
    try:
        with open(f"/proc/{pid or os.getpid()}/stat", "rb") as fh:
            stat = fh.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


#: ``json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=repr)``, without
#: building an encoder per line (two lines per run, on the request path).
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=repr)


def encode_line(obj: Any) -> bytes:
    """One journal line: compact JSON and a newline."""
    return (_LINE_ENCODER.encode(obj) + "\n").encode("utf-8")


class JournalWriter:
    """This process's journal: appends start/end records, durably, thread-safe.

    Files are created on the first append (a process that only reads writes
    nothing). ``fsync=True`` makes :meth:`append_end` return only after the line
    is on stable storage; concurrent callers share one ``fdatasync``.
    """

    def __init__(self, directory: Path, *, fsync: bool = False) -> None:
        self.directory = directory
        self.fsync = fsync
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._writer_id: str | None = None
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._segment = 0
        self._size = 0
        self._written = 0  # lines written (all segments)
        self._synced = 0  # lines known to be on stable storage
        self._syncing = False
        #: fdatasync calls made for appends (group commit: fewer than fsynced appends).
        self.syncs = 0
        self._open_runs: dict[str, dict[str, Any]] = {}  # run_id -> start record
        self._uncommitted: dict[int, int] = {}  # segment -> ended runs not yet committed

    # -- identity and files ------------------------------------------------

    @property
    def writer_id(self) -> str | None:
        """This writer's id (``<pid>-<start>-<random>``), once it has written."""
        return self._writer_id

    def _segment_path(self, segment: int) -> Path:
        return self.directory / f"{self._writer_id}.{segment:06d}.jsonl"

    def _open_locked(self) -> None:
        """Create the lock file (locked before it gets its name) and segment 1."""
        self.directory.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        writer = f"{pid}-{process_start_time() or 0}-{os.urandom(3).hex()}"
        header = {"writer": writer, "pid": pid, "pid_start": process_start_time(),
                  "host": socket.gethostname(), "created": time.time()}
        tmp = self.directory / f".{writer}.lock.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, encode_line(header))
            os.replace(tmp, self.directory / f"{writer}.lock")
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self._writer_id, self._lock_fd = writer, fd
        self._start_segment_locked(1)

    def _start_segment_locked(self, segment: int) -> None:
        path = self._segment_path(segment)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        data = b"".join(encode_line({"e": "start", **rec}) for rec in self._open_runs.values())
        if data:
            _write_all(fd, data)
        if self.fsync:
            os.fdatasync(fd)
            _fsync_dir(self.directory)
        old = self._fd
        self._fd, self._segment, self._size = fd, segment, len(data)
        self._uncommitted.setdefault(segment, 0)
        if old is not None:
            os.close(old)

    # -- appends -------------------------------------------------------------

    def append_start(self, run_id: str, record: dict[str, Any]) -> None:
        """Record that run ``run_id`` started (for crash recovery; never fsynced)."""
        line = encode_line({"e": "start", **record})
        with self._lock:
            self._write_locked(line)
            self._open_runs[run_id] = record

    def _write_locked(self, line: bytes) -> None:
        """Append ``line`` to the current segment (the caller holds the lock)."""
        if self._fd is None:
            self._open_locked()
        assert self._fd is not None
        _write_all(self._fd, line)
        self._size += len(line)
        self._written += 1

    def append_end(self, run_id: str, line: bytes) -> int:
        """Durably append ``line`` (an ``end`` record of :func:`encode_line`) for a
        finished run; return the segment it went to."""
        with self._lock:
            self._write_locked(line)
            mine = self._written
            segment = self._segment
            self._uncommitted[segment] = self._uncommitted.get(segment, 0) + 1
            self._open_runs.pop(run_id, None)
            if self.fsync:
                self._sync_upto_locked(mine)
        return segment

    def _sync_upto_locked(self, target: int) -> None:
        """Group commit: one caller fsyncs for everyone who wrote before it."""
        while self._synced < target:
            if self._syncing:
                self._lock.wait()
                continue
            self._syncing = True
            upto, fd = self._written, self._fd
            assert fd is not None
            self._lock.release()
            try:
                os.fdatasync(fd)
                self.syncs += 1
            finally:
                self._lock.acquire()
                self._syncing = False
                self._lock.notify_all()
            self._synced = max(self._synced, upto)

    # -- after commits -------------------------------------------------------

    def committed(self, segments: list[int]) -> None:
        """Runs ended in ``segments`` (one entry per run) are now in git: move to a
        new segment when the current one is big, delete fully committed ones."""
        with self._lock:
            for seg in segments:
                if seg in self._uncommitted:
                    self._uncommitted[seg] -= 1
            if self._fd is not None and self._size >= SEGMENT_BYTES:
                while self._syncing:
                    self._lock.wait()
                if self.fsync:
                    os.fdatasync(self._fd)
                    self._synced = self._written
                self._start_segment_locked(self._segment + 1)
            for seg, count in list(self._uncommitted.items()):
                if count <= 0 and seg != self._segment:
                    self._segment_path(seg).unlink(missing_ok=True)
                    del self._uncommitted[seg]

    @property
    def open_runs(self) -> int:
        """How many runs started here have not ended."""
        return len(self._open_runs)

    def close(self) -> bool:
        """Release the files. When every run ended here is committed and none is
        still open, the journal is deleted; otherwise the lock stays held until the
        process exits, after which any process recovers it. True if deleted."""
        with self._lock:
            if self._fd is None:
                return True
            clean = not self._open_runs and all(c <= 0 for c in self._uncommitted.values())
            if not clean:
                return False
            for seg in list(self._uncommitted):
                self._segment_path(seg).unlink(missing_ok=True)
            (self.directory / f"{self._writer_id}.lock").unlink(missing_ok=True)
            os.close(self._fd)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            self._init_state()
            return True

    def reset_after_fork(self) -> None:
        """In a forked child: drop the parent's files (closing our copies of its
        descriptors, never unlocking them) and start afresh on the next append."""
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._init_state()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# -- recovery -------------------------------------------------------------------


@dataclass
class DeadJournal:
    """The journal of a writer that is gone, locked by us while we recover it."""

    directory: Path
    writer_id: str
    header: dict[str, Any]
    segments: list[Path]
    lock_fd: int | None
    ends: dict[str, dict[str, Any]] = field(default_factory=dict)
    starts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """Why its open runs are interrupted."""
        pid = self.header.get("pid") or self.writer_id.split("-", 1)[0]
        host = self.header.get("host")
        where = f" on {host}" if host and host != socket.gethostname() else ""
        return f"process {pid}{where} exited before the run finished"

    def read(self) -> None:
        """Parse the segments (bad lines are skipped with a warning)."""
        for path in self.segments:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            lines = data.split(b"\n")
            if lines and lines[-1]:
                lines.pop()  # torn last line: its block never returned
            for number, raw in enumerate(lines, 1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                    run_id = validate_run_id(record_run_id(rec))
                except (ValueError, KeyError, TypeError, AttributeError, InvalidRunId) as exc:
                    logger.warning("otel-runs: skipping bad journal line %s:%d (%s)",
                                   path, number, exc)
                    continue
                if rec.get("e") == "end":
                    self.ends[run_id] = rec
                elif rec.get("e") == "start":
                    self.starts[run_id] = rec

    def items(self) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """What to commit: every ended run, and every run started but not ended,
        marked ``interrupted`` with the reason."""
        out: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        for run_id, rec in self.ends.items():
            try:
                spans = rec.get("spans")
                out.append((run_dict(rec), spans if isinstance(spans, list) else []))
            except ValueError as exc:
                logger.warning("otel-runs: skipping unreadable journaled run %s: %s", run_id, exc)
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for run_id, start in self.starts.items():
            if run_id in self.ends:
                continue
            try:
                run = dict(run_dict(start))
            except ValueError as exc:
                logger.warning("otel-runs: skipping unreadable start of run %s: %s", run_id, exc)
                continue
            run.update(status="interrupted", summary=self.reason, ended_at=None,
                       duration_ms=None)
            events = run.get("events") if isinstance(run.get("events"), list) else []
            run["events"] = [*events, {"name": "interrupted", "timestamp": now,
                                       "attributes": {"reason": self.reason}}]
            out.append((run, []))
        return out

    def remove(self) -> None:
        """Delete the recovered journal (after its runs are committed)."""
        for path in self.segments:
            path.unlink(missing_ok=True)
        (self.directory / f"{self.writer_id}.lock").unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        """Unlock without deleting (recovery failed; someone retries later)."""
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def dead_journals(directory: Path) -> Iterator[DeadJournal]:
    """The journals in ``directory`` whose writer is gone, each locked while the
    caller recovers it (call ``remove()`` or ``release()``). Only one process
    recovers at a time; when another one is at it, nothing is yielded."""
    if not directory.is_dir():
        return
    guard = os.open(directory / _RECOVER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        segments: dict[str, list[Path]] = {}
        locks: set[str] = set()
        for entry in os.scandir(directory):
            name = entry.name
            if name.endswith(".jsonl") and name.count(".") == 2:
                segments.setdefault(name.split(".", 1)[0], []).append(Path(entry.path))
            elif name.endswith(".lock") and not name.startswith(".") and name != _RECOVER_LOCK:
                locks.add(name[: -len(".lock")])
        for writer in sorted(locks | set(segments)):
            # A writer names its lock file before it creates a segment, so look the
            # lock up again now: a segment listed without one is a true orphan.
            fd: int | None = None
            header: dict[str, Any] = {}
            try:
                fd = os.open(directory / f"{writer}.lock", os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = None
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)  # its writer is alive
                    continue
                try:
                    header = json.loads(os.pread(fd, 4096, 0) or b"{}")
                except ValueError:
                    header = {}
            # (segments without a lock file: a recovery or close that died midway)
            journal = DeadJournal(directory, writer, header if isinstance(header, dict) else {},
                                  sorted(segments.get(writer, [])), fd)
            try:
                yield journal
            finally:
                journal.release()
    finally:
        os.close(guard)
