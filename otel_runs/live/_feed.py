"""The feed file: one host-wide, ordered, append-only log of live events per ledger.

Where: ``<git common dir>/otel-runs/feed-<branch>-<hash>/``, a sibling of the ledger's
journal directory (:func:`feed_dir_of_journal`); the ledger never looks there.

What: generations ``<n>.feed`` (``n`` increases by one at each rotation; the first is
the time in ms, so ids keep increasing if the directory is ever wiped). A record is
one line ``<type> <length> <json>\\n`` appended with ONE ``write()`` on an ``O_APPEND``
descriptor, so records of every process land whole and in one order. The byte offset
is that order, the same for every reader: an event's id is ``<generation>-<offset of
its line's end>``, and "after id ``g-o``" is "read generation ``g`` from offset ``o``".
The length makes a torn line (a short write on a full disk) detectable: it is skipped.

Rotation, so that no append can land in a generation after readers moved past it:

- a writer appends holding ``flock(LOCK_SH)`` on the generation, and only while its
  ``fstat`` shows it under ``generation_bytes`` and not *sealed* (no write permission);
- the writer that finds it full takes the directory lock, ``LOCK_EX`` on the generation
  (no append is then in flight, and every later one sees the seal), seals it
  (``fchmod 0444``), creates the next one and deletes those older than ``keep``;
- a reader moves on only from a sealed generation, after taking ``LOCK_EX`` once itself
  and reading it to its end.

This module writes the feed (:class:`FeedWriter`); :mod:`._feed_cursor` reads it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["GENERATION_BYTES", "KEEP_GENERATIONS", "FeedGap", "FeedWriter", "Position",
           "Record", "encode_record", "end_position", "feed_dir_of_journal", "generations",
           "is_boundary"]

#: Bytes after which a generation is sealed and the next one started.
GENERATION_BYTES = 8 * 1024 * 1024
#: Generations kept for replay (the current one and the sealed ones before it).
KEEP_GENERATIONS = 3
_SUFFIX = ".feed"
_NAME_RE = re.compile(r"^(\d{1,20})\.feed$")
_TYPE_RE = re.compile(rb"[A-Za-z0-9_.:-]{1,64}")
#: Event types already checked against ``_TYPE_RE`` (a set lookup per record, not a match).
_known_types: set[bytes] = set()
_CHUNK = 256 * 1024
#: How often a writer checks that its generation file is still the one in the directory.
_RECHECK = 1.0

#: ``(generation, offset)``: a place in the feed (always at the end of a line).
Position = tuple[int, int]
#: ``(position after the record, event type, JSON data)``.
Record = tuple[Position, bytes, bytes]


class FeedGap(Exception):
    """The reader's generation (or the one after it) was deleted: events were lost to it."""


def feed_dir_of_journal(journal_dir: str | os.PathLike[str]) -> Path:
    """``.../otel-runs/journal-<x>`` -> ``.../otel-runs/feed-<x>``."""
    journal = Path(journal_dir)
    return journal.parent / ("feed-" + journal.name[len("journal-"):])


def _path(directory: Path, gen: int) -> Path:
    return directory / f"{gen:016d}{_SUFFIX}"


