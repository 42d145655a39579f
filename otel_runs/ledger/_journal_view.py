"""Every writer's journal, followed incrementally: the runs all processes of this host
started or finished that git may not have yet.

:func:`journal_view` is the one :class:`JournalView` of a journal directory in this
process (a forked child starts a fresh one). :meth:`JournalView.read` refreshes it and
returns a :class:`ViewRead`. A refresh is one ``os.scandir`` and one ``stat`` per
segment; it reads only the bytes appended since the last one (per file: offset and
inode) and indexes complete lines (a torn last line waits for its newline). Readers
arriving while a refresh runs share the next one, so no read is served from a refresh
that started before the read did (read-your-writes across processes). A segment that
is gone drops its runs: its writer deletes it only after they are on the branch.

Per record the view keeps its run id and one int (file, offset, length, type/status
code): about 200 bytes. At most :data:`MAX_RECORDS` records are kept (the oldest finished
runs are forgotten first, and found again once committed); lines are decoded when read,
through a cache of at most ``CACHE_RUNS`` runs and ``CACHE_BYTES`` of their lines
(``_journal_view_read``).
"""

from __future__ import annotations

import bisect
import heapq
import json
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from .._ids import is_run_id
from .._ratelimit import RateLimitedLog
from ._journal_records import record_run_id
from ._journal_view_read import M16, DecodeCache, ViewRead, Writer

__all__ = ["MAX_RECORDS", "READ_CHUNK", "JournalView", "journal_view"]

logger = logging.getLogger("otel_runs.ledger")

#: Most journal records (a run's start or end) one view indexes (~200 bytes each).
MAX_RECORDS = 200_000
#: Most bytes read from a segment in one ``pread``.
READ_CHUNK = 1 << 20

#: Most output chunks indexed per open run (later ones are not shown until it ends).
MAX_OUTPUT_CHUNKS = 8_192
# The line prefix of an output chunk of an open run.
_OUT_HEAD = re.compile(rb'\{"e":"out","run_id":"([0-9a-fTZ-]{30})"')
# The line prefix otel-runs writes for run records (anything else is decoded in full).
_RUN_HEAD = re.compile(rb'\{"e":"(start|end)","run":\{"run_id":"([0-9a-fTZ-]{30})","type":"([^"\\]*)",'
                       rb'"subtype":"[^"\\]*(?:\\.[^"\\]*)*","status":"([a-z]*)"')


class _File:
    __slots__ = ("fid", "writer", "path", "inode", "offset", "seen", "records")

    def __init__(self, fid: int, writer: Writer, path: str, inode: int) -> None:
        self.fid, self.writer, self.path, self.inode = fid, writer, path, inode
        self.offset = 0  # bytes up to the last complete line read
        self.seen = 0  # bytes read (a torn last line included)
        self.records = 0  # records indexed from it


