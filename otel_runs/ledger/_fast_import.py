"""One ledger commit built by ``git fast-import``, git's own batch writer.

:class:`FastImport` drives one ``git fast-import`` process for one batch:

1. :meth:`FastImport.present` asks it (``ls "<path>"`` in a throw-away commit) which run files the parent
   commit already has, so a replayed run is never written twice;
2. :meth:`FastImport.commit` streams one commit: the parent (``from``), the message and the
   new files (``M 100644 inline``). fast-import reads the parent's trees itself and rewrites
   only the trees on the new files' paths; it writes one pack. The commit's id comes back
   through ``get-mark``, and the ref fast-import works on is reset away before ``done``, so
   fast-import moves no ref at all: the caller moves the branch and the tags in one
   ``update-ref --stdin`` transaction after checking the commit.

No hook runs (the safe options of :mod:`._git`), no index or working tree is used.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

from ._errors import LedgerError
from ._git import git_command, git_env

__all__ = ["FastImport"]

#: The ref named in the stream; reset (never written) before fast-import ends.
_WORK_REF = b"refs/otel-runs/fast-import"
_PROBE_REF = b"refs/otel-runs/fast-import-probe"
_IDENT = b"otel-runs <otel-runs@localhost>"
#: ``ls`` requests sent before reading their answers.
_PIPELINE = 256


class FastImport:
    """One ``git fast-import`` for one commit. Use as a context manager."""

    def __init__(self, git_dir: Path, *, fsync: bool) -> None:
        self.git_dir = git_dir
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            git_command(git_dir, "-c", f"core.fsync={'committed' if fsync else 'none'}",
                        "fast-import", "--quiet", "--done"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=git_env())
        self._stdin, self._stdout = self._proc.stdin, self._proc.stdout
        assert self._stdin is not None and self._stdout is not None
        self._write(b"feature done\n")

    def __enter__(self) -> FastImport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            assert self._stdin is not None
            self._stdin.write(data)
        except (OSError, ValueError) as exc:
            raise self._failed(f"writing to it failed ({exc})") from exc

    def _read_line(self) -> bytes:
        try:
            self._flush()
            assert self._stdout is not None
            line = self._stdout.readline()
        except (OSError, ValueError) as exc:
            raise self._failed(f"reading from it failed ({exc})") from exc
        if not line.endswith(b"\n"):
            raise self._failed("it exited early")
        return line[:-1]

    def _flush(self) -> None:
        assert self._stdin is not None
        self._stdin.flush()

    def _failed(self, what: str) -> LedgerError:
        """The error to raise once fast-import failed: git's own message, crash report removed."""
        self._stop(kill=False)
        self._stderr.seek(0)
        lines = [ln.strip() for ln in self._stderr.read().decode(errors="replace").splitlines()
                 if ln.strip()]
        fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
        detail = (fatal or lines or [what])[0]
        return LedgerError(f"git fast-import failed in {self.git_dir}: {detail}")

    # -- the two steps ---------------------------------------------------------------------

    def present(self, parent: str, paths: Iterable[str]) -> set[str]:
        """The subset of ``paths`` (files) that exist in commit ``parent``.

        Asked inside a throw-away commit on ``parent`` (its ref is reset away, the commit object
        is left for gc): there fast-import walks its in-memory copy of the parent's trees, ~15x
        faster than ``ls <commit> <path>``, which reloads them for every path.
        """
        self._write(b"commit %s\nmark :2\ncommitter %s 0 +0000\ndata 0\nfrom %s\n"
                    % (_PROBE_REF, _IDENT, parent.encode()))
        found: set[str] = set()
        todo = list(paths)
        for start in range(0, len(todo), _PIPELINE):
            chunk = todo[start : start + _PIPELINE]
            self._write(b"".join(b'ls "%s"\n' % p.encode() for p in chunk))
            for path in chunk:
                line = self._read_line()
                if not line.startswith(b"missing "):
                    found.add(path)
        self._write(b"\n")
        return found

    def commit(self, parent: str | None, message: bytes, files: Mapping[str, bytes],
               when: int, *, merges: Sequence[str] = (),
               blobs: Mapping[str, str] | None = None) -> str:
        """Stream one commit adding ``files`` (path -> content) and ``blobs`` (path -> id of a
        blob already in the repository) on top of ``parent`` (None: a root commit), with
        ``merges`` as further parents; return its hex id. Nothing is referenced by it yet."""
        stamp = b"%s %d +0000" % (_IDENT, when)
        parts = [b"commit %s\nmark :1\nauthor %s\ncommitter %s\ndata %d\n%s\n"
                 % (_WORK_REF, stamp, stamp, len(message), message)]
        if parent is not None:
            parts.append(b"from %s\n" % parent.encode())
        parts += [b"merge %s\n" % m.encode() for m in merges]
        self._write(b"".join(parts))
        for path, data in files.items():
            self._write(b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(data), data))
        for path, oid in (blobs or {}).items():
            self._write(b"M 100644 %s %s\n" % (oid.encode(), path.encode()))
        self._write(b"\nget-mark :1\n")
        oid = self._read_line().decode("ascii", "replace")
        self._write(b"reset %s\n\nreset %s\n\ndone\n" % (_WORK_REF, _PROBE_REF))
        self._finish()
        return oid

    def _finish(self) -> None:
        proc = self._proc
        if proc is None:
            raise LedgerError("git fast-import is closed")
        try:
            assert self._stdin is not None
            self._stdin.close()
            code = proc.wait(timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise self._failed(f"it did not finish ({exc})") from exc
        if code != 0:
            raise self._failed(f"exit status {code}")
        if self._stdout is not None:
            self._stdout.close()
        self._proc = None

    def close(self) -> None:
        """Stop fast-import if it is still running (an unfinished commit is discarded)."""
        self._stop(kill=True)
        self._stderr.close()

    def _stop(self, *, kill: bool) -> None:
        """Close the pipes and reap the process (killed at once if ``kill``, else after 30 s);
        remove the crash report fast-import leaves in the repository: it is ours."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        try:
            if kill and proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        (self.git_dir / f"fast_import_crash_{proc.pid}").unlink(missing_ok=True)