def generations(directory: Path) -> list[int]:
    """The generations in ``directory``, oldest first ([] when there is none)."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(m.group(1)) for m in map(_NAME_RE.match, names) if m)


def _sealed(st: os.stat_result) -> bool:
    return st.st_size > 0 and not st.st_mode & 0o222


def encode_record(event_type: str, data: bytes) -> bytes:
    """One feed line; raw CR/LF in ``data`` (whitespace of JSON text) become spaces."""
    if b"\n" in data or b"\r" in data:
        data = data.replace(b"\r", b" ").replace(b"\n", b" ")
    prefix = _prefixes.get(event_type)
    if prefix is None:
        prefix = event_type.encode("ascii") + b" "
        if len(_prefixes) < 256:
            _prefixes[event_type] = prefix
    return b"%s%d %s\n" % (prefix, len(data), data)


#: ``b"<type> "`` of the event types written so far.
_prefixes: dict[str, bytes] = {}


def parse_records(data: bytes, gen: int, base: int) -> tuple[list[Record], int]:
    """The complete records in ``data`` (read at offset ``base`` of ``gen``) and how many
    bytes they span; lines that are not well-formed records (torn) are skipped."""
    out: list[Record] = []
    end = data.rfind(b"\n") + 1
    offset = base
    for line in data[:end - 1].split(b"\n") if end else ():
        offset += len(line) + 1
        parts = line.split(b" ", 2)
        if len(parts) == 3:
            event_type, size, body = parts
            if size.isdigit() and int(size) == len(body) and (
                    event_type in _known_types or _TYPE_RE.fullmatch(event_type)):
                out.append(((gen, offset), event_type, body))
                if len(_known_types) < 256:
                    _known_types.add(event_type)
    return out, end


def is_boundary(directory: Path, position: Position, keep: int = KEEP_GENERATIONS) -> bool:
    """Whether ``position`` is a place in the feed a reader can resume from: the start or
    a line end of a kept generation (``(0, 0)``: before the first one, while none of them
    can have been deleted yet)."""
    gen, offset = position
    if gen == 0:
        return offset == 0 and len(generations(directory)) < keep
    try:
        fd = os.open(_path(directory, gen), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if offset > os.fstat(fd).st_size:
            return False
        return offset == 0 or os.pread(fd, 1, offset - 1) == b"\n"
    finally:
        os.close(fd)


def end_position(directory: Path) -> Position:
    """The end of the last complete line of the newest generation (``(0, 0)``: none yet)."""
    for gen in reversed(generations(directory)):
        try:
            fd = os.open(_path(directory, gen), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # deleted meanwhile: try the one before (or the list again)
        try:
            offset = os.fstat(fd).st_size
            while offset > 0:  # a line being written (or torn) at the end is not complete
                start = max(0, offset - _CHUNK)
                cut = os.pread(fd, offset - start, start).rfind(b"\n")
                if cut >= 0:
                    return gen, start + cut + 1
                offset = start
            return gen, 0
        finally:
            os.close(fd)
    return 0, 0


class FeedWriter:
    """Appends records to a feed directory; thread-safe (one per hub)."""

    def __init__(self, directory: str | os.PathLike[str],
                 generation_bytes: int = GENERATION_BYTES,
                 keep: int = KEEP_GENERATIONS) -> None:
        if generation_bytes < 1 or keep < 2:
            raise ValueError("generation_bytes must be >= 1 and keep >= 2")
        self.directory = Path(directory)
        self.generation_bytes = generation_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._gen = 0
        self._checked = 0.0

    def open(self) -> None:
        """Open (creating the directory and a first generation if needed): raises
        ``OSError`` when the feed cannot be written."""
        with self._lock:
            self._current()

    def append(self, record: bytes, position: bool = True) -> Position:
        """Append one record with one ``write()``; return the position after it
        (``position=False``: the generation and -1, one system call fewer)."""
        with self._lock:
            for _ in range(16):
                fd = self._fd
                if fd is None or time.monotonic() - self._checked >= _RECHECK:
                    fd = self._current()
                fcntl.flock(fd, fcntl.LOCK_SH)
                try:
                    st = os.fstat(fd)
                    size = st.st_size
                    # (under the size limit and not sealed: see _sealed)
                    if size < self.generation_bytes and (not size or st.st_mode & 0o222):
                        written = os.write(fd, record)
                        if written != len(record):
                            if written:
                                self._terminate(fd, record[written - 1:written])
                            raise OSError(errno.ENOSPC, f"short write to the live feed "
                                          f"{_path(self.directory, self._gen)}")
                        if not position:
                            return self._gen, -1
                        return self._gen, os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: ours ended there
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                self._rotate()
        raise OSError(errno.EAGAIN, f"no writable generation in {self.directory}")

    @staticmethod
    def _terminate(fd: int, last: bytes) -> None:
        """End a torn record's line, so that readers skip it and not the next one too."""
        if last != b"\n":
            try:
                os.write(fd, b"\n")
            except OSError:
                pass

    def close(self) -> None:
        """Close the descriptor (a later append opens the feed again)."""
        with self._lock:
            self._drop()

    def after_fork_in_child(self) -> None:
        """A forked child shares the parent's descriptor (and offset): use its own."""
        self._lock = threading.Lock()
        self._drop()

    def _drop(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd, self._gen = None, 0

    def _current(self) -> int:
        """The descriptor of the generation to append to (caller holds ``_lock``)."""
        now = time.monotonic()
        if self._fd is not None and now - self._checked >= _RECHECK:
            self._checked = now
            try:  # still the file of that name (not a directory wiped and made again)?
                if os.stat(_path(self.directory, self._gen)).st_ino != os.fstat(self._fd).st_ino:
                    self._drop()
            except FileNotFoundError:
                self._drop()
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._checked = now
            for gen in reversed(generations(self.directory)):
                try:
                    self._switch(gen, os.open(_path(self.directory, gen),
                                              os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
                    break
                except FileNotFoundError:
                    continue
                except PermissionError:  # sealed (0444): start the next one
                    self._gen = gen
                    self._rotate()
                    break
            else:
                self._rotate()  # no generation yet
            assert self._fd is not None
        return self._fd

    def _switch(self, gen: int, fd: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._gen = fd, gen

    @contextmanager
    def _directory_lock(self) -> Iterator[None]:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        """Seal the current generation and start the next (unless someone did already)."""
        with self._directory_lock():
            gens = generations(self.directory)
            newest = gens[-1] if gens else 0
            if newest > self._gen:  # another writer rotated (or started) the feed
                try:
                    self._switch(newest, os.open(_path(self.directory, newest),
                                                 os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
                    return
                except PermissionError:  # sealed and we are not root: it is full
                    self._gen = newest
            if self._fd is not None:
                self._seal(self._fd)
            nxt = self._gen + 1 if self._gen else max(newest + 1, time.time_ns() // 1_000_000)
            self._switch(nxt, os.open(_path(self.directory, nxt),
                                      os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                      0o644))
            for old in gens:
                if old <= nxt - self.keep:
                    try:
                        os.unlink(_path(self.directory, old))
                    except FileNotFoundError:
                        pass

    @staticmethod
    def _seal(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits for the appends in flight
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o222:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o222)
        except OSError:
            pass  # not ours to chmod: readers still move on once it is full
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
