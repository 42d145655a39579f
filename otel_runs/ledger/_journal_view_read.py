"""Reading the journal view: writers' liveness, decoded lines, one read (:class:`ViewRead`).

The candidates of a read are taken under the view's lock, with descriptors of their
segments opened then, so their lines stay readable if a segment is deleted meanwhile
(its runs are on the branch by then); lines are decoded as the candidates are used,
through a small :class:`DecodeCache`. A start without an end is ``running`` while its
writer lives and ``interrupted`` once it is found dead (what recovery will commit: the
reason as summary, an ``interrupted`` event).
"""

from __future__ import annotations

import bisect
import fcntl
import json
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ._journal import process_start_time
from ._journal_dead import DeadJournal
from ._journal_records import decode_line, record_output, run_dict

if TYPE_CHECKING:
    from ._journal_view import JournalView

__all__ = ["CACHE_BYTES", "CACHE_RUNS", "LIVENESS_TTL", "DecodeCache", "Found", "ViewRead",
           "Writer", "unpack"]

#: Most decoded runs cached, and most bytes of their journal lines (longer lines: never).
CACHE_RUNS = 1_024
CACHE_BYTES = 1 << 20
#: Seconds a writer found alive is believed alive.
LIVENESS_TTL = 1.0

M16, _M32, _M48 = (1 << 16) - 1, (1 << 32) - 1, (1 << 48) - 1
_HOST = socket.gethostname()


def unpack(loc: int) -> tuple[int, int, int, int]:
    """A record's location as ``(file id, offset, length, type/status code)``."""
    return loc >> 96, (loc >> 48) & _M48, (loc >> 16) & _M32, loc & M16


