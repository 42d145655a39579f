"""Low-level git plumbing for the ledger: object hashing, trees, packs, one ``cat-file`` reader.

Nothing here touches HEAD, the index, the working tree or the stash: objects are written as a
pack straight into ``objects/pack`` and refs are moved by ``git update-ref --stdin`` only.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

from ._errors import LedgerError

__all__ = [
    "TREE_MODE",
    "BLOB_MODE",
    "CatFile",
    "git_env",
    "hash_object",
    "parse_tree",
    "serialize_tree",
    "stop_process",
    "write_pack",
]

TREE_MODE = b"40000"
BLOB_MODE = b"100644"
_TYPE_NUMBERS = {"commit": 1, "tree": 2, "blob": 3, "tag": 4}
#: Requests sent to ``cat-file`` before reading answers (keeps the stdin pipe from filling).
_PIPELINE = 512

#: Environment variables that would redirect our git commands away from the ledger's repo.
_GIT_REDIRECTS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_QUARANTINE_PATH",
    "GIT_REPLACE_REF_BASE",
    "GIT_CEILING_DIRECTORIES",
)


def git_env() -> dict[str, str]:
    """The process environment without variables that redirect git (hooks set them)."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_REDIRECTS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    return env


def hash_object(kind: str, data: bytes, algo: str = "sha1") -> bytes:
    """Binary object id of a git object of type ``kind`` with content ``data``."""
    h = hashlib.new(algo)
    h.update(b"%s %d\0" % (kind.encode("ascii"), len(data)))
    h.update(data)
    return h.digest()


def parse_tree(data: bytes, oid_len: int = 20) -> dict[str, tuple[bytes, bytes]]:
    """``{name: (mode, binary oid)}`` of a raw tree object."""
    entries: dict[str, tuple[bytes, bytes]] = {}
    pos = 0
    end = len(data)
    while pos < end:
        sp = data.index(b" ", pos)
        nul = data.index(b"\0", sp)
        mode = data[pos:sp]
        name = data[sp + 1 : nul].decode("utf-8", "surrogateescape")
        entries[name] = (mode, data[nul + 1 : nul + 1 + oid_len])
        pos = nul + 1 + oid_len
    return entries


def _tree_sort_key(item: tuple[str, tuple[bytes, bytes]]) -> bytes:
    name, (mode, _) = item
    raw = name.encode("utf-8", "surrogateescape")
    return raw + b"/" if mode == TREE_MODE else raw


def serialize_tree(entries: dict[str, tuple[bytes, bytes]]) -> bytes:
    """Raw tree object for ``{name: (mode, binary oid)}`` in git's canonical order."""
    return b"".join(
        b"%s %s\0%s" % (mode, name.encode("utf-8", "surrogateescape"), oid)
        for name, (mode, oid) in sorted(entries.items(), key=_tree_sort_key)
    )


def _pack_header(type_num: int, size: int) -> bytes:
    first = (type_num << 4) | (size & 0x0F)
    size >>= 4
    out = bytearray()
    while size:
        out.append(first | 0x80)
        first = size & 0x7F
        size >>= 7
    out.append(first)
    return bytes(out)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_pack(
    objects_dir: Path,
    objects: Sequence[tuple[str, bytes, bytes]],
    *,
    algo: str = "sha1",
    fsync: bool = True,
    level: int = 1,
) -> Path | None:
    """Write ``(kind, oid, data)`` objects as one pack + index (v2) into ``objects/pack``.

    The ``.pack`` is renamed into place before its ``.idx``, so git never sees a half-written
    pack. Returns the pack path (None if ``objects`` is empty).
    """
    unique: dict[bytes, tuple[str, bytes]] = {}
    for kind, oid, data in objects:
        unique.setdefault(oid, (kind, data))
    if not unique:
        return None
    pack_dir = objects_dir / "pack"
    pack_dir.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.new(algo)
    offsets: list[tuple[bytes, int, int]] = []
    fd, tmp_pack = tempfile.mkstemp(prefix="tmp_otel_runs_", suffix=".pack", dir=pack_dir)
    tmp_idx = tmp_pack[:-5] + ".idx"
    try:
        with os.fdopen(fd, "wb") as out:
            head = b"PACK" + struct.pack(">II", 2, len(unique))
            out.write(head)
            hasher.update(head)
            pos = len(head)
            for oid, (kind, data) in unique.items():
                chunk = _pack_header(_TYPE_NUMBERS[kind], len(data)) + zlib.compress(data, level)
                out.write(chunk)
                hasher.update(chunk)
                offsets.append((oid, pos, zlib.crc32(chunk) & 0xFFFFFFFF))
                pos += len(chunk)
            pack_sum = hasher.digest()
            out.write(pack_sum)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        idx = _index_v2(offsets, pack_sum, algo)
        with open(tmp_idx, "wb") as out:
            out.write(idx)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        name = pack_sum.hex()
        final_pack = pack_dir / f"pack-{name}.pack"
        os.chmod(tmp_pack, 0o444)
        os.chmod(tmp_idx, 0o444)
        os.replace(tmp_pack, final_pack)
        os.replace(tmp_idx, pack_dir / f"pack-{name}.idx")
        if fsync:
            _fsync_dir(pack_dir)
        return final_pack
    finally:
        for leftover in (tmp_pack, tmp_idx):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass


