"""A helper process that turns journal records into git commits.

Building a batch (the Runs, then the store's objects, pack and refs) is CPU
work in Python. Done in a thread of the recording process, it holds the GIL,
and every request thread that releases the GIL for a ``write()`` then waits up
to the switch interval (5 ms) to get it back. A :class:`CommitHelper` does that
work in a child process instead: the recording process hands over the journal
lines it already wrote and waits (without the GIL) for the answer.

Protocol on the helper's stdin/stdout: ``READY`` once the store is open; then,
per batch, ``B <n>`` followed by ``n`` journal lines, answered by ``OK
<written>``, ``POISON <JSON list of [index, run id, reason]>`` (lines that can
never be written; nothing was written, as with the store's ``PoisonRecords``) or
``ERR <message>``. EOF on stdin ends the helper.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from ._errors import LedgerError, PoisonRecords
from ._git import stop_process

__all__ = ["CommitHelper"]

logger = logging.getLogger("otel_runs.ledger")


#: The helper's ``-c`` program. It imports only the ledger: a bare ``otel_runs`` package object
#: stands in for ``otel_runs/__init__.py``, whose imports (Flask, the SDK setup, ...) the helper
#: does not use; that halves its start-up CPU (~0.5 s -> ~0.25 s), spent while requests run.
_BOOTSTRAP = """
import sys, types
pkg = types.ModuleType("otel_runs")
pkg.__path__ = [sys.argv[1]]
sys.modules["otel_runs"] = pkg
from otel_runs.ledger._journal_helper import main
main(sys.argv[2:])
"""


class CommitHelper:
    """The recording side: one helper process for one ledger (branch)."""

    def __init__(self, project_root: str, branch: str, tag_prefix: str | None, *,
                 fsync: bool = True) -> None:
        package_parent = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, str(Path(__file__).resolve().parents[1]),
             project_root, branch, json.dumps(tag_prefix), "fsync" if fsync else "nofsync"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.pid = os.getpid()
        answer = self._read_line()
        if answer != "READY":
            self.close()
            raise LedgerError(f"the ledger commit helper did not start: {answer!r}")

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise LedgerError("the ledger commit helper is closed")
        return proc.stdin, proc.stdout

    def _read_line(self) -> str:
        _, stdout = self._pipes()
        return stdout.readline().decode("utf-8", "replace").strip()

    def write_batch(self, lines: list[bytes | tuple[str, int, int]]) -> int:
        """Commit these journal lines (``end`` records); return how many runs were new.

        A line may be given as ``(segment file, offset, length)`` instead: the helper reads
        it from the journal itself (the recording process then copies nothing)."""
        stdin, _ = self._pipes()
        wire = [b"@%d %d %s\n" % (line[1], line[2], line[0].encode("utf-8", "surrogateescape"))
                if isinstance(line, tuple) else line for line in lines]
        try:
            stdin.write(b"B %d\n" % len(lines) + b"".join(wire))
            stdin.flush()
            answer = self._read_line()
        except (OSError, ValueError) as exc:
            self.close()
            raise LedgerError(f"the ledger commit helper failed: {exc}") from exc
        if answer.startswith("OK "):
            return int(answer[3:])
        if answer.startswith("POISON "):
            try:
                rejected = [(int(i), str(r), str(why)) for i, r, why in json.loads(answer[7:])]
            except (ValueError, TypeError) as exc:
                raise LedgerError(f"the ledger commit helper answered {answer[:200]!r}") from exc
            raise PoisonRecords(rejected)
        if not answer:
            self.close()
            raise LedgerError("the ledger commit helper exited")
        raise LedgerError(answer.removeprefix("ERR ").strip() or "commit helper error")

    def close(self) -> None:
        """End the helper (EOF on its stdin) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self.pid != os.getpid():  # a forked child: only drop our copies of the pipes
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
            return
        stop_process(proc, timeout=30)


def _items(lines: list[bytes]) -> tuple[list[tuple[dict[str, Any], list[dict[str, Any]],
                                                   list[dict[str, Any]]]],
                                       list[tuple[int, str, str]]]:
    """The (run dict, child spans, output) of each line, and the lines that cannot be one."""
    from .._ids import is_run_id
    from ._journal_records import decode_line, record_output, record_run_id, run_dict

    items: list[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]] = []
    rejected: list[tuple[int, str, str]] = []
    for index, raw in enumerate(lines):
        rid: Any = None
        try:
            rec = decode_line(raw)
            rid = record_run_id(rec)
            if not is_run_id(rid):
                raise ValueError(f"malformed run id {rid!r}")
            spans = rec.get("spans")
            items.append((run_dict(rec), spans if isinstance(spans, list) else [],
                          record_output(rec)))
        except ValueError as exc:
            rejected.append((index, rid if isinstance(rid, str) else repr(rid), str(exc)[:300]))
    return items, rejected


def _resolve(lines: list[bytes]) -> list[bytes]:
    """Lines sent as ``@<offset> <length> <segment file>``, read from the journal (one open
    per file and batch); b"" (then rejected as unreadable) if a read fails."""
    out: list[bytes] = []
    fds: dict[bytes, int] = {}
    try:
        for line in lines:
            if not line.startswith(b"@"):
                out.append(line)
                continue
            try:
                offset, length, path = line[1:].rstrip(b"\n").split(b" ", 2)
                fd = fds.get(path)
                if fd is None:
                    fd = fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                out.append(os.pread(fd, int(length), int(offset)))
            except (OSError, ValueError):
                out.append(b"")
    finally:
        for fd in fds.values():
            os.close(fd)
    return out


def _answer(stdout: IO[bytes], text: str) -> None:
    stdout.write(text.replace("\n", " ").encode("utf-8", "replace") + b"\n")
    stdout.flush()


def _serve(project_root: str, branch: str, tag_prefix: str | None, fsync: bool) -> None:
    from ._store import GitStore

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        store = GitStore(project_root, branch=branch, tag_prefix=tag_prefix, fsync=fsync)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which falls back
        _answer(stdout, f"ERR {exc}")
        return
    _answer(stdout, "READY")
    try:
        while True:
            header = stdin.readline()
            if not header:
                return
            count = int(header.split()[1])
            lines = _resolve([stdin.readline() for _ in range(count)])
            try:
                items, rejected = _items(lines)
                if rejected:
                    raise PoisonRecords(rejected)
                written = store.write_batch(items) if items else 0
                _answer(stdout, f"OK {written}")
            except PoisonRecords as exc:
                _answer(stdout, "POISON " + json.dumps([list(r) for r in exc.rejected],
                                                       ensure_ascii=True))
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which retries
                _answer(stdout, f"ERR {type(exc).__name__}: {exc}")
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent is gone: its journal keeps the runs for the next process
    finally:
        store.close()


def main(argv: list[str]) -> None:
    """Serve one ledger: ``<project_root> <branch> <tag_prefix as JSON> fsync|nofsync``."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    _serve(argv[0], argv[1], json.loads(argv[2]), argv[3] == "fsync")


if __name__ == "__main__":
    main(sys.argv[1:])
