"""The git storage layer of the ledger: runs as files on an orphan branch, one tag per run.

:class:`GitStore` writes batches of runs as ONE commit each on the ledger branch (default
``scp-ledger``), builds the objects in Python and writes them as one pack, and moves the branch
plus one lightweight tag per run in one ``git update-ref --stdin`` transaction that checks the
branch's old value (compare-and-swap, retried on conflict). It never touches HEAD, the index, the
working tree or the stash. Reads go through one long-lived ``git cat-file --batch``.

Layout and commit format: :mod:`otel_runs.ledger._layout` and docs/ledger-storage.md.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import fcntl
import heapq
import json
import logging
import os
import random
import re
import shutil
import subprocess
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import git

from .._ids import RUN_ID_PATTERN, validate_run_id
from .._model import Run
from ._errors import LedgerError, NotAGitRepository
from ._git import (
    BLOB_MODE,
    TREE_MODE,
    CatFile,
    add_packed_refs,
    git_env,
    hash_object,
    parse_tree,
    serialize_tree,
    write_pack,
)
from ._layout import (
    RUN_FILE,
    SPANS_FILE,
    IndexLine,
    format_index_line,
    parse_index_lines,
    run_dir,
)

__all__ = ["GitStore"]

logger = logging.getLogger("otel_runs")

#: Commit-message trailer: the largest run id in this commit and all its ancestors. Lets a
#: reader walking history newest-first stop as soon as nothing older can sort higher.
MAX_ID_TRAILER = "Otel-Runs-Max-Id"
_TRAILER_RE = re.compile(rf"^{MAX_ID_TRAILER}: (\S+)$", re.MULTILINE)
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(Run))
_RUN_ID_RE = re.compile(rf"^{RUN_ID_PATTERN}$")
_UNKNOWN_MAX = "~"  # sorts after every run id: "anything may be below this commit"
_IDENT = b"otel-runs <otel-runs@localhost>"
_TREE_CACHE_SIZE = 50_000
_COMMIT_CACHE_SIZE = 256
_BLOB_CACHE_SIZE = 4_096
_HEX_RE = re.compile(r"^[0-9a-f]+$")
_LOCK_TIMEOUT_S = 60.0
_MAX_ATTEMPTS = 200
#: Maintenance cadence (per ledger, counted across processes under the write lock).
PACK_REFS_EVERY_RUNS = 1_000
REPACK_EVERY_COMMITS = 20
GC_AUTO_EVERY_COMMITS = 250
#: Marker of a commit whose run tags may not all exist yet (see ``_update_refs``).
_TAGS_PENDING = "tags-pending.json"
#: A ``packed-refs.lock`` left by a dead writer of ours is removed after this many seconds.
_STALE_PACKED_LOCK_S = 10.0
#: How long to wait for git's ``packed-refs.lock`` before creating the tags as loose refs.
PACKED_REFS_LOCK_TIMEOUT_S = 5.0
#: A batch's tags go straight into packed-refs when it has at least this many runs AND at least
#: one per ``PACKED_REFS_BYTES_PER_TAG`` bytes of packed-refs: rewriting the file costs ~0.4 ms
#: per 100 KB, a loose tag ~0.2-1 ms, so the rewrite stays a small share of the batch's cost
#: however many tags exist. Smaller batches create loose tags (packed by maintenance).
PACKED_TAGS_MIN_BATCH = 500
PACKED_REFS_BYTES_PER_TAG = 10_000


class _Commit:
    __slots__ = ("oid", "tree", "parents", "time", "_message", "_lines", "max_id")

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
        m = _TRAILER_RE.search(text, max(0, len(text) - 200))
        self.max_id = m.group(1) if m and _RUN_ID_RE.match(m.group(1)) else _UNKNOWN_MAX

    @property
    def lines(self) -> list[IndexLine]:
        """The runs this commit recorded (parsed on first use)."""
        if self._lines is None:
            self._lines = parse_index_lines(self._message)
        return self._lines


def _discover(project_root: str | os.PathLike[str]) -> tuple[Path, str]:
    """(common git dir, object hash algorithm) of the repository containing project_root."""
    root = Path(project_root).expanduser()
    fix = (
        f"run `git init` in {root} (or in a parent directory), or set OTEL_RUNS_PROJECT_ROOT "
        "to a directory inside a git repository"
    )
    if not root.is_dir():
        raise NotAGitRepository(f"project root {root} is not a directory: {fix}")
    try:
        repo = git.Repo(root, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise NotAGitRepository(
            f"project root {root} is not inside a git repository: {fix}"
        ) from exc
    try:
        common = Path(repo.common_dir).resolve()
        try:
            algo = str(
                repo.config_reader("repository").get_value("extensions", "objectformat", "sha1")
            )
        except Exception:  # noqa: BLE001 - unreadable config: git itself will complain later
            algo = "sha1"
    finally:
        repo.close()
    if algo.lower() not in ("sha1", "sha256"):
        raise LedgerError(f"repository {common} uses unsupported object format {algo!r}")
    return common, algo.lower()


class GitStore:
    """Runs stored as files on an orphan branch of the project's own git repository.

    ``write_batch`` records runs (first write wins, so replays are idempotent); ``get``,
    ``spans``, ``recent``, ``search``, ``iter_runs`` read them back as plain dicts, newest first.
    Thread-safe and safe for several processes writing one ledger at once.
    """

    git_dir: Path

    def __init__(
        self,
        project_root: str | os.PathLike[str],
        branch: str = "scp-ledger",
        tag_prefix: str | None = "scp-run/",
        *,
        fsync: bool = True,
        auto_maintenance: bool = True,
    ) -> None:
        self._git = shutil.which("git") or "git"
        self.git_dir, self._algo = _discover(project_root)
        self._oid_len = 32 if self._algo == "sha256" else 20
        self._zero = "0" * (self._oid_len * 2)
        self.branch = branch
        self.ref = f"refs/heads/{branch}"
        self.tag_prefix = tag_prefix
        self._check_ref_names()
        self.private_dir = self.git_dir / "otel-runs"
        self.objects_dir = self.git_dir / "objects"
        self.fsync = fsync
        self.auto_maintenance = auto_maintenance
        #: Write the tags of big batches straight into ``packed-refs`` (one file write per batch)
        #: rather than as loose refs through update-ref (a file lock + write + rename per tag).
        self.pack_tags = True
        self._closed = False
        self._init_process_state()
        _STORES.add(self)

    # -- process/thread plumbing ---------------------------------------------------------------

    def _init_process_state(self) -> None:
        """Fresh locks and no reader (also in a forked child: the parent's are not ours)."""
        self._pid = os.getpid()
        self._read_lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._reader: CatFile | None = None
        self._trees: OrderedDict[bytes, dict[str, tuple[bytes, bytes]]] = OrderedDict()
        self._commit_cache: OrderedDict[bytes, _Commit] = OrderedDict()
        self._blob_cache: OrderedDict[bytes, bytes] = OrderedDict()

    def _cat(self) -> CatFile:
        if self._closed:
            raise LedgerError(f"ledger store for {self.git_dir} is closed")
        if self._reader is None:
            self._reader = CatFile(self._git, self.git_dir)
        return self._reader

    def _run_git(
        self, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [self._git, "--git-dir", str(self.git_dir), *args],
            input=input,
            capture_output=True,
            env=git_env(),
        )
        if check and proc.returncode != 0:
            raise LedgerError(
                f"git {args[0]} failed in {self.git_dir}: {proc.stderr.decode(errors='replace').strip()}"
            )
        return proc

    def _check_ref_names(self) -> None:
        names = [self.ref]
        if self.tag_prefix is not None:
            names.append(f"refs/tags/{self.tag_prefix}20261127T101500123Z-3fa9c2d1e5")
        for name in names:
            proc = subprocess.run(
                [self._git, "check-ref-format", name], capture_output=True, env=git_env()
            )
            if proc.returncode != 0:
                raise LedgerError(
                    f"invalid ledger branch or tag prefix: {name!r} is not a valid ref name"
                )

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

    # -- object reading ------------------------------------------------------------------------

    def _tip(self) -> _Commit | None:
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
        return self._remember_commit(_Commit(oid, data))

    def _remember_commit(self, commit: _Commit) -> _Commit:
        self._commit_cache[commit.oid] = commit
        if len(self._commit_cache) > _COMMIT_CACHE_SIZE:
            self._commit_cache.popitem(last=False)
        return commit

    def _commits(self, oids: Sequence[str], quiet: bool = False) -> list[_Commit | None]:
        """Parsed commits for hex oids (cached; missing ones are None)."""
        cache = self._commit_cache
        missing = [o for o in dict.fromkeys(oids) if bytes.fromhex(o) not in cache]
        if missing:
            for oid, got in zip(missing, self._cat().read_many(missing), strict=True):
                if got is not None and got[1] == "commit":
                    self._remember_commit(_Commit(got[0], got[2]))
                elif not quiet:
                    logger.warning(
                        "ledger %s: commit %s is missing or not a commit; skipped",
                        self.git_dir,
                        oid,
                    )
        return [cache.get(bytes.fromhex(o)) for o in oids]

    def _blobs(self, oids: Sequence[bytes]) -> list[bytes | None]:
        """Contents of blobs by binary oid (small LRU cache: blobs never change)."""
        cache = self._blob_cache
        missing = [o for o in dict.fromkeys(oids) if o not in cache]
        if missing:
            for oid, got in zip(
                missing, self._cat().read_many([o.hex() for o in missing]), strict=True
            ):
                if got is not None and got[1] == "blob":
                    cache[oid] = got[2]
                    if len(cache) > _BLOB_CACHE_SIZE:
                        cache.popitem(last=False)
        return [cache.get(o) for o in oids]

    def _trees_for(self, oids: Sequence[bytes]) -> list[dict[str, tuple[bytes, bytes]] | None]:
        """Parsed trees for binary oids (cached; missing ones are None)."""
        cache = self._trees
        missing = [o for o in dict.fromkeys(oids) if o not in cache]
        if missing:
            for oid, got in zip(
                missing, self._cat().read_many([o.hex() for o in missing]), strict=True
            ):
                if got is not None and got[1] == "tree":
                    self._remember_tree(oid, parse_tree(got[2], self._oid_len))
        out: list[dict[str, tuple[bytes, bytes]] | None] = []
        for oid in oids:
            entries = cache.get(oid)
            if entries is not None:
                cache.move_to_end(oid)
            out.append(entries)
        return out

    def _remember_tree(self, oid: bytes, entries: dict[str, tuple[bytes, bytes]]) -> None:
        self._trees[oid] = entries
        if len(self._trees) > _TREE_CACHE_SIZE:
            self._trees.popitem(last=False)

    # -- writing -------------------------------------------------------------------------------

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Short exclusive flock shared by every process writing this ledger (bounded wait)."""
        self.private_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.private_dir / "write.lock", os.O_RDWR | os.O_CREAT, 0o644)
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
                    logger.warning(
                        "ledger %s: write lock busy for %ss; writing without it",
                        self.git_dir,
                        _LOCK_TIMEOUT_S,
                    )
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

    def write_batch(self, items: Sequence[tuple[dict[str, Any], list[dict[str, Any]]]]) -> int:
        """Record ``(run dict, child span dicts)`` pairs as one commit; return how many were new.

        Runs already on the branch (and repeats within ``items``) are skipped: first write wins.
        Items with an invalid run id or data that is not JSON are skipped with a warning.
        """
        prepared = self._prepare(items)
        if not prepared:
            return 0
        with self._write_lock:
            self._ensure_process()
            for attempt in range(_MAX_ATTEMPTS):
                with self._file_lock():
                    self._repair_tags()
                    with self._read_lock:
                        built = self._build_commit(prepared)
                    if built is None:
                        return 0
                    objects, commit_hex, old_hex, new_ids = built
                    write_pack(self.objects_dir, objects, algo=self._algo, fsync=self.fsync)
                    loose = self._update_refs(commit_hex, old_hex, new_ids)
                    if loose is not None:
                        if self.auto_maintenance:
                            self._count_and_maintain(loose)
                        return len(new_ids)
                # Someone moved the branch without our lock (or a ref was locked): rebuild on the
                # new tip. The objects just written are unreferenced; gc drops them later.
                time.sleep(random.uniform(0.001, 0.005) * min(attempt + 1, 20))
        raise LedgerError(
            f"could not move {self.ref} in {self.git_dir} after {_MAX_ATTEMPTS} attempts "
            "(is another program rewriting the ledger branch?)"
        )

    def _ensure_process(self) -> None:
        if self._pid != os.getpid():  # pragma: no cover - register_at_fork normally handles it
            self._init_process_state()

    def _prepare(
        self, items: Sequence[tuple[dict[str, Any], list[dict[str, Any]]]]
    ) -> dict[str, tuple[dict[str, Any], bytes, bytes | None]]:
        """``{run_id: (run dict, run.json bytes, spans.jsonl bytes | None)}``, first wins."""
        out: dict[str, tuple[dict[str, Any], bytes, bytes | None]] = {}
        for item in items:
            try:
                run, spans = item
                run_id = validate_run_id(run.get("run_id") if isinstance(run, dict) else None)
                if run_id in out:
                    continue
                body = (
                    json.dumps(run, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
                    + "\n"
                ).encode()
                span_blob = (
                    "".join(
                        json.dumps(s, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
                        + "\n"
                        for s in spans
                    ).encode()
                    if spans
                    else None
                )
            except (TypeError, ValueError) as exc:
                logger.warning("ledger: skipping an unwritable run: %s", exc)
                continue
            out[run_id] = (run, body, span_blob)
        return out

    def _build_commit(
        self, prepared: dict[str, tuple[dict[str, Any], bytes, bytes | None]]
    ) -> tuple[list[tuple[str, bytes, bytes]], str, str | None, list[str]] | None:
        tip = self._tip()
        root_tree = bytes.fromhex(tip.tree) if tip else None
        dirs = {run_id: run_dir(run_id) for run_id in prepared}
        existing = self._resolve_dirs(root_tree, list(dirs.values()))
        new_ids = [
            run_id
            for run_id, path in dirs.items()
            if not (existing.get(path) and RUN_FILE in existing[path])  # type: ignore[operator]
        ]
        if not new_ids:
            return None
        new_ids.sort()
        objects: list[tuple[str, bytes, bytes]] = []
        trie: dict[str, Any] = {}
        for run_id in new_ids:
            _, body, span_blob = prepared[run_id]
            node = trie
            for part in dirs[run_id]:
                node = node.setdefault(part, {})
            oid = hash_object("blob", body, self._algo)
            objects.append(("blob", oid, body))
            node[RUN_FILE] = (BLOB_MODE, oid)
            if span_blob is not None:
                oid = hash_object("blob", span_blob, self._algo)
                objects.append(("blob", oid, span_blob))
                node[SPANS_FILE] = (BLOB_MODE, oid)

        def build(path: tuple[str, ...], node: dict[str, Any]) -> bytes:
            entries = dict(existing.get(path) or {})
            for name, child in node.items():
                entries[name] = (
                    (TREE_MODE, build((*path, name), child)) if isinstance(child, dict) else child
                )
            data = serialize_tree(entries)
            oid = hash_object("tree", data, self._algo)
            objects.append(("tree", oid, data))
            self._remember_tree(oid, entries)
            return oid

        tree_oid = build((), trie)
        max_id = max(new_ids[-1], self._max_id_below(tip)) if tip else new_ids[-1]
        now = int(time.time())
        header = [b"tree " + tree_oid.hex().encode()]
        if tip:
            header.append(b"parent " + tip.oid.hex().encode())
        stamp = b"%s %d +0000" % (_IDENT, now)
        header += [b"author " + stamp, b"committer " + stamp]
        title = f"otel-runs: record {len(new_ids)} run{'s' if len(new_ids) != 1 else ''}"
        lines = [format_index_line(prepared[run_id][0]) for run_id in reversed(new_ids)]
        message = f"{title}\n\n" + "\n".join(lines) + f"\n\n{MAX_ID_TRAILER}: {max_id}\n"
        data = b"\n".join(header) + b"\n\n" + message.encode("utf-8")
        commit_oid = hash_object("commit", data, self._algo)
        objects.append(("commit", commit_oid, data))
        return objects, commit_oid.hex(), tip.oid.hex() if tip else None, new_ids

    def _resolve_dirs(
        self, root: bytes | None, paths: list[tuple[str, ...]]
    ) -> dict[tuple[str, ...], dict[str, tuple[bytes, bytes]] | None]:
        """Existing tree entries of every directory on ``paths`` (and of the root), level by level."""
        existing: dict[tuple[str, ...], dict[str, tuple[bytes, bytes]] | None] = {}
        level: dict[tuple[str, ...], bytes] = {(): root} if root else {}
        depth = 0
        while level:
            keys = list(level)
            for key, entries in zip(keys, self._trees_for([level[k] for k in keys]), strict=True):
                existing[key] = entries
            nxt: dict[tuple[str, ...], bytes] = {}
            for path in paths:
                if len(path) <= depth:
                    continue
                parent = existing.get(path[:depth])
                child = path[: depth + 1]
                if parent and child not in nxt:
                    entry = parent.get(path[depth])
                    if entry is not None and entry[0] == TREE_MODE:
                        nxt[child] = entry[1]
            level = nxt
            depth += 1
        return existing

    def _max_id_below(self, commit: _Commit) -> str:
        """The largest run id in ``commit`` and its ancestors (walks only trailer-less commits)."""
        best = ""
        todo = [commit]
        seen: set[bytes] = set()
        while todo:
            c = todo.pop()
            if c.oid in seen:
                continue
            seen.add(c.oid)
            if c.max_id != _UNKNOWN_MAX:
                best = max(best, c.max_id)
                continue
            for line in c.lines:
                best = max(best, line.run_id)
            todo.extend(p for p in self._commits(c.parents) if p is not None)
        return best or "0"

    def _update_refs(self, new: str, old: str | None, run_ids: list[str]) -> int | None:
        """Move the branch (checking its old value) and create the run tags.

        Returns how many tags were written as loose refs (for maintenance), or None if another
        writer moved the branch first (nothing changed: rebuild and retry).

        With ``pack_tags`` the branch moves first through update-ref, then the tags go into
        ``packed-refs`` in one write. A marker file names the commit and its runs until the tags
        exist, so a writer killed in between is repaired by the next write (``_repair_tags``).
        Otherwise (or if packed-refs cannot be edited) branch and tags move in ONE update-ref
        transaction, all or nothing.
        """
        packed = self.tag_prefix is not None and self.pack_tags and self._pack_tags_for(run_ids)
        marker = self.private_dir / _TAGS_PENDING
        if packed:
            self._write_json(marker, {"commit": new, "run_ids": run_ids, "pid": os.getpid(),
                                      "time": time.time()})
        tags = [] if packed else run_ids
        if not self._ref_transaction(new, old, tags):
            if packed:
                marker.unlink(missing_ok=True)
            return None
        if not packed:
            return len(tags)
        loose = self._create_tags(new, run_ids)
        marker.unlink(missing_ok=True)
        return loose

    def _pack_tags_for(self, run_ids: Sequence[str]) -> bool:
        """Whether a batch is big enough to write its tags into packed-refs (see
        ``PACKED_TAGS_MIN_BATCH``)."""
        if len(run_ids) < max(PACKED_TAGS_MIN_BATCH, 1):
            return False
        try:
            size = (self.git_dir / "packed-refs").stat().st_size
        except OSError:
            size = 0
        return len(run_ids) * PACKED_REFS_BYTES_PER_TAG >= size

    def _create_tags(self, commit: str, run_ids: Sequence[str]) -> int:
        """Tags for ``run_ids`` at ``commit``: packed if possible, else loose through update-ref.
        Returns how many were written loose."""
        assert self.tag_prefix is not None
        refs = [(f"refs/tags/{self.tag_prefix}{r}".encode(), commit.encode()) for r in run_ids]
        if add_packed_refs(self.git_dir, refs, fsync=self.fsync,
                            timeout=PACKED_REFS_LOCK_TIMEOUT_S):
            # A loose ref wins over a packed one: one left by an interrupted older write must go.
            loose_dir, _, name_prefix = f"refs/tags/{self.tag_prefix}".rpartition("/")
            try:  # one directory listing, not a stat per tag
                loose = set(os.listdir(self.git_dir / loose_dir))
            except OSError:
                loose = set()
            stale = [r for r in run_ids if f"{name_prefix}{r}" in loose] if loose else []
            if not stale:
                return 0
            run_ids = stale
        cmds = [f"update refs/tags/{self.tag_prefix}{r} {commit}" for r in run_ids]
        self._run_git("-c", "core.logAllRefUpdates=false", "update-ref", "--stdin",
                      input=("\n".join(cmds) + "\n").encode())
        return len(run_ids)

    def _ref_transaction(self, new: str, old: str | None, tag_ids: Sequence[str]) -> bool:
        """One update-ref transaction: the branch (compare-and-swap) plus tags; False if we lost
        the compare-and-swap or a ref was locked (retry), raises on other errors."""
        cmds = [f"update {self.ref} {new} {old}" if old else f"create {self.ref} {new}"]
        if self.tag_prefix is not None:
            cmds += [f"update refs/tags/{self.tag_prefix}{run_id} {new}" for run_id in tag_ids]
        proc = self._run_git(
            "-c",
            "core.logAllRefUpdates=false",
            "update-ref",
            "--stdin",
            input=("\n".join(cmds) + "\n").encode(),
            check=False,
        )
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

    def _repair_tags(self) -> None:
        """Finish the tags of a write that was killed between moving the branch and tagging
        (called under the write flock, so no writer of ours is midway)."""
        marker = self.private_dir / _TAGS_PENDING
        try:
            state = json.loads(marker.read_text())
            commit, run_ids = str(state["commit"]), [validate_run_id(r) for r in state["run_ids"]]
            stamp = float(state.get("time", 0))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("ledger %s: unreadable %s; removed", self.git_dir, marker)
            marker.unlink(missing_ok=True)
            return
        if self.tag_prefix is None or not _HEX_RE.match(commit):
            marker.unlink(missing_ok=True)
            return
        lock = self.git_dir / "packed-refs.lock"
        try:  # our dead writer's packed-refs.lock (created after the marker, never kept long)
            age = time.time() - lock.stat().st_mtime
            if lock.stat().st_mtime >= stamp - 1 and age > _STALE_PACKED_LOCK_S:
                logger.warning("ledger %s: removing a stale packed-refs.lock", self.git_dir)
                lock.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        on_branch = self._run_git("merge-base", "--is-ancestor", commit, self.ref, check=False)
        if on_branch.returncode == 0:
            logger.warning("ledger %s: creating %d run tag(s) a killed writer left out",
                           self.git_dir, len(run_ids))
            self._create_tags(commit, run_ids)
        marker.unlink(missing_ok=True)

    def _write_json(self, path: Path, data: Any) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps(data))
            if self.fsync:  # survives a power loss like the branch move it guards
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)

    # -- maintenance ---------------------------------------------------------------------------

    def _count_and_maintain(self, runs: int) -> None:
        """Count commits/runs across processes (we hold the flock) and maintain when due."""
        state_file = self.private_dir / "maintenance.json"
        try:
            state = json.loads(state_file.read_text())
            commits, loose_runs = int(state["commits"]), int(state["loose_runs"])
        except (OSError, ValueError, KeyError, TypeError):
            commits, loose_runs = 0, 0
        commits += 1
        loose_runs += runs
        try:
            try:  # pack-refs rewrites every packed tag: keep its amortized cost per run flat
                packed = (self.git_dir / "packed-refs").stat().st_size // 80
            except OSError:
                packed = 0
            due = max(PACK_REFS_EVERY_RUNS, packed // 20)
            if self.tag_prefix is not None and loose_runs >= due:
                self._run_git("pack-refs")
                loose_runs = 0
            if commits % REPACK_EVERY_COMMITS == 0:
                self._run_git("repack", "-d", "-q", "--geometric=2")
            if commits % GC_AUTO_EVERY_COMMITS == 0:
                self._run_git("-c", "gc.autoDetach=false", "gc", "--auto", "--quiet")
        except LedgerError as exc:
            logger.warning("ledger maintenance failed (the ledger is fine): %s", exc)
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"commits": commits, "loose_runs": loose_runs}))
        os.replace(tmp, state_file)

    def maintenance(self) -> None:
        """Pack the run tags, roll up small packs and let ``git gc --auto`` run, now."""
        with self._write_lock, self._file_lock():
            self._run_git("pack-refs")
            self._run_git("repack", "-d", "-q", "--geometric=2")
            self._run_git("-c", "gc.autoDetach=false", "gc", "--auto", "--quiet")

    # -- reading -------------------------------------------------------------------------------

    def _load_run(self, run_id: str, data: bytes | None) -> dict[str, Any] | None:
        if data is None:
            return None
        try:
            parsed = Run.from_dict(json.loads(data))
            run = {name: getattr(parsed, name) for name in _RUN_FIELDS}
        except (ValueError, TypeError) as exc:
            logger.warning(
                "ledger %s: skipping corrupt run file for %s: %s", self.git_dir, run_id, exc
            )
            return None
        if run["run_id"] != run_id:
            logger.warning(
                "ledger %s: skipping run file at %s: it says run_id %r",
                self.git_dir,
                run_id,
                run["run_id"],
            )
            return None
        return run

    def _file_oids(self, tree: str, run_ids: Sequence[str], name: str) -> list[bytes | None]:
        """Blob ids of ``<run dir>/<name>`` for each run in the tree ``tree`` (hex)."""
        dirs = [run_dir(r) for r in run_ids]
        existing = self._resolve_dirs(bytes.fromhex(tree), dirs)
        out: list[bytes | None] = []
        for path in dirs:
            entry = (existing.get(path) or {}).get(name)
            out.append(entry[1] if entry is not None and entry[0] != TREE_MODE else None)
        return out

    def _read_runs(self, tree: str, run_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        oids = self._file_oids(tree, run_ids, RUN_FILE)
        datas = self._blobs([o for o in oids if o is not None])
        found = iter(datas)
        return [
            self._load_run(r, next(found) if o is not None else None)
            for r, o in zip(run_ids, oids, strict=True)
        ]

    def _tip_tree(self) -> str | None:
        tip = self._tip()
        return tip.tree if tip else None

    def get(self, run_id: str) -> dict[str, Any] | None:
        """The run dict recorded for ``run_id`` (validated), or None."""
        run_id = validate_run_id(run_id)
        with self._read_lock:
            tree = self._tip_tree()
            return self._read_runs(tree, [run_id])[0] if tree else None

    def spans(self, run_id: str) -> list[dict[str, Any]]:
        """Child span dicts recorded with ``run_id`` (validated); bad lines skipped with a warning."""
        run_id = validate_run_id(run_id)
        with self._read_lock:
            tree = self._tip_tree()
            oid = self._file_oids(tree, [run_id], SPANS_FILE)[0] if tree else None
            data = self._blobs([oid])[0] if oid is not None else None
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
                logger.warning(
                    "ledger %s: skipping bad span line %d of run %s", self.git_dir, n, run_id
                )
        return out

    def contains(self, run_ids: Iterable[str]) -> set[str]:
        """The subset of ``run_ids`` (validated) recorded on the branch."""
        ids = [validate_run_id(r) for r in run_ids]
        if not ids:
            return set()
        with self._read_lock:
            tip = self._tip()
            if tip is None:
                return set()
            oids = self._file_oids(tip.tree, ids, RUN_FILE)
        return {r for r, o in zip(ids, oids, strict=True) if o is not None}

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

        def push(c: _Commit) -> None:
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

    def _select(
        self,
        line_ok: Callable[[IndexLine], bool],
        run_ok: Callable[[dict[str, Any]], bool],
        limit: int | None,
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

    def recent(
        self, limit: int = 50, type: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` runs (by run id), optionally of one type and/or status."""
        if limit <= 0:
            return []
        return list(
            self._select(
                lambda ln: (
                    (type is None or ln.type == type) and (status is None or ln.status == status)
                ),
                lambda r: (
                    (type is None or r["type"] == type)
                    and (status is None or r["status"] == status)
                ),
                limit,
            )
        )

    def search(self, text: str, limit: int = 10) -> list[dict[str, Any]]:
        """Newest runs where every word of ``text`` is a run id prefix, part of the subtype,
        or starts a word of the summary (case-insensitive)."""
        words = text.lower().split()
        if not words or limit <= 0:
            return []

        def matches(run_id: str, subtype: str, summary: str) -> bool:
            summary_words = re.findall(r"\w[\w.:/-]*", summary.lower())
            sub = subtype.lower()
            return all(
                run_id.lower().startswith(w)
                or w in sub
                or any(sw.startswith(w) for sw in summary_words)
                for w in words
            )

        return list(
            self._select(
                lambda ln: matches(ln.run_id, ln.subtype, ln.summary) or not ln.summary_complete,
                lambda r: matches(r["run_id"], r["subtype"], r["summary"]),
                limit,
            )
        )

    def iter_runs(
        self, since: datetime | None = None, type: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every run (optionally started at/after ``since``, of one type), newest first."""
        floor = ""
        if since is not None:
            if since.tzinfo is None:
                since = since.replace(tzinfo=timezone.utc)
            at = since.astimezone(timezone.utc)
            floor = at.strftime("%Y%m%dT%H%M%S") + f"{at.microsecond // 1000:03d}Z"
        return self._select(
            lambda ln: type is None or ln.type == type,
            lambda r: type is None or r["type"] == type,
            None,
            stop=lambda ln: bool(floor) and ln.run_id < floor,
        )


class _Newest:
    """Heap key: the commit whose trailer bound is largest comes out first."""

    __slots__ = ("key", "seq", "commit")

    def __init__(self, key: str, seq: int, commit: _Commit) -> None:
        self.key, self.seq, self.commit = key, seq, commit

    def __lt__(self, other: _Newest) -> bool:
        return (self.key, -self.seq) > (other.key, -other.seq)


_STORES: weakref.WeakSet[GitStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._init_process_state()


os.register_at_fork(after_in_child=_after_fork_in_child)