def _index_v2(entries: list[tuple[bytes, int, int]], pack_sum: bytes, algo: str) -> bytes:
    entries = sorted(entries)
    fanout = [0] * 256
    for oid, _, _ in entries:
        fanout[oid[0]] += 1
    total = 0
    for i in range(256):
        total += fanout[i]
        fanout[i] = total
    small: list[int] = []
    large: list[int] = []
    for _, off, _ in entries:
        if off < 0x80000000:
            small.append(off)
        else:
            small.append(0x80000000 | len(large))
            large.append(off)
    body = b"".join(
        (
            b"\xfftOc",
            struct.pack(">I", 2),
            struct.pack(">256I", *fanout),
            b"".join(oid for oid, _, _ in entries),
            struct.pack(f">{len(entries)}I", *(crc for _, _, crc in entries)),
            struct.pack(f">{len(small)}I", *small),
            struct.pack(f">{len(large)}Q", *large),
            pack_sum,
        )
    )
    return body + hashlib.new(algo, body).digest()


class CatFile:
    """One long-lived ``git cat-file --batch`` (not thread-safe: callers hold a lock)."""

    def __init__(self, git: str, git_dir: Path) -> None:
        self.pid = os.getpid()
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [git, "--git-dir", str(git_dir), "cat-file", "--batch"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=git_env(),
        )

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise LedgerError("git cat-file reader is closed")
        return proc.stdin, proc.stdout

    def read(self, name: str) -> tuple[bytes, str, bytes] | None:
        """``(binary oid, type, content)`` of an object name (``rev:path`` works), or None."""
        return self.read_many([name])[0]

    def read_many(self, names: Iterable[str]) -> list[tuple[bytes, str, bytes] | None]:
        """Like :meth:`read` for many names, pipelined."""
        names = list(names)
        for name in names:
            if "\n" in name or not name:
                raise ValueError(f"bad object name {name!r}")
        stdin, stdout = self._pipes()
        out: list[tuple[bytes, str, bytes] | None] = []
        try:
            for start in range(0, len(names), _PIPELINE):
                chunk = names[start : start + _PIPELINE]
                stdin.write("".join(f"{n}\n" for n in chunk).encode("utf-8", "surrogateescape"))
                stdin.flush()
                for _ in chunk:
                    header = stdout.readline()
                    if not header:
                        raise LedgerError("git cat-file exited unexpectedly")
                    parts = header.split()
                    if len(parts) != 3 or parts[-1] in (b"missing", b"ambiguous"):
                        out.append(None)
                        continue
                    size = int(parts[2])
                    data = stdout.read(size + 1)[:size]
                    out.append((bytes.fromhex(parts[0].decode("ascii")), parts[1].decode(), data))
        except (OSError, ValueError) as exc:
            self.close()
            raise LedgerError(f"git cat-file failed: {exc}") from exc
        return out

    def close(self) -> None:
        """Stop the process (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self.pid != os.getpid():
            return  # inherited across fork: the parent owns it
        stop_process(proc, timeout=5)


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    """End a child we talk to over pipes: EOF on its stdin, wait up to ``timeout``
    seconds for it to exit (killed after that), close its stdout."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


