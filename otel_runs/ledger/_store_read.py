"""Reading the ledger branch: run files by path, listings by walking commit messages.

:class:`StoreReader` is the read half of :class:`~otel_runs.ledger._store.GitStore`. Every
read goes through one long-lived ``git cat-file --batch``: a run file is read by path
(``<tree>:ledger/runs/.../<run_id>/run.json``, resolved by git itself), and listings walk the
branch history newest first reading only the commits' index lines (see ``_layout``).
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._ids import RUN_ID_PATTERN, validate_run_id
from .._model import Run
from ._errors import LedgerError
from ._filter import RunFilter
from ._git import CatFile
from ._layout import (
    OUTPUT_FILE,
    RUN_FILE,
    SPANS_FILE,
    IndexLine,
    parse_index_lines,
    parse_output,
    run_path,
)

__all__ = ["COUNT_TRAILER", "MAX_ID_TRAILER", "Commit", "StoreReader"]

logger = logging.getLogger("otel_runs")

#: Commit-message trailer: the largest run id in this commit and all its ancestors. Lets a
#: reader walking history newest-first stop as soon as nothing older can sort higher.
MAX_ID_TRAILER = "Otel-Runs-Max-Id"
#: Commit-message trailer: how many runs the commit's tree holds.
COUNT_TRAILER = "Otel-Runs-Count"
_TRAILER_RE = re.compile(rf"^{MAX_ID_TRAILER}: (\S+)$", re.MULTILINE)
_COUNT_RE = re.compile(rf"^{COUNT_TRAILER}: ([0-9]+)$", re.MULTILINE)
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(Run))
_RUN_ID_RE = re.compile(rf"^{RUN_ID_PATTERN}$", re.ASCII)
UNKNOWN_MAX = "~"  # sorts after every run id: "anything may be below this commit"
_HEX_RE = re.compile(r"^[0-9a-f]+$")
#: Parsed commits kept (commits never change; a small cache serves repeated listings).
COMMIT_CACHE_SIZE = 256


class Commit:
    """A parsed ledger commit: tree, parents, time, trailers and (lazily) its index lines."""

    __slots__ = ("oid", "tree", "parents", "time", "_message", "_lines", "max_id", "count")

    def __init__(self, oid: bytes, data: bytes) -> None:
        self.oid = oid
        head, _, message = data.partition(b"\n\n")
        self.tree = ""
        self.parents: list[str] = []
        self.time = 0
        for line in head.split(b"\n"):
            key, _, value = line.partition(b" ")
            if key == b"tree":
                self.tree = value.decode("ascii")
            elif key == b"parent":
                self.parents.append(value.decode("ascii"))
            elif key == b"committer":
                try:
                    self.time = int(value.rsplit(b" ", 2)[-2])
                except (ValueError, IndexError):
                    self.time = 0
        text = message.decode("utf-8", "replace")
        self._message = text
        self._lines: list[IndexLine] | None = None
        tail = max(0, len(text) - 300)
        m = _TRAILER_RE.search(text, tail)
        self.max_id = m.group(1) if m and _RUN_ID_RE.match(m.group(1)) else UNKNOWN_MAX
        c = _COUNT_RE.search(text, tail)
        #: Runs in this commit's tree per its trailer (None: no trailer).
        self.count: int | None = int(c.group(1)) if c else None

    @property
    def lines(self) -> list[IndexLine]:
        """The runs this commit recorded (parsed on first use)."""
        if self._lines is None:
            self._lines = parse_index_lines(self._message)
        return self._lines


class _Newest:
    """Heap key: the commit whose trailer bound is largest comes out first."""

    __slots__ = ("key", "seq", "commit")

    def __init__(self, key: str, seq: int, commit: Commit) -> None:
        self.key, self.seq, self.commit = key, seq, commit

    def __lt__(self, other: _Newest) -> bool:
        return (self.key, -self.seq) > (other.key, -other.seq)


class StoreReader:
    """Reads of the ledger branch ``ref`` in ``git_dir`` (thread-safe)."""

    git_dir: Path
    ref: str
    _oid_len: int
    _closed: bool

    def _init_reader(self) -> None:
        self._read_lock = threading.RLock()
        self._reader: CatFile | None = None
        self._commit_cache: OrderedDict[bytes, Commit] = OrderedDict()

    def _cat(self) -> CatFile:
        if self._closed:
            raise LedgerError(f"ledger store for {self.git_dir} is closed")
        if self._reader is None:
            self._reader = CatFile(self.git_dir)
        return self._reader

    def _tip(self) -> Commit | None:
        """The branch's current commit (read fresh every time; commits themselves are cached)."""
        if self._closed:
            raise LedgerError(f"ledger store for {self.git_dir} is closed")
        try:  # fast path: the loose ref file update-ref just wrote (git reads it the same way)
            loose = (self.git_dir / self.ref).read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            loose = ""
        if len(loose) == 2 * self._oid_len and _HEX_RE.match(loose):
            commit = self._commits([loose], quiet=True)[0]
            if commit is not None:
                return commit
        got = self._cat().read(self.ref)
        if got is None:
            return None
        oid, kind, data = got
        if kind != "commit":
            raise LedgerError(f"{self.ref} in {self.git_dir} points to a {kind}, not a commit")
        return self._remember_commit(Commit(oid, data))

    def _remember_commit(self, commit: Commit) -> Commit:
        self._commit_cache[commit.oid] = commit
        while len(self._commit_cache) > max(COMMIT_CACHE_SIZE, 1):
            self._commit_cache.popitem(last=False)
        return commit

    def _commits(self, oids: Sequence[str], quiet: bool = False) -> list[Commit | None]:
        """Parsed commits for hex oids (cached; missing ones are None)."""
        out: dict[str, Commit | None] = {}
        missing: list[str] = []
        for o in dict.fromkeys(oids):
            hit = self._commit_cache.get(bytes.fromhex(o))
            if hit is None:
                missing.append(o)
            else:
                out[o] = hit
        if missing:
            for oid, got in zip(missing, self._cat().read_many(missing), strict=True):
                if got is not None and got[1] == "commit":
                    out[oid] = self._remember_commit(Commit(got[0], got[2]))
                else:
                    out[oid] = None
                    if not quiet:
                        logger.warning("ledger %s: commit %s is missing or not a commit; "
                                       "skipped", self.git_dir, oid)
        return [out[o] for o in oids]

    def _files(self, tree: str, run_ids: Sequence[str], name: str) -> list[bytes | None]:
        """Contents of ``<run dir>/<name>`` in tree ``tree`` (hex) for each run (None: absent)."""
        got = self._cat().read_many([f"{tree}:{run_path(r, name)}" for r in run_ids])
        return [g[2] if g is not None and g[1] == "blob" else None for g in got]

    # -- queries -------------------------------------------------------------------------

    def _load_run(self, run_id: str, data: bytes | None) -> dict[str, Any] | None:
        if data is None:
            return None
        try:
            parsed = Run.from_dict(json.loads(data))
            run = {name: getattr(parsed, name) for name in _RUN_FIELDS}
        except (ValueError, TypeError, OverflowError) as exc:
            logger.warning("ledger %s: skipping corrupt run file for %s: %s", self.git_dir,
                           run_id, exc)
            return None
        if run["run_id"] != run_id:
            logger.warning("ledger %s: skipping run file at %s: it says run_id %r",
                           self.git_dir, run_id, run["run_id"])
            return None
        return run

    def _read_runs(self, tree: str, run_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        datas = self._files(tree, run_ids, RUN_FILE)
        return [self._load_run(r, d) for r, d in zip(run_ids, datas, strict=True)]

    def _tip_tree(self) -> str | None:
        tip = self._tip()
        return tip.tree if tip else None

    def get(self, run_id: str) -> dict[str, Any] | None:
        """The run dict recorded for ``run_id`` (validated), or None."""
        run_id = validate_run_id(run_id)
        with self._read_lock:
            tree = self._tip_tree()
            return self._read_runs(tree, [run_id])[0] if tree else None

    def output(self, run_id: str) -> list[dict[str, Any]] | None:
        """The output lines recorded with ``run_id`` (validated): [] if it printed nothing,
        None if the run is not on the branch."""
        run_id = validate_run_id(run_id)
        with self._read_lock:
            tree = self._tip_tree()
            if not tree:
                return None
            data, body = self._files(tree, [run_id], OUTPUT_FILE)[0], None
            if data is None:
                body = self._files(tree, [run_id], RUN_FILE)[0]
        if data is None:
            return None if body is None else []
        return parse_output(data)

    def spans(self, run_id: str) -> list[dict[str, Any]]:
        """Child span dicts recorded with ``run_id`` (validated); bad lines skipped with a warning."""
        run_id = validate_run_id(run_id)
        with self._read_lock:
            tree = self._tip_tree()
            data = self._files(tree, [run_id], SPANS_FILE)[0] if tree else None
        if data is None:
            return []
        out: list[dict[str, Any]] = []
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                span = json.loads(line)
            except ValueError:
                span = None
            if isinstance(span, dict):
                out.append(span)
            else:
                logger.warning("ledger %s: skipping bad span line %d of run %s", self.git_dir,
                               n, run_id)
        return out

    def contains(self, run_ids: Iterable[str]) -> set[str]:
        """The subset of ``run_ids`` (validated) recorded on the branch."""
        ids = [validate_run_id(r) for r in run_ids]
        if not ids:
            return set()
        with self._read_lock:
            tree = self._tip_tree()
            if tree is None:
                return set()
            datas = self._files(tree, ids, RUN_FILE)
        return {r for r, d in zip(ids, datas, strict=True) if d is not None}

    def _index(self) -> Iterator[tuple[str, IndexLine]]:
        """``(tip tree oid, index line)`` for every recorded run, by run id descending (lazy).

        Walks history newest first; a run is yielded once no unvisited commit can hold a larger
        id (each commit's trailer bounds the ids in it and its ancestors).
        """
        with self._read_lock:
            tip = self._tip()
        if tip is None:
            return
        rev = tip.tree
        heap: list[_Newest] = []
        counter = 0
        seen_commits: set[bytes] = {tip.oid}
        seen_runs: set[str] = set()
        pending: list[str] = []  # ascending; emit from the end
        lines: dict[str, IndexLine] = {}

        def push(c: Commit) -> None:
            nonlocal counter
            counter += 1
            heapq.heappush(heap, _Newest(c.max_id, counter, c))

        push(tip)
        while heap or pending:
            bound = heap[0].key if heap else ""
            while pending and pending[-1] >= bound:
                run_id = pending.pop()
                yield rev, lines.pop(run_id)
            if not heap:
                continue
            commit = heapq.heappop(heap).commit
            for line in commit.lines:
                if line.run_id not in seen_runs:
                    seen_runs.add(line.run_id)
                    lines[line.run_id] = line
                    bisect.insort(pending, line.run_id)
            parents = [p for p in commit.parents if bytes.fromhex(p) not in seen_commits]
            if parents:
                seen_commits.update(bytes.fromhex(p) for p in parents)
                with self._read_lock:
                    loaded = self._commits(parents)
                for parent in loaded:
                    if parent is not None:
                        push(parent)

    def _select(self, line_ok: Callable[[IndexLine], bool],
                run_ok: Callable[[dict[str, Any]], bool], limit: int | None,
                stop: Callable[[IndexLine], bool] = lambda line: False,
                ) -> Iterator[dict[str, Any]]:
        """Runs whose index line and data match, newest first, reading blobs in chunks."""
        found = 0
        chunk: list[str] = []
        revs: list[str] = [""]
        stream = self._index()

        def flush() -> Iterator[dict[str, Any]]:
            nonlocal found
            with self._read_lock:
                runs = self._read_runs(revs[-1], chunk)
            chunk.clear()
            for run in runs:
                if run is not None and run_ok(run) and (limit is None or found < limit):
                    found += 1
                    yield run

        for rev, line in stream:
            revs[-1] = rev
            if stop(line):
                break
            if not line_ok(line):
                continue
            chunk.append(line.run_id)
            want = 64 if limit is None else max(limit - found, 1)
            if len(chunk) >= want:
                yield from flush()
                if limit is not None and found >= limit:
                    stream.close()
                    return
        if chunk:
            yield from flush()

    def recent(self, limit: int = 50, type: str | None = None,
               status: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` runs (by run id), optionally of one type and/or status."""
        if limit <= 0:
            return []
        return list(self._select(
            lambda ln: (type is None or ln.type == type) and (status is None or ln.status == status),
            lambda r: (type is None or r["type"] == type) and (status is None
                                                                or r["status"] == status),
            limit))

    def matching(self, flt: RunFilter, limit: int | None) -> Iterator[dict[str, Any]]:
        """The newest ``limit`` runs of ``flt`` (None: all), newest first; the walk skips
        the lines above ``flt.hi`` unread and stops below ``flt.lo``."""
        return self._select(flt.line_ok, flt.run_ok, limit,
                            stop=lambda ln: bool(flt.lo) and ln.run_id < flt.lo)

    def search(self, text: str, limit: int = 10) -> list[dict[str, Any]]:
        """Newest runs where every word of ``text`` is a run id prefix, part of the subtype,
        or starts a word of the summary (case-insensitive)."""
        words = text.lower().split()
        if not words or limit <= 0:
            return []

        def matches(run_id: str, subtype: str, summary: str) -> bool:
            summary_words = re.findall(r"\w[\w.:/-]*", summary.lower())
            sub = subtype.lower()
            return all(run_id.lower().startswith(w) or w in sub
                       or any(sw.startswith(w) for sw in summary_words) for w in words)

        return list(self._select(
            lambda ln: matches(ln.run_id, ln.subtype, ln.summary) or not ln.summary_complete,
            lambda r: matches(r["run_id"], r["subtype"], r["summary"]),
            limit))

    def iter_runs(self, since: datetime | None = None,
                  type: str | None = None) -> Iterator[dict[str, Any]]:
        """Every run (optionally started at/after ``since``, of one type), newest first."""
        floor = ""
        if since is not None:
            if since.tzinfo is None:
                since = since.replace(tzinfo=timezone.utc)
            at = since.astimezone(timezone.utc)
            floor = at.strftime("%Y%m%dT%H%M%S") + f"{at.microsecond // 1000:03d}Z"
        return self._select(lambda ln: type is None or ln.type == type,
                            lambda r: type is None or r["type"] == type, None,
                            stop=lambda ln: bool(floor) and ln.run_id < floor)
