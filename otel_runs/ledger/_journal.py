"""The write-ahead journal: finished runs (and start markers) on disk before the
tracked block returns, folded into git commits later.

Layout, under ``<git common dir>/otel-runs/journal-<branch>-<hash>/``:

* ``<writer>.lock`` — one per live writer (a process's :class:`JournalWriter`),
  held with ``flock(LOCK_EX)`` for the writer's whole life. Its content is a JSON
  header (pid, process start time, host). A lock that can be taken means its
  writer is gone: the kernel drops an ``flock`` when the process dies, so pid reuse
  cannot make a dead writer look alive.
* ``<writer>.<segment>.jsonl`` — the writer's append-only segments, one JSON
  object a line: ``{"e": "start", "run": {...}}`` when a run starts and
  ``{"e": "end", "run": {...}, "spans": [...], "output": [...]}`` when it ends, and
  ``{"e": "out", "run_id": "...", "lines": [...]}`` chunks of a run's output while it
  runs, and ``{"e": "out", "run_id": "...", "lines": [], "spans": [...], "events": [...]}``
  what a long run did so far (both kept until its end record, which holds the output,
  every child span and every event, is written; its ``output`` is the kept lines, or,
  when they are one chunk's, the same as columns: ``_output_lines.kept_json``) (``run``: a
  ``Run.to_dict()``, the same text the live feed sends; or ``span``: a run span's raw
  data, see ``_journal_records``; ``spans``: the child spans). A line is written
  with one ``write()`` on an ``O_APPEND`` descriptor, so a completed write survives
  the death of the process (and, in ``fsync`` mode, a power loss: writers share
  one ``fdatasync`` per group). A torn last line (killed mid-write) is ignored: its
  block had not returned.

A segment is deleted once every run ended in it is committed; when a writer moves
to a new segment it first copies the start markers of its still-open runs there.

A failed append (disk full, read-only file system) never leaves a torn line in the
middle of a segment: the segment is truncated back to its size before the write,
or, if that fails too, the writer moves to a new segment on its next append. The
reading side (recovery of dead journals) is ``_journal_dead``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from ._errors import LedgerError
from ._git import fsync_dir
from ._journal_dead import DeadJournal, dead_journals

__all__ = ["DeadJournal", "JournalUnavailable", "JournalWriter", "dead_journals", "encode_line",
           "process_start_time"]

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


class JournalUnavailable(LedgerError):  # noqa: N818 - reads as what happened
    """A run could not be written to the journal (disk full, read-only ``.git``...).

    Raised only with ``OTEL_RUNS_ON_JOURNAL_ERROR=raise``; the run is still kept in
    memory, journaled again and committed when writing works. ``run_id`` and
    ``journal_dir`` say which; the ``OSError`` is the ``__cause__``.
    """

    def __init__(self, run_id: str, journal_dir: Path, error: BaseException, what: str) -> None:
        self.run_id, self.journal_dir = run_id, journal_dir
        super().__init__(f"could not journal the {what} of run {run_id} in {journal_dir}: "
                         f"{error} (OTEL_RUNS_ON_JOURNAL_ERROR=raise; the run is kept in memory "
                         "and committed when writing works again)")


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
        self._read_lock = threading.Lock()
        self._read_fds: dict[int, int] = {}  # segment -> descriptor for read_back
        self._writer_id: str | None = None
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._segment = 0  # the current segment's number
        self._numbers = 0  # the last segment number handed out (failed attempts use one too)
        self._size = 0
        self._written = 0  # lines written (all segments)
        self._synced = 0  # lines known to be on stable storage
        self._syncing = False
        #: fdatasync calls made for appends (group commit: fewer than fsynced appends).
        self.syncs = 0
        self._open_runs: dict[str, bytes] = {}  # run_id -> its start line
        self._uncommitted: dict[int, int] = {}  # segment -> ended runs not yet committed
        #: run_id -> segments holding output chunks of that open run (each counted in
        #: ``_uncommitted`` until the run's end record, which holds its output, is written).
        self._output_segments: dict[str, list[int]] = {}

    # -- identity and files ------------------------------------------------

    @property
    def writer_id(self) -> str | None:
        """This writer's id (``<pid>-<start>-<random>``), once it has written."""
        return self._writer_id

    def _segment_path(self, segment: int) -> Path:
        return self.directory / f"{self._writer_id}.{segment:06d}.jsonl"

    def _open_locked(self) -> None:
        """Create the lock file (locked before it gets its name) if there is none yet,
        then the next segment (after a failure either step is tried again)."""
        if self._writer_id is None:
            self._create_lock_locked()
        self._start_segment_locked()

    def _create_lock_locked(self) -> None:
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

    def _start_segment_locked(self) -> None:
        """Make a new segment (with the start markers of the open runs) the current one;
        on failure the new file is removed and the current segment stays."""
        self._numbers += 1
        segment = self._numbers
        path = self._segment_path(segment)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                     0o644)
        data = b"".join(self._open_runs.values())
        try:
            if data:
                _write_all(fd, data)
            if self.fsync:
                os.fdatasync(fd)
                fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            try:
                path.unlink()
            except OSError:  # it stays, holding only start markers (or a torn last one)
                self._uncommitted.setdefault(segment, 0)
            raise
        old = self._fd
        self._fd, self._segment, self._size = fd, segment, len(data)
        self._uncommitted.setdefault(segment, 0)
        if old is not None:
            os.close(old)

    # -- appends -------------------------------------------------------------

    def append_start(self, run_id: str, line: bytes) -> None:
        """Record that run ``run_id`` started (``line``: its ``start`` record; for crash
        recovery, never fsynced). Raises ``OSError`` if it cannot be written."""
        with self._lock:
            self._write_locked(line)
            self._open_runs[run_id] = line

    def forget_start(self, run_id: str) -> None:
        """Run ``run_id`` ended without an end record here (it could not be written)."""
        with self._lock:
            self._open_runs.pop(run_id, None)
            self._release_output_locked(run_id)

    def append_output(self, run_id: str, line: bytes) -> None:
        """Append an ``out`` record (a chunk of an open run's output lines or child spans;
        never fsynced). Its segment is kept until the run's end record is written; a
        chunk of a run that is not open here (it ended meanwhile) is not written.
        Raises ``OSError``."""
        with self._lock:
            if run_id not in self._open_runs:
                return
            self._write_locked(line)
            segment = self._segment
            self._uncommitted[segment] = self._uncommitted.get(segment, 0) + 1
            self._output_segments.setdefault(run_id, []).append(segment)

    def _release_output_locked(self, run_id: str) -> None:
        for segment in self._output_segments.pop(run_id, ()):
            if segment in self._uncommitted:
                self._uncommitted[segment] -= 1

    def _write_locked(self, line: bytes) -> None:
        """Append ``line`` to the current segment (the caller holds the lock). On
        failure nothing of it stays: the segment is truncated back, or abandoned."""
        if self._fd is None:
            self._open_locked()
        fd = self._fd
        assert fd is not None
        try:
            _write_all(fd, line)
        except OSError:
            try:
                os.ftruncate(fd, self._size)
            except OSError:  # a torn line stays at its end: write the next ones elsewhere
                logger.warning("otel-runs: could not truncate journal segment %s after a "
                               "failed write; moving to a new segment",
                               self._segment_path(self._segment))
                self._fd = None
                os.close(fd)
            raise
        self._size += len(line)
        self._written += 1

    def append_end(self, run_id: str, line: bytes) -> int:
        """Durably append ``line`` (an ``end`` record) for a finished run; return the
        segment it went to. Raises ``OSError`` if it cannot be written (or synced)."""
        return self.append_end_at(run_id, line)[0]

    def append_end_at(self, run_id: str, line: bytes) -> tuple[int, int]:
        """:meth:`append_end`, returning ``(segment, offset of the line in it)``."""
        with self._lock:
            offset = self._size
            self._write_locked(line)
            mine = self._written
            segment = self._segment
            self._uncommitted[segment] = self._uncommitted.get(segment, 0) + 1
            self._open_runs.pop(run_id, None)
            self._release_output_locked(run_id)
            if self.fsync:
                try:
                    self._sync_upto_locked(mine)
                except OSError:  # not durable: the caller keeps it as unjournaled
                    self._uncommitted[segment] -= 1
                    raise
        return segment, offset

    def segment_file(self, segment: int) -> str:
        """The path of one of this writer's segments."""
        return str(self._segment_path(segment))

    def read_back(self, segment: int, offset: int, length: int) -> bytes:
        """The ``length`` bytes at ``offset`` of one of this writer's segments (a line
        :meth:`append_end_at` wrote and that is not committed yet); b"" if gone. One read
        descriptor per segment is kept until the segment is deleted."""
        try:
            with self._read_lock:
                fd = self._read_fds.get(segment)
                if fd is None:
                    fd = os.open(self._segment_path(segment), os.O_RDONLY | os.O_CLOEXEC)
                    self._read_fds[segment] = fd
                return os.pread(fd, length, offset)
        except (OSError, TypeError):
            return b""

    def _close_readers(self, segments: list[int] | None = None) -> None:
        with self._read_lock:
            for seg in list(self._read_fds) if segments is None else segments:
                fd = self._read_fds.pop(seg, None)
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass

    def _sync_upto_locked(self, target: int) -> None:
        """Group commit: one caller fsyncs for everyone who wrote before it."""
        while self._synced < target:
            if self._syncing:
                self._lock.wait()
                continue
            upto, fd = self._written, self._fd
            if fd is None:  # another writer's failure abandoned the segment meanwhile
                raise OSError(errno.EIO, "journal segment abandoned before its fdatasync")
            self._syncing = True
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
        """Runs ended in ``segments`` (one entry per run) are now in git (or kept in
        quarantine): move to a new segment when the current one is big, delete fully
        committed ones. Raises ``OSError`` if that upkeep fails (the counts are kept)."""
        with self._lock:
            for seg in segments:
                if seg in self._uncommitted:
                    self._uncommitted[seg] -= 1
            try:
                if self._fd is not None and self._size >= SEGMENT_BYTES:
                    while self._syncing:
                        self._lock.wait()
                    if self.fsync:
                        os.fdatasync(self._fd)
                        self._synced = self._written
                    self._start_segment_locked()
            finally:
                for seg, count in list(self._uncommitted.items()):
                    if count <= 0 and (seg != self._segment or self._fd is None):
                        self._segment_path(seg).unlink(missing_ok=True)
                        del self._uncommitted[seg]
                        self._close_readers([seg])

    @property
    def open_runs(self) -> int:
        """How many runs started here have not ended."""
        return len(self._open_runs)

    def close(self) -> bool:
        """Release the files. When every run ended here is committed and none is
        still open, the journal is deleted; otherwise the lock stays held until the
        process exits, after which any process recovers it. True if deleted."""
        with self._lock:
            if self._writer_id is None:
                return True
            clean = not self._open_runs and all(c <= 0 for c in self._uncommitted.values())
            if not clean:
                return False
            try:
                for seg in list(self._uncommitted):
                    self._segment_path(seg).unlink(missing_ok=True)
                (self.directory / f"{self._writer_id}.lock").unlink(missing_ok=True)
            except OSError:  # (read-only): the next process finds it empty and removes it
                logger.warning("otel-runs: could not remove the journal of this process in %s",
                               self.directory)
            if self._fd is not None:
                os.close(self._fd)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            self._close_readers()
            self._init_state()
            return True

    def reset_after_fork(self) -> None:
        """In a forked child: drop the parent's files (closing our copies of its
        descriptors, never unlocking them) and start afresh on the next append."""
        for fd in (self._fd, self._lock_fd, *self._read_fds.values()):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._read_fds = {}
        self._init_state()


def _write_all(fd: int, data: bytes) -> None:
    n = os.write(fd, data)
    if n == len(data):  # (what a regular file does unless the disk is full)
        return
    view = memoryview(data)[n:]
    while view:
        n = os.write(fd, view)
        view = view[n:]
