"""Reading the journals of writers that are gone (crash recovery).

:func:`dead_journals` finds them (a writer's lock that can be taken means its
process is gone) and locks each while the caller recovers it;
:meth:`DeadJournal.read` parses its segments. A line that cannot be used (not
JSON, not an object, a malformed run id, a record no Run can be built from) is
kept in :attr:`DeadJournal.bad` with the reason, for the caller to quarantine:
it never stops the other runs of the journal from being recovered.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._ids import is_run_id
from ._journal_records import decode_line, record_output, record_run_id, run_dict

__all__ = ["BadLine", "DeadJournal", "RecoveredRun", "dead_journals"]

_RECOVER_LOCK = "recover.lock"


@dataclass(frozen=True)
class BadLine:
    """A journal line that cannot be committed, and why."""

    line: bytes
    reason: str
    claimed_id: str | None  # what the line says its run id is (shown, maybe malformed)
    source: str  # ``<segment file>:<line number>``


@dataclass(frozen=True)
class RecoveredRun:
    """A run to commit from a dead journal: its Run dict, child spans and journal line."""

    run_id: str
    run: dict[str, Any]
    spans: list[dict[str, Any]]
    line: bytes
    source: str
    output: list[dict[str, Any]] = field(default_factory=list)


def _shown(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) and len(value) <= 80 else repr(value)[:80]


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
    bad: list[BadLine] = field(default_factory=list)
    #: Output chunks of runs (what an interrupted run printed until its process died).
    outputs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _lines: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """Why its open runs are interrupted."""
        pid = self.header.get("pid") or self.writer_id.split("-", 1)[0]
        host = self.header.get("host")
        where = f" on {host}" if host and host != socket.gethostname() else ""
        return f"process {pid}{where} exited before the run finished"

    def read(self) -> None:
        """Parse the segments; unusable lines go to :attr:`bad`. A torn last line (its
        writer was killed mid-``write()``: that block never returned) is ignored."""
        for path in self.segments:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            lines = data.split(b"\n")
            if lines and lines[-1]:
                lines.pop()  # torn last line: its block never returned
            for number, raw in enumerate(lines, 1):
                if raw.strip():
                    self._read_line(raw, f"{path.name}:{number}")

    def _read_line(self, raw: bytes, source: str) -> None:
        try:
            rec = decode_line(raw)
        except ValueError as exc:
            self.bad.append(BadLine(raw, str(exc), None, source))
            return
        claimed = record_run_id(rec)
        kind = rec.get("e")
        if not is_run_id(claimed):
            self.bad.append(BadLine(raw, f"malformed run id {_shown(claimed)!r}", _shown(claimed),
                                    source))
        elif kind == "out":
            self.outputs.setdefault(claimed, []).extend(record_output(rec))
        elif kind not in ("end", "start"):
            self.bad.append(BadLine(raw, f"unknown record kind {_shown(kind)!r}", claimed, source))
        else:
            (self.ends if kind == "end" else self.starts)[claimed] = rec
            self._lines[(kind, claimed)] = (raw, source)

    def runs(self) -> list[RecoveredRun]:
        """What to commit: every ended run, and every run started but not ended, marked
        ``interrupted`` with the reason. Records no Run can be built from go to :attr:`bad`."""
        out: list[RecoveredRun] = []
        for run_id, rec in self.ends.items():
            line, source = self._lines[("end", run_id)]
            try:
                spans = rec.get("spans")
                out.append(RecoveredRun(run_id, run_dict(rec),
                                        spans if isinstance(spans, list) else [], line, source,
                                        record_output(rec)))
            except ValueError as exc:
                self.bad.append(BadLine(line, str(exc), run_id, source))
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for run_id, start in self.starts.items():
            if run_id in self.ends:
                continue
            line, source = self._lines[("start", run_id)]
            try:
                run = dict(run_dict(start))
            except ValueError as exc:
                self.bad.append(BadLine(line, f"start marker: {exc}", run_id, source))
                continue
            run.update(status="interrupted", summary=self.reason, ended_at=None,
                       duration_ms=None)
            events = run.get("events") if isinstance(run.get("events"), list) else []
            run["events"] = [*events, {"name": "interrupted", "timestamp": now,
                                       "attributes": {"reason": self.reason}}]
            out.append(RecoveredRun(run_id, run, [], line, source, self.outputs.get(run_id, [])))
        return out

    def remove(self) -> None:
        """Delete the recovered journal (after its runs are committed or quarantined)."""
        for path in self.segments:
            path.unlink(missing_ok=True)
        (self.directory / f"{self.writer_id}.lock").unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        """Unlock without deleting (recovery failed; someone retries later)."""
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _open_guard(directory: Path) -> int | None:
    """The ``recover.lock`` descriptor (read-only if the directory is; None if absent there)."""
    try:
        return os.open(directory / _RECOVER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        try:  # a read-only journal directory: flock works on a read-only descriptor
            return os.open(directory / _RECOVER_LOCK, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None


class RecoveryBusy(Exception):  # noqa: N818 - a state, not a failure
    """Another process is recovering this journal directory right now."""


def dead_journals(directory: Path, *, busy_raises: bool = False) -> Iterator[DeadJournal]:
    """The journals in ``directory`` whose writer is gone, each locked while the
    caller recovers it (call ``remove()`` or ``release()``). Only one process
    recovers at a time; when another one is at it, nothing is yielded (or, with
    ``busy_raises``, :class:`RecoveryBusy` is raised)."""
    if not directory.is_dir():
        return
    guard = _open_guard(directory)
    if guard is None:  # read-only and never recovered: anything to do makes this fail
        if any(n.endswith((".jsonl", ".lock")) for n in os.listdir(directory)):
            raise OSError(f"cannot create {directory / _RECOVER_LOCK} to recover journals")
        return
    try:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if busy_raises:
                raise RecoveryBusy(str(directory)) from None
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
                fd = os.open(directory / f"{writer}.lock", os.O_RDONLY | os.O_CLOEXEC)
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
