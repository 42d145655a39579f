"""A helper process that turns journal records into git commits.

Building a batch (the Runs, then the store's objects, pack and refs) is CPU
work in Python. Done in a thread of the recording process, it holds the GIL,
and every request thread that releases the GIL for a ``write()`` then waits up
to the switch interval (5 ms) to get it back. A :class:`CommitHelper` does that
work in a child process instead: the recording process hands over the journal
lines it already wrote and waits (without the GIL) for the answer.

Protocol on the helper's stdin/stdout: ``READY`` once the store is open; then,
per batch, ``B <n>`` followed by ``n`` journal lines, answered by ``OK
<written>`` or ``ERR <message>``. EOF on stdin ends the helper.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from ._errors import LedgerError
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

    def write_batch(self, lines: list[bytes]) -> int:
        """Commit these journal lines (``end`` records); return how many runs were new."""
        stdin, _ = self._pipes()
        try:
            stdin.write(b"B %d\n" % len(lines) + b"".join(lines))
            stdin.flush()
            answer = self._read_line()
        except (OSError, ValueError) as exc:
            self.close()
            raise LedgerError(f"the ledger commit helper failed: {exc}") from exc
        if answer.startswith("OK "):
            return int(answer[3:])
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


def _serve(project_root: str, branch: str, tag_prefix: str | None, fsync: bool) -> None:
    from ._journal_records import run_dict
    from ._store import GitStore

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        store = GitStore(project_root, branch=branch, tag_prefix=tag_prefix, fsync=fsync)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which falls back
        stdout.write(f"ERR {exc}".replace("\n", " ").encode() + b"\n")
        stdout.flush()
        return
    stdout.write(b"READY\n")
    stdout.flush()
    try:
        while True:
            header = stdin.readline()
            if not header:
                return
            count = int(header.split()[1])
            lines = [stdin.readline() for _ in range(count)]
            try:
                items: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
                for raw in lines:
                    try:
                        rec = json.loads(raw)
                        spans = rec.get("spans")
                        items.append((run_dict(rec), spans if isinstance(spans, list) else []))
                    except (ValueError, AttributeError) as exc:
                        logger.warning("otel-runs: skipping unreadable journal record: %s", exc)
                written = store.write_batch(items) if items else 0
                stdout.write(b"OK %d\n" % written)
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which retries
                stdout.write(f"ERR {type(exc).__name__}: {exc}".replace("\n", " ").encode()
                             + b"\n")
            stdout.flush()
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