class Writer:
    """A journal writer (``<pid>-<start ticks>-<random>``) and whether it lives."""

    __slots__ = ("directory", "wid", "pid", "start", "files", "next_check", "dead_at", "reason")

    def __init__(self, directory: Path, wid: str) -> None:
        parts = wid.split("-", 2)
        digits = len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit()
        self.directory, self.wid = directory, wid
        self.pid, self.start = (int(parts[0]), int(parts[1])) if digits else (0, 0)
        self.files = 0  # its segments in the view
        self.next_check = 0.0
        self.dead_at: str | None = None  # when found dead (ISO): its open runs are interrupted
        self.reason = ""

    def alive(self) -> bool:
        """Whether its process lives (a live answer is cached ``LIVENESS_TTL``; death is final)."""
        if self.dead_at is not None:
            return False
        now = time.monotonic()
        if now < self.next_check:
            return True
        header: dict[str, Any] = {}
        if self._probe(header):
            self.next_check = now + LIVENESS_TTL
            return True
        self.dead_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.reason = DeadJournal(self.directory, self.wid, header, [], None).reason
        return False

    def _probe(self, header: dict[str, Any]) -> bool:
        """Its process on this host: pid and start time from ``/proc``; else (another host,
        or no such pid here: maybe hidden) whether its lock is held, tried without blocking
        on a read-only descriptor and released at once."""
        if self.pid == os.getpid() and self.start == (process_start_time() or 0):
            return True
        try:
            fd = os.open(self.directory / f"{self.wid}.lock", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # segments without a lock: a recovery or close that died midway
        try:
            try:
                got = json.loads(os.pread(fd, 4096, 0) or b"{}")
                header.update(got if isinstance(got, dict) else {})
            except ValueError:
                pass
            if header.get("host") == _HOST and self.start:
                started = process_start_time(self.pid)
                if started is not None:
                    return started == self.start  # another start time: the pid was reused
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
        finally:
            os.close(fd)  # (releases the lock if we took it)


class DecodeCache:
    """Decoded runs by location, least recently used first out (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: OrderedDict[int, tuple[dict[str, Any], int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, loc: int) -> dict[str, Any] | None:
        """The run decoded from the line at ``loc``, if cached."""
        with self._lock:
            hit = self._runs.get(loc)
            if hit is None:
                return None
            self._runs.move_to_end(loc)
            return hit[0]

    def put(self, loc: int, run: dict[str, Any], size: int) -> None:
        """Keep ``run`` (from a line of ``size`` bytes; one over 1/16 of the bound is not)."""
        if size > CACHE_BYTES // 16:
            return
        with self._lock:
            if loc in self._runs:
                return
            self._runs[loc] = (run, size)
            self.bytes += size
            while self._runs and (len(self._runs) > CACHE_RUNS or self.bytes > CACHE_BYTES):
                self.bytes -= self._runs.popitem(last=False)[1][1]


class Found(NamedTuple):
    """A run read from a journal: finished (an end record) or open (running/interrupted)."""

    run_id: str
    run: dict[str, Any]
    finished: bool


#: A read candidate: run id, location, finished, and its writer when that is dead.
_Cand = tuple[str, int, bool, "Writer | None"]


class ViewRead:
    """One read of a :class:`JournalView`: candidates are taken under its lock, lines are
    read through descriptors opened then (still readable if the segment is deleted)."""

    def __init__(self, view: JournalView) -> None:
        self._view = view
        self._fds: dict[int, int | None] = {}

    def __enter__(self) -> ViewRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the descriptors (idempotent)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            if fd is not None:
                os.close(fd)

    def _take(self, rid: str, ends_only: bool = False) -> _Cand | None:
        """Under the view's lock: ``(run id, location, finished, dead writer)`` of a run."""
        view = self._view
        loc = view._ends.get(rid)
        if loc is not None:
            return self._opened(rid, loc, True)
        loc = None if ends_only else view._opens.get(rid)
        return None if loc is None else self._opened(rid, loc, False)

    def _opened(self, rid: str, loc: int, finished: bool) -> _Cand | None:
        fid = loc >> 96
        f = self._view._by_fid.get(fid)
        if f is None or not self._open_fd(fid):
            return None
        dead = None if finished or f.writer.alive() else f.writer
        return rid, loc, finished, dead

    def _open_fd(self, fid: int) -> bool:
        """Under the view's lock: a descriptor for segment ``fid`` (False if it is gone)."""
        f = self._view._by_fid.get(fid)
        if f is None:
            return False
        if fid not in self._fds:
            fd: int | None = None
            try:
                fd = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC)
                if os.fstat(fd).st_ino != f.inode:
                    raise FileNotFoundError(f.path)  # (replaced)
            except OSError:  # gone: its runs are on the branch now
                if fd is not None:
                    os.close(fd)
                fd = None
            self._fds[fid] = fd
        return self._fds[fid] is not None

    def _decode(self, cand: _Cand, line: bytes | None = None) -> Found | None:
        rid, loc, finished, dead = cand
        cache = self._view.cache
        run = cache.get(loc)
        if run is None:
            try:
                line = self._line(loc) if line is None else line
                run = run_dict(decode_line(line)) if line else None
            except (ValueError, OSError):
                run = None
            if not isinstance(run, dict) or run.get("run_id") != rid:
                return None
            cache.put(loc, run, len(line or b""))
        if finished:
            return Found(rid, run, True)
        if dead is None:
            return Found(rid, {**run, "status": "running"}, False)
        events = run.get("events") if isinstance(run.get("events"), list) else []
        return Found(rid, {**run, "status": "interrupted", "summary": dead.reason,
                           "ended_at": None, "duration_ms": None,
                           "events": [*events, {"name": "interrupted", "timestamp": dead.dead_at,
                                                "attributes": {"reason": dead.reason}}]}, False)

    def _line(self, loc: int) -> bytes:
        fid, offset, length, _ = unpack(loc)
        fd = self._fds.get(fid)
        return b"" if fd is None else os.pread(fd, length, offset)

    def get(self, run_id: str) -> Found | None:
        """The journaled run ``run_id`` (finished, or open: running / interrupted; a
        running run with the events it journaled so far)."""
        with self._view._state:
            cand = self._take(run_id)
            chunks = [] if cand is None or cand[2] or cand[3] is not None else [
                loc for loc in self._view._outputs.get(run_id, ())
                if loc & 1 and self._open_fd(loc >> 96)]
        found = None if cand is None else self._decode(cand)
        if found is None or not chunks:
            return found
        for loc in reversed(chunks):  # the newest chunk with events has all of them
            try:
                events = decode_line(self._line(loc)).get("events")
            except (ValueError, OSError):
                continue
            if isinstance(events, list):
                return found._replace(run={**found.run, "events": events})
        return found

    def spans(self, run_id: str) -> list[dict[str, Any]] | None:
        """The child spans journaled with run ``run_id`` (with its end record, or those an
        open run journaled while running); None if the run is not journaled."""
        with self._view._state:
            cand = self._take(run_id)
            chunks = [] if cand is None or cand[2] else [
                loc for loc in self._view._outputs.get(run_id, ())
                if loc & 1 and self._open_fd(loc >> 96)]
        if cand is None:
            return None
        try:
            if not cand[2]:
                found: list[dict[str, Any]] = []
                for loc in chunks:
                    more = decode_line(self._line(loc)).get("spans")
                    if isinstance(more, list):
                        found.extend(s for s in more if isinstance(s, dict))
                return found
            spans = decode_line(self._line(cand[1])).get("spans")
        except (ValueError, OSError):
            return []
        return spans if isinstance(spans, list) else []

    def output(self, run_id: str) -> list[dict[str, Any]] | None:
        """The output lines journaled for run ``run_id`` (with its end record, or the
        chunks of an open run so far); None if the run is not journaled."""
        with self._view._state:
            cand = self._take(run_id)
            chunks = [] if cand is None or cand[2] else [
                loc for loc in self._view._outputs.get(run_id, ())
                if not loc & 1 and self._open_fd(loc >> 96)]
        if cand is None:
            return None
        try:
            if cand[2]:
                return record_output(decode_line(self._line(cand[1])))
            lines: list[dict[str, Any]] = []
            for loc in chunks:
                lines.extend(record_output(decode_line(self._line(loc))))
            return lines
        except (ValueError, OSError):
            return []

    def recent(self, limit: int, type: str | None = None,  # noqa: A002 - API name
               status: str | None = None) -> list[Found]:
        """The newest runs of the type and status: at least ``limit`` finished ones (if
        there are) and every open one newer than those, newest first."""
        want = limit
        while True:
            cands, exhausted = self._walk(want, type, status)
            found = [f for f in map(self._decode, cands) if f is not None
                     and (type is None or f.run.get("type") == type)
                     and (status is None or f.run.get("status") == status)]
            if exhausted or sum(f.finished for f in found) >= limit:
                return found
            want += limit  # (lines that could not be read: take more)

    def _walk(self, want: int, rtype: str | None, status: str | None
              ) -> tuple[list[_Cand], bool]:
        """Candidates newest first until ``want`` finished ones; True: all were seen."""
        view, out, finished = self._view, [], 0
        opens_only = status in ("running", "interrupted")
        with view._state:
            ids = sorted(view._opens, reverse=True) if opens_only else reversed(view._order)
            for rid in ids:
                loc = view._ends.get(rid)
                if loc is not None:
                    t, s = view._codes[loc & M16]
                    if opens_only or (status is not None and s is not None and s != status):
                        continue
                else:
                    loc = view._opens.get(rid)
                    if loc is None or (status is not None and not opens_only):
                        continue
                    t = view._codes[loc & M16][0]
                if rtype is not None and t is not None and t != rtype:
                    continue
                cand = self._take(rid)
                if cand is None or (status is not None and not cand[2]
                                    and (cand[3] is None) != (status == "running")):
                    continue
                out.append(cand)
                finished += cand[2]
                if finished >= want:
                    return out, False
        return out, True

    def runs(self, type: str | None = None,  # noqa: A002 - API name
             finished: bool | None = None, needles: tuple[bytes, ...] = (),
             lo: str = "", hi: str | None = None) -> Iterator[Found]:
        """Every journaled run (of ``type``; only finished / only open ones; with an id
        at or above ``lo`` and below ``hi``), newest first. The candidates (and their
        segments' descriptors) are taken now, their lines decoded as consumed; with
        ``needles``, only lines that hold each of them (lower-cased ASCII) are decoded."""
        view, cands = self._view, []
        with view._state:
            ids: Iterable[str]
            if finished is False:
                ids = sorted((r for r in view._opens if r >= lo and (hi is None or r < hi)),
                             reverse=True)
            elif lo or hi is not None:
                order = view._order
                first = bisect.bisect_left(order, lo) if lo else 0
                last = len(order) if hi is None else bisect.bisect_left(order, hi)
                ids = reversed(order[first:last])
            else:
                ids = reversed(view._order)
            for rid in ids:
                loc = view._ends.get(rid)
                if loc is None and finished:
                    continue
                loc = loc if loc is not None else view._opens.get(rid)
                t = None if loc is None else view._codes[loc & M16][0]
                if loc is None or (type is not None and t is not None and t != type):
                    continue
                cand = self._take(rid)
                if cand is not None and (finished is None or cand[2] == finished):
                    cands.append(cand)
        return self._decoded(cands, type, needles)

    def _decoded(self, cands: list[_Cand], rtype: str | None,
                 needles: tuple[bytes, ...]) -> Iterator[Found]:
        for cand in cands:
            line = None
            if needles and self._view.cache.get(cand[1]) is None:
                try:
                    line = self._line(cand[1])
                except OSError:
                    continue
                low = line.lower()
                if not all(n in low for n in needles):
                    continue
            found = self._decode(cand, line)
            if found is not None and (rtype is None or found.run.get("type") == rtype):
                yield found
