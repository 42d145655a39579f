"""Reading the feed file (:mod:`._feed`): a cursor that follows its records from a
position on, across rotation (the reader's side of the rotation protocol there).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ._feed import (
    _CHUNK,
    GENERATION_BYTES,
    FeedGap,
    Position,
    Record,
    _path,
    _sealed,
    generations,
    parse_records,
)

__all__ = ["FeedCursor"]


class FeedCursor:
    """Reads the feed's records from a position on, following rotation; not thread-safe."""

    def __init__(self, directory: str | os.PathLike[str], position: Position,
                 generation_bytes: int = GENERATION_BYTES) -> None:
        self.directory = Path(directory)
        self.gen, self.offset = position
        self.generation_bytes = generation_bytes
        self._fd: int | None = None
        self._fd_gen = -1
        self._drained = False

    @property
    def position(self) -> Position:
        """Where the next read starts (the end of the last record read)."""
        return self.gen, self.offset

    def read(self, max_events: int | None = None,
             until: Position | None = None) -> list[Record]:
        """The next complete records (at most ``max_events``, none past ``until``).
        Raises :class:`FeedGap` when the generation to read was deleted."""
        out: list[Record] = []
        while max_events is None or len(out) < max_events:
            if until is not None and self.position >= until:
                break
            fd = self._open()
            if fd is None:
                break
            st: os.stat_result | None = None
            if until is not None and until[0] == self.gen:
                end = until[1]  # complete up to there: no need to look
            else:
                st = os.fstat(fd)  # read what is there, no more (no big empty buffer)
                end = st.st_size
                if end <= self.offset:
                    if not self._move_on(fd, st):
                        break
                    continue
            records, consumed, rest = self._chunk(fd, end)
            if consumed:
                if max_events is not None and len(out) + len(records) > max_events:
                    records = records[:max_events - len(out)]
                    consumed = records[-1][0][1] - self.offset
                out += records
                self.offset += consumed
            elif st is None:
                break  # not a line end: nothing to read up to it
            elif rest:  # a line with no end yet: being written, or torn
                if self.offset + rest >= st.st_size and not self._final(fd):
                    break
                self.offset += rest  # torn at the end of a sealed generation, or garbage
        return out

    def _chunk(self, fd: int, end: int) -> tuple[list[Record], int, int]:
        """(records up to ``end``, bytes they span, bytes read after them that are no
        complete line)."""
        size = _CHUNK
        while True:
            want = min(size, end - self.offset)
            data = os.pread(fd, want, self.offset)
            records, consumed = parse_records(data, self.gen, self.offset)
            if consumed or len(data) < size or size > 2 * self.generation_bytes:
                return records, consumed, len(data) - consumed
            size *= 4  # one record longer than the chunk

    def _final(self, fd: int) -> bool:
        """Whether this generation can grow no more (sealed, no append in flight)."""
        if not _sealed(os.fstat(fd)):
            return False
        if not self._drained:
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)
            self._drained = True
            return False  # read once more: what was in flight is complete now
        return True

    def _open(self) -> int | None:
        if self._fd is not None and self._fd_gen == self.gen:
            return self._fd
        self.close()
        if self.gen == 0:  # before the first generation: wait for it
            gens = generations(self.directory)
            if not gens:
                return None
            self.gen, self.offset = gens[0], 0
        try:
            self._fd = os.open(_path(self.directory, self.gen), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FeedGap(f"generation {self.gen} of {self.directory} is gone") from None
        self._fd_gen, self._drained = self.gen, False
        return self._fd

    def _move_on(self, fd: int, st: os.stat_result) -> bool:
        """At the end of this generation for now: True when there is more to read
        (it is complete and the next one exists)."""
        if not _sealed(st) and st.st_size < self.generation_bytes:
            return False
        if not _path(self.directory, self.gen + 1).exists():
            newest = generations(self.directory)
            if newest and newest[-1] > self.gen + 1:
                raise FeedGap(f"generation {self.gen + 1} of {self.directory} is gone")
            return False  # the next one is being started
        if not self._drained:  # sure no append is in flight, then read it to its end
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)
            self._drained = True
            return True
        self.gen, self.offset = self.gen + 1, 0
        return True

    def close(self) -> None:
        """Close the descriptor (reading again opens it again)."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd, self._fd_gen = None, -1
