"""How the ledger runs git: one neutral environment, one set of safe options, one reader.

Every git command the ledger starts goes through :func:`git_command` (or :class:`CatFile`):

* ``-c core.hooksPath=/dev/null``: no hook of the repository (or of the user) ever runs;
* options that could make plumbing run a program or change its output are pinned
  (``core.fsmonitor``, ``commit.gpgSign``, ``core.quotePath``, colour, pager);
* variables that would redirect git to another repository (set by hooks, by ``git rebase -x``,
  ...) are dropped from the environment, and git never prompts.

Nothing here touches HEAD, the index, the working tree or the stash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

from ._errors import LedgerError

__all__ = [
    "CatFile",
    "SAFE_OPTIONS",
    "empty_tree",
    "git_command",
    "git_env",
    "git_executable",
    "stop_process",
]

#: Requests sent to ``cat-file`` before reading answers (keeps the stdin pipe from filling).
_PIPELINE = 512

#: ``-c`` options on every git command of the ledger.
SAFE_OPTIONS: tuple[str, ...] = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "commit.gpgSign=false",
    "-c", "tag.gpgSign=false",
    "-c", "core.quotePath=false",
    "-c", "color.ui=false",
    "-c", "core.pager=cat",
    "-c", "log.showSignature=false",
    "-c", "gc.autoDetach=false",
    "-c", "core.logAllRefUpdates=false",
)

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
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_EXEC_PATH",
    "GIT_TRACE",
    "GIT_TRACE2",
    "GIT_TRACE2_EVENT",
    "GIT_TRACE2_PERF",
    "GIT_EXTERNAL_DIFF",
)


def git_executable() -> str:
    """The git program on PATH."""
    return shutil.which("git") or "git"


def git_env() -> dict[str, str]:
    """The process environment without variables that redirect or reconfigure git."""
    env = {k: v for k, v in os.environ.items()
           if k not in _GIT_REDIRECTS and not k.startswith("GIT_CONFIG_KEY_")
           and not k.startswith("GIT_CONFIG_VALUE_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_PAGER"] = "cat"
    env["LC_ALL"] = "C"
    # glibc hands freed heap back to the kernel at every free() near the top (zlib's ~200 KB
    # per object): fast-import made ~30k brk calls for a 2,000-run batch, 3/4 of its time.
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(256 << 20))
    env.setdefault("MALLOC_TOP_PAD_", str(16 << 20))
    return env


def git_command(git_dir: Path | None, *args: str) -> list[str]:
    """argv of a git command with the safe options (``--git-dir`` when given)."""
    head = [git_executable(), *SAFE_OPTIONS]
    if git_dir is not None:
        head += ["--git-dir", str(git_dir)]
    return [*head, *args]


def empty_tree(algo: str = "sha1") -> str:
    """Hex id of the empty tree (git knows it without the object existing)."""
    return hashlib.new(algo, b"tree 0\0").hexdigest()


class CatFile:
    """One long-lived ``git cat-file --batch`` (not thread-safe: callers hold a lock)."""

    def __init__(self, git_dir: Path) -> None:
        self.pid = os.getpid()
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            git_command(git_dir, "cat-file", "--batch"),
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


def run_lines(git_dir: Path, *args: str, input: bytes | None = None) -> bytes:
    """stdout of a git command run with the safe options; LedgerError (git's message) if it
    fails."""
    proc = subprocess.run(git_command(git_dir, *args), input=input, capture_output=True,
                          env=git_env())
    if proc.returncode != 0:
        raise LedgerError(f"git {args[0]} failed in {git_dir}: "
                          f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def split_z(data: bytes) -> Sequence[bytes]:
    """NUL-separated fields of ``-z`` output, without the empty last one."""
    fields = data.split(b"\0")
    if fields and not fields[-1]:
        fields.pop()
    return fields


def discover(project_root: str | os.PathLike[str]) -> tuple[Path, str]:
    """(common git dir, object format) of the repository holding ``project_root``.

    Asks git itself (``rev-parse`` run in the directory, no ``--git-dir``), so git's own
    safety checks apply: a repository git would refuse as of "dubious ownership" (owned by
    another user, not listed in ``safe.directory``) raises :class:`UnsafeRepository`, before
    anything is written.
    """
    from ._errors import NotAGitRepository, UnsafeRepository

    root = Path(project_root).expanduser()
    fix = (f"run `git init` in {root} (or in a parent directory), or set OTEL_RUNS_PROJECT_ROOT "
           "to a directory inside a git repository")
    if not root.is_dir():
        raise NotAGitRepository(f"project root {root} is not a directory: {fix}")
    proc = subprocess.run(
        git_command(None, "-C", str(root), "rev-parse", "--path-format=absolute",
                    "--git-common-dir", "--show-object-format"),
        capture_output=True, env=git_env())
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        if "dubious ownership" in err:
            where = root.resolve()
            for line in err.splitlines():
                if "dubious ownership in repository at" in line:
                    where = Path(line.split(" at ", 1)[1].strip().strip("'"))
            raise UnsafeRepository(
                f"refusing to use the repository at {where}: git reports dubious ownership "
                f"(it is owned by another user); nothing was written. If you trust it, git's "
                f"fix is: git config --global --add safe.directory {where}")
        if "not a git repository" in err.lower():
            raise NotAGitRepository(f"project root {root} is not inside a git repository: {fix}")
        raise LedgerError(f"cannot open the git repository of {root}: {err.strip()}")
    lines = proc.stdout.decode(errors="replace").split("\n")
    common, algo = Path(lines[0].strip()).resolve(), lines[1].strip().lower()
    if algo not in ("sha1", "sha256"):
        raise LedgerError(f"repository {common} uses unsupported object format {algo!r}")
    return common, algo


def fsync_dir(path: Path) -> None:
    """fsync a directory (its new or renamed entries survive a power loss)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