class JournalView:
    """The journals of ``directory`` as one index (thread-safe; see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._pid = os.getpid()
        self._log = RateLimitedLog(logger)
        self._cond = threading.Condition(threading.Lock())
        self._started = self._done = 0
        self._busy = False
        self._state = threading.RLock()
        self._files: dict[tuple[str, int], _File] = {}
        self._by_fid: dict[int, _File] = {}
        self._writers: dict[str, Writer] = {}
        self._next_fid = 0
        self._ends: dict[str, int] = {}  # run id -> location of its end record
        self._opens: dict[str, int] = {}  # run id -> location of its start (no end seen)
        self._outputs: dict[str, list[int]] = {}  # run id -> its output chunks (no end seen)
        self._order: list[str] = []  # every indexed run id, ascending (rebuilt when dirty)
        self._dirty = False
        self._codes: list[tuple[str | None, str | None]] = [(None, None)]  # 0: unknown
        self._code_of: dict[tuple[bytes | None, bytes | None], int] = {}
        self.cache = DecodeCache()
        #: Counters: bytes read from segments, lines indexed, refreshes, records forgotten
        #: past MAX_RECORDS, lines that are no run record, segments dropped (gone).
        self.bytes_read = self.lines_read = self.refreshes = 0
        self.evicted = self.bad_lines = self.files_dropped = 0

    @property
    def records(self) -> int:
        """Records indexed now (finished runs plus open ones)."""
        return len(self._ends) + len(self._opens)

    @property
    def files(self) -> int:
        """Segments followed now."""
        return len(self._files)

    def read(self) -> ViewRead:
        """Refresh (see :meth:`refresh`), then a read of the view (close it when done)."""
        self.refresh()
        return ViewRead(self)

    # -- refreshing -------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the view up to date with a refresh that starts after this call did:
        run one, or wait for the one that started after we arrived."""
        with self._cond:
            target = self._started + 1
            while self._done < target:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                self._started += 1
                mine = self._started
                self._cond.release()
                try:
                    self._scan()
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._done = mine
                    self._cond.notify_all()

    def _scan(self) -> None:
        with self._state:
            try:
                for _ in range(3):  # again when a file vanished midway (a new one may follow)
                    if not self._scan_once():
                        break
            except Exception:
                self._log.exception("view", "otel-runs: reading the journals in %s failed",
                                    self.directory)
            self._evict()
            if self._dirty:
                self._order = sorted(self._ends.keys() | self._opens.keys())
                self._dirty = False
            self.refreshes += 1

    def _scan_once(self) -> bool:
        listed: dict[tuple[str, int], os.DirEntry[str]] = {}
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    if not entry.name.endswith(".jsonl"):
                        continue
                    parts = entry.name.split(".")
                    if len(parts) == 3 and parts[2] == "jsonl" and parts[1].isdigit() \
                            and parts[0] and not entry.name.startswith("."):
                        listed[(parts[0], int(parts[1]))] = entry
        except (FileNotFoundError, NotADirectoryError):
            pass
        for key in [k for k in self._files if k not in listed]:
            self._drop(key)
        vanished = False
        for key in sorted(listed):  # a writer's segments in order: copied starts come later
            try:
                st = listed[key].stat()
            except FileNotFoundError:
                self._drop(key)
                vanished = True
                continue
            f = self._files.get(key)
            if f is not None and (f.inode != st.st_ino or st.st_size < f.offset):
                self._drop(key)  # replaced or cut back: read it afresh
                f = None
            if f is None:
                f = self._add(key, listed[key].path, st.st_ino)
            if st.st_size != f.seen and not self._read(f, st.st_size):
                self._drop(key)
                vanished = True
        return vanished

    def _add(self, key: tuple[str, int], path: str, inode: int) -> _File:
        writer = self._writers.get(key[0])
        if writer is None:
            writer = self._writers[key[0]] = Writer(self.directory, key[0])
        self._next_fid += 1
        f = self._files[key] = self._by_fid[self._next_fid] = _File(self._next_fid, writer,
                                                                     path, inode)
        writer.files += 1
        return f

    def _drop(self, key: tuple[str, int]) -> None:
        f = self._files.pop(key, None)
        if f is None:
            return
        del self._by_fid[f.fid]
        f.writer.files -= 1
        if f.writer.files <= 0:
            self._writers.pop(f.writer.wid, None)
        self.files_dropped += 1
        if f.records:
            gone = 0
            for table in (self._ends, self._opens):
                rids = [rid for rid, loc in table.items() if loc >> 96 == f.fid]
                for rid in rids:
                    del table[rid]
                gone += len(rids)
            for rid, chunks in list(self._outputs.items()):
                kept = [loc for loc in chunks if loc >> 96 != f.fid]
                if len(kept) != len(chunks):
                    if kept:
                        self._outputs[rid] = kept
                    else:
                        del self._outputs[rid]
            if gone:
                self._dirty = True
                if gone * 2 > self.records:
                    self._compact()

    def _read(self, f: _File, size: int) -> bool:
        """Index the complete lines appended to ``f`` up to ``size``; False if it is gone."""
        try:
            fd = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            if os.fstat(fd).st_ino != f.inode:
                return False
            pos, buf = f.offset, b""
            while pos + len(buf) < size:
                chunk = os.pread(fd, min(READ_CHUNK, size - pos - len(buf)), pos + len(buf))
                if not chunk:
                    break
                self.bytes_read += len(chunk)
                buf = buf + chunk if buf else chunk
                last = buf.rfind(b"\n")
                if last >= 0:
                    self._lines(f, buf, last, pos)
                    pos += last + 1
                    buf = buf[last + 1:]
                    self._evict()
            f.offset, f.seen = pos, pos + len(buf)
            return True
        finally:
            os.close(fd)

    def _lines(self, f: _File, buf: bytes, last: int, base: int) -> None:
        start = 0
        while start < last:
            nl = buf.index(b"\n", start)
            if nl > start:
                self._line(f, buf, start, nl, base)
            start = nl + 1

    def _line(self, f: _File, buf: bytes, start: int, end: int, base: int) -> None:
        if buf.startswith(b'{"e":"out"', start):
            out = _OUT_HEAD.match(buf, start, end)
            if out is not None and (rid := out.group(1).decode()) not in self._ends:
                chunks = self._outputs.setdefault(sys.intern(rid), [])
                if len(chunks) < MAX_OUTPUT_CHUNKS:
                    f.records += 1
                    # (the low bit: a chunk of child spans, not lines; see spans_line)
                    spans = buf.startswith(b',"lines":[],"spans":', out.end(), end)
                    chunks.append(((f.fid << 48 | (base + start)) << 32 | (end + 1 - start)) << 16
                                  | spans)
            return
        m = _RUN_HEAD.match(buf, start, end)
        if m is not None and is_run_id(rid := m.group(2).decode()):
            kind, rtype, status = m.group(1, 3, 4)
            code = self._code(rtype, status if kind == b"end" else None)
        else:
            try:
                kind, rid, rtype, status = _fields(json.loads(buf[start:end]))
            except (ValueError, RecursionError):
                kind = rid = None
            if kind not in ("start", "end") or not is_run_id(rid):
                self.bad_lines += 1
                return
            kind = kind.encode()
            code = self._code(_utf8(rtype), _utf8(status) if kind == b"end" else None)
        self.lines_read += 1
        f.records += 1
        rid = sys.intern(rid)
        loc = ((f.fid << 48 | (base + start)) << 32 | (end + 1 - start)) << 16 | code
        if kind == b"end":
            if self._opens.pop(rid, None) is None and rid not in self._ends:
                self._insert(rid)
            self._ends[rid] = loc
            self._outputs.pop(rid, None)  # (the end record holds the whole output)
        elif rid not in self._ends:
            if rid not in self._opens:
                self._insert(rid)
            self._opens[rid] = loc  # the newest copy (a new segment repeats open starts)

    def _insert(self, rid: str) -> None:
        if self._dirty:
            return  # rebuilt after the refresh
        if not self._order or rid > self._order[-1]:
            self._order.append(rid)
        else:
            bisect.insort(self._order, rid)

    def _code(self, rtype: bytes | None, status: bytes | None) -> int:
        """The small int that stands for ``(type, status)`` (0: unknown, read the line)."""
        code = self._code_of.get((rtype, status))
        if code is None:
            if len(self._codes) > M16 or rtype is None:
                return 0
            code = self._code_of[(rtype, status)] = len(self._codes)
            self._codes.append((rtype.decode("utf-8", "replace"),
                                None if status is None else status.decode("utf-8", "replace")))
        return code

    def _evict(self) -> None:
        """Past :data:`MAX_RECORDS` records, forget the oldest (finished runs first) down
        to 90% of it (checked after each chunk read, and after each refresh)."""
        excess = self.records - MAX_RECORDS
        if excess <= 0:
            return
        excess = self.records - (MAX_RECORDS - MAX_RECORDS // 10)
        for table in (self._ends, self._opens):
            victims = heapq.nsmallest(min(max(excess, 0), len(table)), table)
            for rid in victims:
                del table[rid]
                self._outputs.pop(rid, None)
            excess -= len(victims)
            self.evicted += len(victims)
        self._compact()
        self._log.warning("evicted", "otel-runs: the journals in %s hold more than %d records; "
                          "the oldest are not shown until they are committed", self.directory,
                          MAX_RECORDS)

    def _compact(self) -> None:
        """After many deletions: tables sized to what they hold (dicts never shrink)."""
        self._ends, self._opens = dict(self._ends), dict(self._opens)
        self._outputs = {rid: chunks for rid, chunks in self._outputs.items()
                         if rid in self._opens or rid not in self._ends}
        self._dirty = True


def _utf8(value: Any) -> bytes | None:
    return value.encode("utf-8", "replace") if isinstance(value, str) else None


def _fields(rec: Any) -> tuple[Any, Any, Any, Any]:
    """``(kind, run id, type, status)`` of a decoded journal record (unchecked)."""
    if not isinstance(rec, dict):
        return None, None, None, None
    kind, rid = rec.get("e"), record_run_id(rec)
    run = rec.get("run")
    if isinstance(run, dict):
        return kind, rid, run.get("type"), run.get("status")
    span = rec.get("span") if isinstance(rec.get("span"), dict) else {}
    attrs = span.get("attrs") if isinstance(span.get("attrs"), dict) else {}
    status = "running" if span.get("end") is None else attrs.get("run.status", "ok")
    return kind, rid, attrs.get("run.type"), status


_views: dict[str, JournalView] = {}
_views_lock = threading.Lock()


def journal_view(directory: str | os.PathLike[str]) -> JournalView:
    """The shared :class:`JournalView` of a journal directory in this process."""
    key = str(directory)
    with _views_lock:
        view = _views.get(key)
        if view is None or view._pid != os.getpid():
            view = _views[key] = JournalView(Path(key))
        return view


def _after_fork_in_child() -> None:
    global _views_lock
    _views_lock = threading.Lock()
    _views.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