# -- packed-refs --------------------------------------------------------------------------------

#: Header git writes (and we write for a new file): peel lines complete, records sorted by name.
PACKED_REFS_HEADER = b"# pack-refs with: peeled fully-peeled sorted \n"


def _record_start(buf: bytes, pos: int) -> int:
    """Start of the packed-refs record holding offset ``pos`` (a ``^peel`` line belongs to the
    ref above it)."""
    start = buf.rfind(b"\n", 0, pos) + 1
    while buf[start : start + 1] == b"^":
        start = buf.rfind(b"\n", 0, start - 1) + 1
    return start


def _record_end(buf: bytes, start: int) -> int:
    """Offset just past the record starting at ``start`` (its ``^peel`` line included)."""
    end = buf.index(b"\n", start) + 1
    while buf[end : end + 1] == b"^":
        end = buf.index(b"\n", end) + 1
    return end


def merge_packed_refs(current: bytes | None, refs: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """New packed-refs content: ``current`` plus ``(refname, hex oid)`` pairs (a ref already in
    it is replaced), sorted as git expects. None when ``current`` is not a sorted packed-refs
    file this function can safely edit (then the caller lets git create the refs)."""
    if not current:
        current = PACKED_REFS_HEADER
    if not current.startswith(b"# pack-refs with:") or not current.endswith(b"\n"):
        return None
    header_end = current.index(b"\n") + 1
    if b" sorted " not in current[:header_end]:
        return None  # written by an old git without the sorted trait: let git handle it
    oid_len = None
    parts: list[bytes] = [current[:header_end]]
    pos = header_end
    size = len(current)
    for name, oid in sorted(dict(refs).items()):
        lo, hi = pos, size
        if pos < size:  # the common case: the new refs sort together (run ids grow), so the
            sp = current.index(b" ", pos)  # record at pos already sorts after this one
            if current[sp + 1 : current.index(b"\n", pos)] >= name:
                hi = lo
        while lo < hi:  # first record at or after lo whose name is >= name
            start = _record_start(current, (lo + hi) // 2)
            start = max(start, lo)
            line_end = current.index(b"\n", start)
            if oid_len is None:
                oid_len = current.index(b" ", start) - start
            record_name = current[start + oid_len + 1 : line_end]
            if record_name < name:
                lo = _record_end(current, start)
            else:
                hi = start
        parts.append(current[pos:lo])
        pos = lo
        if pos < size:
            sp = current.index(b" ", pos)
            if current[sp + 1 : current.index(b"\n", pos)] == name:
                pos = _record_end(current, pos)  # replaced
        parts.append(oid + b" " + name + b"\n")
    parts.append(current[pos:])
    return b"".join(parts)


def add_packed_refs(
    git_dir: Path,
    refs: Sequence[tuple[bytes, bytes]],
    *,
    fsync: bool = True,
    timeout: float = 5.0,
) -> bool:
    """Add ``(refname, hex oid)`` pairs straight to ``packed-refs``, under git's own
    ``packed-refs.lock`` protocol (create the lock exclusively, write the whole new file into it,
    rename it over ``packed-refs``). One file write for any number of refs, instead of one loose
    file (lock, write, rename) per ref. False, with nothing changed, when the lock stays busy for
    ``timeout`` seconds or the file is not one we can edit: the caller then uses update-ref."""
    import time

    target = git_dir / "packed-refs"
    lock = git_dir / "packed-refs.lock"
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            break
        except FileExistsError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    renamed = False
    try:
        try:
            with open(target, "rb") as fh:
                current: bytes | None = fh.read()
        except FileNotFoundError:
            current = None
        merged = merge_packed_refs(current, refs)
        if merged is None:
            return False
        view = memoryview(merged)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(lock, target)
        renamed = True
        return True
    finally:
        if fd >= 0:
            os.close(fd)
        if not renamed:
            try:
                os.unlink(lock)
            except FileNotFoundError:
                pass
