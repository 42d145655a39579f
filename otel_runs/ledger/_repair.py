"""``otel-runs repair``: rebuild the ledger branch from the run tags and the last tip written.

When the branch is deleted (``git branch -D``), moved to a commit that lacks runs, or a commit
left runs out, the runs are still in git: every run tag points at the commit that recorded it,
and otel-runs remembers the last tip it wrote. Repair collects those commits, keeps the ones no
other contains (``git merge-base --independent``), and writes ONE commit whose parents are the
current tip (if any) and those heads, and whose tree is the current tree plus every run file the
heads or the tags hold that the tree lacks (first write wins: a run already on the branch is
never replaced). The commit is checked like any batch (``diff-tree``: additions only; the run
count trailer) and the branch moves with a compare-and-swap. Nothing else changes: not a tag,
not the user's HEAD, index or working tree.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from .._ids import InvalidRunId, validate_run_id
from ._errors import LedgerError
from ._fast_import import FastImport
from ._git import run_lines, split_z
from ._layout import OUTPUT_FILE, RUN_FILE, SPANS_FILE, run_path
from ._store import GitStore
from ._store_read import COUNT_TRAILER, MAX_ID_TRAILER, UNKNOWN_MAX
from ._tags import repair_pending_tags

__all__ = ["RepairResult", "repair_ledger"]

logger = logging.getLogger("otel_runs")
_RUNS_DIR = "ledger/runs"


@dataclass
class RepairResult:
    """What :func:`repair_ledger` did."""

    branch: str
    #: ``"up-to-date"`` (nothing missing) or ``"rebuilt"``.
    action: str
    #: Runs put back on the branch.
    restored: int
    #: Runs on the branch afterwards.
    runs: int
    commit: str | None

    def describe(self) -> str:
        if self.action == "up-to-date":
            return f"ledger {self.branch}: nothing to repair ({self.runs} runs)"
        return (f"ledger {self.branch} rebuilt at {(self.commit or '')[:12]}: "
                f"{self.restored} run(s) restored, {self.runs} runs on the branch")


def _files(store: GitStore, commit: str) -> dict[str, str]:
    """path -> blob id of every file under ``ledger/runs`` in ``commit``."""
    out: dict[str, str] = {}
    for entry in split_z(run_lines(store.git_dir, "ls-tree", "-r", "-z", "--full-tree", commit,
                                   "--", _RUNS_DIR)):
        meta, _, path = entry.partition(b"\t")
        parts = meta.split()
        if len(parts) == 3 and parts[1] == b"blob":
            out[path.decode("utf-8", "surrogateescape")] = parts[2].decode()
    return out


def _run_of(path: str) -> str | None:
    parts = path.split("/")
    try:
        return validate_run_id(parts[-2]) if len(parts) >= 2 else None
    except InvalidRunId:
        return None


def _tagged(store: GitStore) -> dict[str, str]:
    """run id -> commit of every run tag."""
    if store.tag_prefix is None:
        return {}
    full = f"refs/tags/{store.tag_prefix}"
    out: dict[str, str] = {}
    text = run_lines(store.git_dir, "for-each-ref", "--format=%(refname) %(objectname) "
                     "%(*objectname)", full).decode(errors="replace")
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        oid, _, peeled = rest.partition(" ")
        try:
            out[validate_run_id(name[len(full):])] = peeled.strip() or oid.strip()
        except InvalidRunId:
            continue
    return out


def _existing_commits(store: GitStore, oids: set[str]) -> list[str]:
    with store._read_lock:
        found = store._commits(sorted(oids), quiet=True)
    return [c.oid.hex() for c in found if c is not None]


def repair_ledger(project_root: str | os.PathLike[str], *, branch: str = "scp-ledger",
                  tag_prefix: str | None = "scp-run/") -> RepairResult:
    """Rebuild ``branch`` so it holds every run its tags and its last written tip hold."""
    with GitStore(project_root, branch=branch, tag_prefix=tag_prefix, fsync=True,
                  auto_maintenance=False) as store, store._write_lock, store._file_lock():
        with store._read_lock:
            tip = store._tip()
        tagged = _tagged(store)
        candidates = set(tagged.values())
        last = store.last_tip()
        if last:
            candidates.add(last)
        if tip is not None:
            candidates.add(tip.oid.hex())
        commits = _existing_commits(store, candidates)
        heads = (run_lines(store.git_dir, "merge-base", "--independent", *commits)
                 .decode().split() if len(commits) > 1 else commits)
        base = tip.oid.hex() if tip is not None else (heads[0] if heads else None)
        if base is None:
            return RepairResult(branch, "up-to-date", 0, 0, None)
        others = [h for h in heads if h != base]
        present = _files(store, base)
        present_runs = {r for r in map(_run_of, present) if r}
        added: dict[str, str] = {}
        for head in others:
            for path, oid in _files(store, head).items():
                rid = _run_of(path)
                if rid and rid not in present_runs and path not in added:
                    added[path] = oid
        restored = {r for r in map(_run_of, added) if r}
        lost = [r for r in tagged if r not in present_runs and r not in restored]
        if lost:
            with store._read_lock:
                names = [f"{tagged[r]}:{run_path(r, n)}" for r in lost
                         for n in (RUN_FILE, SPANS_FILE, OUTPUT_FILE)]
                got = store._cat().read_many(names)
            for name, entry in zip(names, got, strict=True):
                if entry is not None and entry[1] == "blob":
                    added[name.split(":", 1)[1]] = entry[0].hex()
        restored = {r for r in map(_run_of, added) if r}
        with store._read_lock:
            base_commit = store._commits([base])[0]
        before = store.run_count(base_commit)
        if not added and not others:
            if tip is None:  # deleted: its last commit holds everything; point the branch at it
                run_lines(store.git_dir, "update-ref", "--stdin",
                          input=f"create {store.ref} {base}\n".encode())
            store.remember_tip(base)
            repair_pending_tags(store)
            if tip is None:
                logger.warning("ledger %s: branch %s restored at %s (%d runs)", store.git_dir,
                               branch, base[:12], before)
                return RepairResult(branch, "rebuilt", before, before, base)
            return RepairResult(branch, "up-to-date", 0, before, base)
        with store._read_lock:
            maxes = [c.max_id for c in store._commits([base, *others]) if c is not None]
        max_id = max([m for m in maxes if m != UNKNOWN_MAX] + sorted(restored)[-1:] + ["0"])
        count = before + len(restored)
        message = (f"otel-runs: repair: restore {len(restored)} run(s)\n\n"
                   f"{MAX_ID_TRAILER}: {max_id}\n{COUNT_TRAILER}: {count}\n").encode()
        with FastImport(store.git_dir, fsync=True) as fi:
            commit = fi.commit(base, message, {}, int(time.time()), merges=others, blobs=added)
        changed = split_z(run_lines(store.git_dir, "diff-tree", "-r", "-z", "--no-renames",
                                    "--name-status", base, commit))
        statuses = {changed[i + 1].decode(): changed[i].decode()
                    for i in range(0, len(changed) - 1, 2)}
        if set(statuses) != set(added) or any(s != "A" for s in statuses.values()):
            raise LedgerError(f"repair of {branch} in {store.git_dir} refused: the rebuilt "
                              "commit does not hold exactly the current runs plus the restored "
                              "ones (nothing was changed)")
        old = tip.oid.hex() if tip is not None else None
        cmd = f"update {store.ref} {commit} {old}\n" if old else f"create {store.ref} {commit}\n"
        run_lines(store.git_dir, "update-ref", "--stdin", input=cmd.encode())
        store.remember_tip(commit)
        repair_pending_tags(store)
        logger.warning("ledger %s: branch %s rebuilt at %s: %d run(s) restored", store.git_dir,
                       branch, commit[:12], len(restored))
        return RepairResult(branch, "rebuilt", len(restored), count, commit)
