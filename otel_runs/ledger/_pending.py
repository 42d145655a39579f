"""The runs a process finished and has not committed yet.

Each :class:`~otel_runs.ledger.Ledger` keeps its own in a :class:`PendingQueue`
(in commit order; its committer takes batches from the front). The queues are
also shared, process-wide, by journal directory (that is: git common dir, branch
and tag prefix), so that every Ledger of the same ledger opened in this process
reads the runs any of them finished (:func:`shared_entries`).

An entry keeps the journal line only; its record, Run dict and child spans are
decoded from it when first needed, so what a reader sees, what is committed and
what recovery would read back are the same data. Past ``KEEP_LINES`` pending runs,
a journaled run gets no entry at all: the queue keeps only where its line is in its
segment (16 bytes in an array; run id, record and all are in the line) and makes the
entries again, from the journal, when the committer takes the next batch. A backlog
(commits slower than runs for a while) costs 16 bytes a run. Readers find such runs
through the journal view (every process's journal, this one's included).
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from array import array
from collections import deque
from typing import Any, Protocol

from ._journal_records import decode_line, record_output, record_run_id, run_dict

#: Pending runs that have an entry in memory; later journaled ones are kept as positions.
KEEP_LINES = 4_000
#: Most bytes of spilled lines read back in one ``pread`` when making entries again.
REFILL_READ = 4 << 20

# The run id of an end record (the line otel-runs writes begins with it).
_HEAD_ID = re.compile(rb'^\{"e":"end","run":\{"run_id":"([0-9a-fTZ-]{1,64})"')

__all__ = ["KEEP_LINES", "Pending", "PendingQueue", "load_lines", "share", "shared_entries",
           "shared_entry"]


class _Source(Protocol):
    def read_back(self, segment: int, offset: int, length: int) -> bytes: ...

    def segment_file(self, segment: int) -> str: ...


class Pending:
    """A run finished here, not committed yet. ``segment`` is the journal segment its
    line is in, or -1 while it could not be journaled (it is only in memory)."""

    __slots__ = ("run_id", "_line", "segment", "failures", "solo_failures", "failed_mark",
                 "_rec", "_run", "_source", "_offset", "_length")

    def __init__(self, run_id: str, line: bytes, segment: int,
                 source: _Source | None = None, offset: int = 0) -> None:
        self.run_id, self.segment = run_id, segment
        #: A journaled line is not kept in memory when many runs are pending: ``source`` (the
        #: journal writer, shared by all entries) reads it back from its segment at ``offset``.
        self._source = source
        self._offset, self._length = offset, len(line)
        self._line: bytes | None = None if source is not None else line
        self.failures = 0  # commits of a batch holding it that failed
        self.solo_failures = 0  # ... of a batch of it alone
        self.failed_mark = -1  # the ledger's commit count when it first failed
        self._rec: dict[str, Any] | None = None
        self._run: dict[str, Any] | None = None

    @classmethod
    def from_journal(cls, run_id: str, segment: int, source: _Source, offset: int,
                     length: int) -> Pending:
        """An entry whose line is read from ``source`` when needed."""
        entry = cls(run_id, b"", segment, source, offset)
        entry._length = length
        return entry

    @property
    def line(self) -> bytes:
        """The journal line (read back from its segment if it was not kept in memory)."""
        if self._line is not None:
            return self._line
        assert self._source is not None
        return self._source.read_back(self.segment, self._offset, self._length)

    def location(self) -> tuple[str, int, int] | None:
        """``(segment file, offset, length)`` of a line not kept in memory, else None."""
        if self._line is not None or self._source is None:
            return None
        return (self._source.segment_file(self.segment), self._offset, self._length)

    def record(self) -> dict[str, Any]:
        """The journal record (decoded once); ``ValueError`` if unreadable."""
        if self._rec is None:
            self._rec = decode_line(self.line)
        return self._rec

    def run(self) -> dict[str, Any]:
        """The ``Run.to_dict()``; ``ValueError`` if no Run can be built (poison)."""
        if self._run is None:
            self._run = run_dict(self.record())
        return self._run

    def readable_run(self) -> dict[str, Any] | None:
        """:meth:`run`, or None for a record that cannot be read (for readers)."""
        try:
            return self.run()
        except ValueError:
            return None

    def spans(self) -> list[dict[str, Any]]:
        """The child spans journaled with the run."""
        try:
            spans = self.record().get("spans")
        except ValueError:
            return []
        return spans if isinstance(spans, list) else []

    def output(self) -> list[dict[str, Any]]:
        """The output lines journaled with the run."""
        try:
            return record_output(self.record())
        except ValueError:
            return []


def load_lines(entries: list[Pending]) -> None:
    """Read the lines of spilled entries back, one read per segment for the whole range they
    span (consecutive runs sit side by side in their segment): not one system call per run,
    each of which would give up the GIL to the request threads."""
    groups: dict[tuple[int, int], list[Pending]] = {}
    for entry in entries:
        if entry._line is None and entry._source is not None:
            groups.setdefault((id(entry._source), entry.segment), []).append(entry)
    for group in groups.values():
        start = min(e._offset for e in group)
        end = max(e._offset + e._length for e in group)
        source = group[0]._source
        assert source is not None
        data = source.read_back(group[0].segment, start, end - start)
        if len(data) != end - start:
            continue  # (gone: each entry reads its own line, and fails, as before)
        for entry in group:
            entry._line = data[entry._offset - start : entry._offset - start + entry._length]


class _Spill:
    """Spilled runs of one segment, in journal order: ``(offset, length)`` pairs of
    their end lines from ``head`` on."""

    __slots__ = ("segment", "positions", "head")

    def __init__(self, segment: int) -> None:
        self.segment = segment
        self.positions = array("Q")
        self.head = 0  # index of the next pair to take

    def __len__(self) -> int:
        return (len(self.positions) - self.head) // 2


class PendingQueue:
    """One Ledger's pending runs, in commit order; ``cond`` guards it (and is what its
    committer waits on). Entries by id, then (past ``KEEP_LINES``) spilled runs as
    journal positions only."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self._entries: dict[str, Pending] = {}
        self._spill: deque[_Spill] = deque()
        self._spilled = 0
        self._source: _Source | None = None
        #: When the oldest run of the current batch became pending (monotonic).
        self.first_at = 0.0
        #: How many pending runs are not in the journal (only in this process's memory).
        self.unjournaled = 0
        #: Times spilled lines could not be read back (they stay spilled; read again later).
        self.read_failures = 0

    def __len__(self) -> int:
        return len(self._entries) + self._spilled

    @property
    def spilled(self) -> int:
        """How many pending runs have no entry, only a journal position."""
        return self._spilled

    def add(self, entry: Pending) -> int:
        """Add (or replace) ``entry``; return how many are pending. Under ``cond``."""
        old = self._entries.pop(entry.run_id, None)
        if old is not None and old.segment < 0:
            self.unjournaled -= 1
        self._entries[entry.run_id] = entry
        if entry.segment < 0:
            self.unjournaled += 1
        return len(self)

    def add_journaled(self, run_id: str, line: bytes, segment: int, offset: int,
                      source: _Source) -> int:
        """Add a run journaled at ``offset`` of ``segment``: an entry while fewer than
        ``KEEP_LINES`` are pending, else only its position. Return how many are
        pending. Under ``cond``."""
        if len(self) < KEEP_LINES and not self._spill:
            return self.add(Pending(run_id, line, segment))
        self._source = source
        if not self._spill or self._spill[-1].segment != segment:
            self._spill.append(_Spill(segment))
        positions = self._spill[-1].positions
        positions.append(offset)
        positions.append(len(line))
        self._spilled += 1
        return len(self)

    def get(self, run_id: str) -> Pending | None:
        """The pending entry of ``run_id`` (None for a spilled run). Under ``cond``."""
        return self._entries.get(run_id)

    def snapshot(self) -> list[Pending]:
        """Every entry, in commit order (spilled runs not included). Under ``cond``."""
        return list(self._entries.values())

    def take(self, limit: int) -> list[Pending]:
        """The first ``limit`` runs (they stay pending until :meth:`remove`), making
        entries for spilled ones first if too few have one. Under ``cond``."""
        if len(self._entries) < limit and self._spilled:
            self._unspill(limit - len(self._entries))
        out: list[Pending] = []
        for entry in self._entries.values():
            if len(out) >= limit:
                break
            out.append(entry)
        return out

    def _unspill(self, wanted: int) -> None:
        """Entries for up to ``wanted`` spilled runs, from the oldest: one ``pread`` per
        segment read for their run ids (lines are read again when committed)."""
        source = self._source
        assert source is not None
        while wanted > 0 and self._spill:
            spill = self._spill[0]
            pos, head = spill.positions, spill.head
            stop = head
            first = pos[head]
            while stop < len(pos) and (stop - head) // 2 < wanted \
                    and pos[stop] + pos[stop + 1] - first <= REFILL_READ:
                stop += 2
            stop = max(stop, head + 2)  # (one line bigger than REFILL_READ: alone)
            end = pos[stop - 2] + pos[stop - 1]
            data = source.read_back(spill.segment, first, end - first)
            if len(data) != end - first:  # (could not read now: stays spilled, tried again)
                self.read_failures += 1
                return
            for i in range(head, stop, 2):
                offset, length = pos[i], pos[i + 1]
                run_id = _line_run_id(data[offset - first : offset - first + length])
                if run_id is None:  # not a run's end line: its commit quarantines it
                    run_id = f"unreadable@{spill.segment}:{offset}"
                if run_id not in self._entries:
                    self._entries[run_id] = Pending.from_journal(run_id, spill.segment, source,
                                                                 offset, length)
                else:  # (the same run twice: its segment still counts it once more)
                    self._entries[f"{run_id}@{spill.segment}:{offset}"] = Pending.from_journal(
                        run_id, spill.segment, source, offset, length)
            taken = (stop - head) // 2
            self._spilled -= taken
            wanted -= taken
            spill.head = stop
            if spill.head >= len(pos):
                self._spill.popleft()

    def requeue(self, entry: Pending) -> None:
        """Move ``entry`` to the back of the entries (others go first next time). Under
        ``cond``."""
        key = _key_of(self._entries, entry)
        if key is not None:
            del self._entries[key]
            self._entries[key] = entry

    def remove(self, entries: list[Pending]) -> list[int]:
        """Drop the entries (committed or quarantined) still pending; return the journal
        segments of those that were journaled, one per run. Under ``cond``."""
        segments: list[int] = []
        for entry in entries:
            key = _key_of(self._entries, entry)
            if key is not None:
                del self._entries[key]
                if entry.segment >= 0:
                    segments.append(entry.segment)
                else:
                    self.unjournaled -= 1
        return segments

    def is_pending(self, entry: Pending) -> bool:
        """Whether ``entry`` itself is still pending. Under ``cond``."""
        return _key_of(self._entries, entry) is not None

    def unjournaled_entries(self) -> list[Pending]:
        """The entries only in memory, oldest first. Under ``cond``."""
        return [e for e in self._entries.values() if e.segment < 0] if self.unjournaled else []

    def mark_journaled(self, entry: Pending, segment: int) -> bool:
        """``entry`` was journaled again, into ``segment``; False if it is no longer
        pending (committed meanwhile: the caller releases that segment). Under ``cond``."""
        if self._entries.get(entry.run_id) is not entry or entry.segment >= 0:
            return False
        entry.segment = segment
        self.unjournaled -= 1
        return True


