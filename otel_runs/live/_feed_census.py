"""How many streams every process of a host has open on one feed: the streams' pacing
(``OTEL_RUNS_SSE_WAKEUPS``: all streams together wake about that often per second) is
then host-wide, as it is for one process, however many workers share the feed.

Each process with open streams keeps a file ``streams-<pid>`` in the feed directory
holding its count, with ``flock(LOCK_SH)`` on it for as long as it has it open; a file
nobody holds a lock on is a dead process's, and is removed by the next reader.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

__all__ = ["StreamCensus"]

_PREFIX = "streams-"
_WIDTH = 10
#: Seconds a host-wide total is reused before the files are read again.
_FRESH = 1.0


class StreamCensus:
    """This process's count in ``directory`` and the host's total (best effort: any
    failure counts this process only)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._others = 0
        self._read_at = -_FRESH

    def set(self, count: int) -> None:
        """Publish this process's number of open streams."""
        with self._lock:
            try:
                if self._fd is None:
                    if count == 0:
                        return
                    self._fd = self._create()
                os.pwrite(self._fd, b"%*d" % (_WIDTH, count), 0)  # fixed width: no truncation
            except OSError:
                pass

    def _create(self) -> int:
        """The count file, locked before it gets its name (so never taken for a dead one)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{_PREFIX}{os.getpid()}"
        tmp = self.directory / f".{_PREFIX}{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.replace(tmp, final)
        except OSError:
            os.close(fd)
            raise
        return fd

    def total(self, own: int) -> int:
        """``own`` plus the streams of the other live processes (read at most once a second)."""
        now = time.monotonic()
        if now - self._read_at >= _FRESH:
            self._read_at = now
            self._others = self._count_others()
        return own + self._others

    def _count_others(self) -> int:
        mine = f"{_PREFIX}{os.getpid()}"
        total = 0
        try:
            names = [n for n in os.listdir(self.directory) if n.startswith(_PREFIX) and n != mine]
        except OSError:
            return 0
        for name in names:
            path = self.directory / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # held: a live process
                    raw = os.pread(fd, _WIDTH, 0).strip()
                    total += int(raw) if raw.isdigit() else 0
                else:  # nobody holds it: its process is gone
                    path.unlink(missing_ok=True)
            except OSError:
                pass
            finally:
                os.close(fd)
        return total

    def after_fork_in_child(self) -> None:
        """The parent's count file is the parent's."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._init_runtime()
