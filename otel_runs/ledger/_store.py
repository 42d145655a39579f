"""The git storage layer of the ledger: runs as files on an orphan branch, one tag per run.

:class:`GitStore` writes each batch of runs as ONE commit on the ledger branch (default
``scp-ledger``):

1. under a short ``flock`` shared by every writer of the ledger, read the branch tip and check
   it is the one this ledger last wrote, or a descendant (a branch deleted or moved by someone
   else raises :class:`BranchLost`: never a new history under runs that have tags);
2. ``git fast-import`` (git's own batch writer) tells which runs the tip already has (first
   write wins) and builds the commit: the tip as parent, the new files, one pack;
3. the commit is checked before anything references it: ``git diff-tree`` between the tip and
   the new tree must list exactly the new files, all added, and the commit's run count trailer
   must be the tip's plus the batch. A commit that would drop or change a file is refused with
   a logged error and rebuilt from a fresh read;
4. the branch (compare-and-swap on its old value) and one tag per new run move in ONE
   ``git update-ref --stdin`` transaction, all or nothing.

It never touches HEAD, the index, the working tree or the stash, and runs no hook. Building and
checking the commit (steps 2-3) is in :mod:`._store_batch`, reads in :mod:`._store_read`; layout
and commit format in :mod:`._layout` and docs/ledger-storage.md.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import random
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._branch_guard import check_branch as guard_branch
from ._errors import LedgerError
from ._git import discover, git_command, git_env
from ._maintenance import count_and_maintain, maintain_now
from ._store_batch import BatchBuilder
from ._store_read import Commit
from ._tags import repair_pending_tags, tag_runs, use_packed_tags, write_pending

__all__ = ["GitStore"]

logger = logging.getLogger("otel_runs")

_LOCK_TIMEOUT_S = 60.0
_MAX_ATTEMPTS = 200
#: A built commit that fails its check is rebuilt from a fresh read this many times.
_MAX_CHECK_FAILURES = 3


class GitStore(BatchBuilder):
    """Runs stored as files on an orphan branch of the project's own git repository.

    ``write_batch`` records runs (first write wins, so replays are idempotent); ``get``,
    ``spans``, ``recent``, ``search``, ``iter_runs`` read them back as plain dicts, newest first.
    Thread-safe and safe for several processes writing one ledger at once.
    """

    def __init__(self, project_root: str | os.PathLike[str], branch: str = "scp-ledger",
                 tag_prefix: str | None = "scp-run/", *, fsync: bool = True,
                 auto_maintenance: bool = True) -> None:
        self.git_dir, self._algo = discover(project_root)
        self._oid_len = 32 if self._algo == "sha256" else 20
        self.branch = branch
        self.ref = f"refs/heads/{branch}"
        self.tag_prefix = tag_prefix
        self._check_ref_names()
        self.private_dir = self.git_dir / "otel-runs"
        self.fsync = fsync
        self.auto_maintenance = auto_maintenance
        #: Write the tags of big batches straight into ``packed-refs`` (see ``_tags``).
        self.pack_tags = True
        self._closed = False
        self._init_process_state()
        _STORES.add(self)

    # -- process/thread plumbing ---------------------------------------------------------------

    def _init_process_state(self) -> None:
        """Fresh locks and no reader (also in a forked child: the parent's are not ours)."""
        self._pid = os.getpid()
        self._write_lock = threading.Lock()
        self._counts: dict[str, int] = {}  # commit hex -> runs in its tree (computed once)
        self._init_reader()

    def _run_git(self, *args: str, input: bytes | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(git_command(self.git_dir, *args), input=input,
                              capture_output=True, env=git_env())
        if check and proc.returncode != 0:
            raise LedgerError(f"git {args[0]} failed in {self.git_dir}: "
                              f"{proc.stderr.decode(errors='replace').strip()}")
        return proc

    def _check_ref_names(self) -> None:
        names = [self.ref]
        if self.tag_prefix is not None:
            names.append(f"refs/tags/{self.tag_prefix}20261127T101500123Z-3fa9c2d1e5")
        for name in names:
            proc = subprocess.run(git_command(None, "check-ref-format", name),
                                  capture_output=True, env=git_env())
            if proc.returncode != 0:
                raise LedgerError(
                    f"invalid ledger branch or tag prefix: {name!r} is not a valid ref name")

    def close(self) -> None:
        """Stop the ``cat-file`` reader. Idempotent; the store is unusable afterwards."""
        with self._read_lock:
            self._closed = True
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()

    def __enter__(self) -> GitStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._reader is not None and self._pid == os.getpid():
                self._reader.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- the write lock and the remembered tip --------------------------------------------------

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Short exclusive flock shared by every process writing this ledger (bounded wait)."""
        self.private_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.private_dir / "write.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o644)
        try:
            deadline = time.monotonic() + _LOCK_TIMEOUT_S
            delay = 0.0005
            locked = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() > deadline:
                    # Still correct without it (update-ref checks the old value): just slower.
                    logger.warning("ledger %s: write lock busy for %ss; writing without it",
                                   self.git_dir, _LOCK_TIMEOUT_S)
                    break
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
            try:
                yield
            finally:
                if locked:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @property
    def tip_file(self) -> Path:
        """Where the last tip written through otel-runs is remembered (one per branch)."""
        digest = hashlib.sha1(self.ref.encode()).hexdigest()[:12]
        return self.private_dir / f"tip-{digest}"

    def last_tip(self) -> str | None:
        """The branch tip otel-runs last wrote (None: never, or forgotten)."""
        try:
            text = self.tip_file.read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if len(text) == 2 * self._oid_len and all(
            c in "0123456789abcdef" for c in text) else None

    def remember_tip(self, oid: str) -> None:
        """Note ``oid`` as the branch tip otel-runs wrote (called under the write lock)."""
        tmp = self.tip_file.with_name(self.tip_file.name + ".tmp")
        tmp.write_text(oid + "\n", "ascii")
        os.replace(tmp, self.tip_file)

    def check_branch(self, tip: Commit | None) -> None:
        """Raise :class:`BranchLost` if the branch no longer holds what otel-runs wrote."""
        guard_branch(self, tip)

    # -- writing -------------------------------------------------------------------------------

    def write_batch(self, items: Sequence[tuple[Any, ...]]) -> int:
        """Record ``(run dict, child span dicts[, output lines])`` items as one commit; return
        how many were new.

        Runs already on the branch (and repeats within ``items``) are skipped: first write wins.
        Raises :class:`PoisonRecords`, writing nothing, when some items can never be written
        (bad run id, data that is not finite JSON, not a valid run); :class:`BranchLost` when the
        branch was deleted or moved by someone else; :class:`LedgerError` on git failures.
        """
        prepared = self._prepare(items)
        if not prepared:
            return 0
        with self._write_lock:
            self._ensure_process()
            check_failures = 0
            for attempt in range(_MAX_ATTEMPTS):
                with self._file_lock():
                    repair_pending_tags(self)
                    with self._read_lock:
                        tip = self._tip()
                    self.check_branch(tip)
                    built = self._build_commit(tip, prepared)
                    if built is None:
                        return 0
                    commit_hex, new_ids = built
                    problem = self._check_commit(tip, commit_hex, prepared, new_ids)
                    if problem is not None:
                        check_failures += 1
                        logger.error("ledger %s: refused commit %s: %s (rebuilding from a fresh "
                                     "read)", self.git_dir, commit_hex[:12], problem)
                        if check_failures >= _MAX_CHECK_FAILURES:
                            raise LedgerError(f"ledger {self.git_dir}: every commit built for "
                                              f"this batch failed its check: {problem}")
                        self._commit_cache.clear()
                        self._counts.clear()
                        continue
                    loose = self._update_refs(commit_hex, tip.oid.hex() if tip else None,
                                              new_ids)
                    if loose is not None:
                        if self.auto_maintenance:
                            count_and_maintain(self, loose)
                        return len(new_ids)
                # Someone moved the branch without our lock (or a ref was locked): rebuild on the
                # new tip. The objects just written are unreferenced; gc drops them later.
                time.sleep(random.uniform(0.001, 0.005) * min(attempt + 1, 20))
        raise LedgerError(f"could not move {self.ref} in {self.git_dir} after {_MAX_ATTEMPTS} "
                          "attempts (is another program rewriting the ledger branch?)")

    def _ensure_process(self) -> None:
        if self._pid != os.getpid():  # pragma: no cover - register_at_fork normally handles it
            self._init_process_state()

    def _update_refs(self, new: str, old: str | None, run_ids: list[str]) -> int | None:
        """Move the branch (checking its old value) and create the run tags; remember the new
        tip. Returns how many tags were written loose (for maintenance), or None if another
        writer moved the branch first (nothing changed: rebuild and retry).

        Small batches: branch and tags in ONE update-ref transaction, all or nothing. Big ones
        (see ``_tags``): the branch first, then the tags into packed-refs in one write, with a
        marker naming them until they exist.
        """
        packed = use_packed_tags(self, run_ids)
        marker = write_pending(self, new, run_ids) if packed else None
        if not self._ref_transaction(new, old, [] if packed else run_ids):
            if marker is not None:
                marker.unlink(missing_ok=True)
            return None
        self.remember_tip(new)
        if marker is None:
            return len(run_ids) if self.tag_prefix is not None else 0
        loose = tag_runs(self, new, run_ids)
        marker.unlink(missing_ok=True)
        return loose

    def _ref_transaction(self, new: str, old: str | None, run_ids: Sequence[str]) -> bool:
        """One update-ref transaction: the branch (compare-and-swap) plus the run tags; False if
        we lost the compare-and-swap or a ref was locked (retry), raises on other errors."""
        cmds = [f"update {self.ref} {new} {old}" if old else f"create {self.ref} {new}"]
        if self.tag_prefix is not None:
            cmds += [f"update refs/tags/{self.tag_prefix}{run_id} {new}" for run_id in run_ids]
        fsync = "committed" if self.fsync else "none"
        proc = self._run_git("-c", f"core.fsync={fsync}", "update-ref", "--stdin",
                             input=("\n".join(cmds) + "\n").encode(), check=False)
        if proc.returncode == 0:
            return True
        err = proc.stderr.decode(errors="replace").strip()
        with self._read_lock:
            tip = self._tip()
        if (tip.oid.hex() if tip else None) != old:
            return False  # lost the compare-and-swap: retry on the new tip
        if "lock" in err.lower() or "exists" in err.lower():
            logger.debug("ledger %s: ref update retried: %s", self.git_dir, err)
            return False
        raise LedgerError(f"git update-ref failed in {self.git_dir}: {err}")

    # -- maintenance ---------------------------------------------------------------------------

    def maintenance(self) -> None:
        """Pack the run tags, roll up small packs and let ``git gc --auto`` run, now."""
        with self._write_lock, self._file_lock():
            maintain_now(self)


_STORES: weakref.WeakSet[GitStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._init_process_state()


os.register_at_fork(after_in_child=_after_fork_in_child)