def _key_of(entries: dict[str, Pending], entry: Pending) -> str | None:
    """The key ``entry`` is pending under (its run id, or that of a duplicate line)."""
    if entries.get(entry.run_id) is entry:
        return entry.run_id
    if entry._source is not None:
        key = f"{entry.run_id}@{entry.segment}:{entry._offset}"
        if entries.get(key) is entry:
            return key
    return None


def _line_run_id(line: bytes) -> str | None:
    """The run id of a journaled end line (None if it has none)."""
    match = _HEAD_ID.match(line)
    if match is not None:
        return match.group(1).decode("ascii")
    try:
        run_id = record_run_id(decode_line(line))
    except ValueError:
        return None
    return run_id if isinstance(run_id, str) else None


class _Owner(Protocol):
    pending: PendingQueue
    _pid: int


_sharing: dict[str, weakref.WeakSet[Any]] = {}
_sharing_lock = threading.Lock()


def share(key: str, owner: _Owner) -> None:
    """Let every Ledger of ``key`` (its journal directory) read ``owner``'s pending runs."""
    with _sharing_lock:
        _sharing.setdefault(key, weakref.WeakSet()).add(owner)


def shared_entries(key: str) -> list[Pending]:
    """The pending runs of every Ledger of ``key`` in this process."""
    with _sharing_lock:
        owners = list(_sharing.get(key, ()))
    pid = os.getpid()
    out: list[Pending] = []
    for owner in owners:
        if owner._pid != pid:  # a forked child's copy of the parent's: not ours
            continue
        queue = owner.pending
        with queue.cond:
            out.extend(queue.snapshot())
    return out


def shared_entry(key: str, run_id: str) -> Pending | None:
    """The pending entry of ``run_id`` in any Ledger of ``key`` in this process."""
    with _sharing_lock:
        owners = list(_sharing.get(key, ()))
    pid = os.getpid()
    for owner in owners:
        if owner._pid != pid:
            continue
        queue = owner.pending
        with queue.cond:
            entry = queue.get(run_id)
        if entry is not None:
            return entry
    return None


def _after_fork_in_child() -> None:
    global _sharing_lock
    _sharing_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
