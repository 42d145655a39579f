"""Building and checking one batch's commit, before any ref points to it.

:class:`BatchBuilder` is the commit half of :class:`~otel_runs.ledger._store.GitStore`: it
encodes a batch's runs into their files and index lines (rejecting every item that could never
be written), builds the commit adding the runs the tip lacks with ``git fast-import``, with its
max-id and run count trailers, and checks it with ``git diff-tree`` (additions only, exactly
the batch's files, the count the tip's plus the batch). Moving the branch and the tags is
``GitStore``'s job; layout and commit format in :mod:`._layout` and docs/ledger-storage.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from .._ids import validate_run_id
from .._model import Run
from ._errors import PoisonRecords
from ._fast_import import FastImport
from ._git import empty_tree, run_lines, split_z
from ._layout import OUTPUT_FILE, RUN_FILE, SPANS_FILE, format_index_line, format_output, run_path
from ._store_read import COUNT_TRAILER, MAX_ID_TRAILER, UNKNOWN_MAX, Commit, StoreReader

__all__ = ["BatchBuilder", "Prepared"]

#: run id -> (run dict, run.json bytes, spans.jsonl bytes or None, index line)
Prepared = dict[str, tuple[dict[str, Any], bytes, bytes | None, str, bytes | None]]


#: The run files' JSON: sorted keys, compact, UTF-8, finite numbers only (one encoder, not one
#: per call).
_dumps = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                          allow_nan=False).encode


class BatchBuilder(StoreReader):
    """The commit half of ``GitStore``: a batch's runs encoded, its commit built on the tip and
    checked (called by ``GitStore.write_batch`` under its write lock)."""

    fsync: bool
    _algo: str
    _counts: dict[str, int]  # commit hex -> runs in its tree (computed once)

    def _prepare(self, items: Sequence[tuple[Any, ...]]) -> Prepared:
        """``{run_id: (run dict, run.json, spans.jsonl | None, index line, output.log | None)}``,
        first wins;
        :class:`PoisonRecords` listing every item that can never be written."""
        out: Prepared = {}
        rejected: list[tuple[int, str, str]] = []
        for index, item in enumerate(items):
            rid: Any = None
            try:
                run, spans, *more = item
                rid = run.get("run_id") if isinstance(run, dict) else None
                run_id = validate_run_id(rid)
                if run_id in out:
                    continue
                Run.from_dict(run)  # a run file that could not be read back is never written
                body = (_dumps(run) + "\n").encode()
                span_blob = "".join(_dumps(s) + "\n" for s in spans).encode() if spans else None
                line = format_index_line(run)
                output = format_output(more[0]) if more and more[0] else None
            except Exception as exc:  # noqa: BLE001 - any failure makes the item poison
                shown = rid if isinstance(rid, str) and len(rid) <= 80 else repr(rid)[:80]
                rejected.append((index, shown, f"{type(exc).__name__}: {exc}"[:300]))
                continue
            out[run_id] = (run, body, span_blob, line, output)
        if rejected:
            raise PoisonRecords(rejected)
        return out

    def run_count(self, commit: Commit | None) -> int:
        """Runs in ``commit``'s tree: its trailer, else counted once with ``ls-tree``."""
        if commit is None:
            return 0
        if commit.count is not None:
            return commit.count
        key = commit.oid.hex()
        if key not in self._counts:
            names = split_z(run_lines(self.git_dir, "ls-tree", "-r", "-z", "--name-only",
                                      key, "--", "ledger/runs"))
            self._counts[key] = sum(1 for n in names if n.endswith(b"/" + RUN_FILE.encode()))
        return self._counts[key]

    def _build_commit(self, tip: Commit | None, prepared: Prepared) -> tuple[str, list[str]] | None:
        """Build (not reference) the commit adding the runs the tip lacks; None if none."""
        with FastImport(self.git_dir, fsync=self.fsync) as fi:
            present = (fi.present(tip.oid.hex(), [run_path(r) for r in prepared])
                       if tip is not None else set())
            new_ids = sorted(r for r in prepared if run_path(r) not in present)
            if not new_ids:
                return None
            files: dict[str, bytes] = {}
            for run_id in new_ids:
                _, body, span_blob, _, output = prepared[run_id]
                files[run_path(run_id, RUN_FILE)] = body
                if span_blob is not None:
                    files[run_path(run_id, SPANS_FILE)] = span_blob
                if output is not None:
                    files[run_path(run_id, OUTPUT_FILE)] = output
            max_id = max(new_ids[-1], self._max_id_below(tip)) if tip else new_ids[-1]
            count = self.run_count(tip) + len(new_ids)
            title = f"otel-runs: record {len(new_ids)} run{'s' if len(new_ids) != 1 else ''}"
            lines = [prepared[run_id][3] for run_id in reversed(new_ids)]
            message = (f"{title}\n\n" + "\n".join(lines)
                       + f"\n\n{MAX_ID_TRAILER}: {max_id}\n{COUNT_TRAILER}: {count}\n")
            commit = fi.commit(tip.oid.hex() if tip else None, message.encode("utf-8"), files,
                               int(time.time()))
        return commit, new_ids

    def _check_commit(self, tip: Commit | None, commit_hex: str, prepared: Prepared,
                      new_ids: list[str]) -> str | None:
        """Why the built commit must not be written (None: it holds exactly the tip's files plus
        the batch's, and says so in its count trailer)."""
        expected = {run_path(r, RUN_FILE) for r in new_ids}
        expected |= {run_path(r, SPANS_FILE) for r in new_ids if prepared[r][2] is not None}
        expected |= {run_path(r, OUTPUT_FILE) for r in new_ids if prepared[r][4] is not None}
        old = tip.tree if tip is not None else empty_tree(self._algo)
        fields = split_z(run_lines(self.git_dir, "diff-tree", "-r", "-z", "--no-renames",
                                   "--name-status", old, commit_hex))
        changed: dict[str, str] = {}
        for i in range(0, len(fields) - 1, 2):
            changed[fields[i + 1].decode("utf-8", "surrogateescape")] = fields[i].decode()
        dropped = sorted(p for p, s in changed.items() if s != "A")
        if dropped:
            return f"it would remove or change {len(dropped)} file(s), e.g. {dropped[0]}"
        if set(changed) != expected:
            missing = sorted(expected - set(changed))
            extra = sorted(set(changed) - expected)
            return (f"it adds {len(changed)} file(s) where {len(expected)} were expected "
                    f"(missing e.g. {missing[:1]}, unexpected e.g. {extra[:1]})")
        with self._read_lock:
            built = self._commits([commit_hex])[0]
        want = self.run_count(tip) + len(new_ids)
        if built is None or built.count != want:
            return f"its run count is {built.count if built else None}, expected {want}"
        return None

    def _max_id_below(self, commit: Commit) -> str:
        """The largest run id in ``commit`` and its ancestors (walks only trailer-less commits)."""
        best = ""
        todo = [commit]
        seen: set[bytes] = set()
        while todo:
            c = todo.pop()
            if c.oid in seen:
                continue
            seen.add(c.oid)
            if c.max_id != UNKNOWN_MAX:
                best = max(best, c.max_id)
                continue
            for line in c.lines:
                best = max(best, line.run_id)
            with self._read_lock:
                todo.extend(p for p in self._commits(c.parents) if p is not None)
        return best or "0"
