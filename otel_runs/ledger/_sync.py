"""Share a ledger through a git remote: fetch, merge the union, push without force.

Runs are separate files, so two ledgers always merge without conflict: the
merged tree comes from ``git merge-tree --write-tree`` (no checkout, no index),
the merge commit from ``commit-tree`` with both parents, and the branch moves
with a checked ``update-ref`` (expected old value). The push never forces; a
rejected push (someone synced in between) fetches and merges again. The
user's HEAD, index and working tree are never touched.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._errors import LedgerError, NotAGitRepository
from ._git import git_command, git_env

__all__ = ["SyncResult", "check_remote", "git_dir_of", "run_git", "sync_ledger"]

DEFAULT_BRANCH = "scp-ledger"
DEFAULT_TAG_PREFIX = "scp-run/"
#: Private ref the remote ledger branch is fetched into.
_FETCHED_REF = "refs/otel-runs/sync/fetched"
_IDENTITY = {
    "GIT_AUTHOR_NAME": "otel-runs", "GIT_AUTHOR_EMAIL": "otel-runs@localhost",
    "GIT_COMMITTER_NAME": "otel-runs", "GIT_COMMITTER_EMAIL": "otel-runs@localhost",
}
SYNC_STEPS = ("fetch", "merge", "push")


class _GitCommandError(LedgerError):
    def __init__(self, args: tuple[str, ...], returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"git {' '.join(args[:2])} failed: {git_error_line(stderr, returncode)}")


def git_error_line(stderr: str, returncode: int = 1) -> str:
    """The telling line of git's stderr: the first ``fatal:``, else the last ``error:``."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    fatal = [ln for ln in lines if ln.startswith("fatal:")]
    errors = [ln for ln in lines if ln.startswith("error:")]
    line = fatal[0] if fatal else errors[-1] if errors else lines[-1] if lines else ""
    return line.split(":", 1)[1].strip() if line[:6] in ("fatal:", "error:") else (
        line or f"exit status {returncode}")


def run_git(cwd: str | os.PathLike[str], *args: str, input: str | None = None,
            check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run git in ``cwd`` with a neutral environment (no pager, no prompts) and the ledger's
    safe options (no hooks: a push runs no ``pre-push``, a ref update no
    ``reference-transaction``)."""
    full_env = {**git_env(), "GIT_PAGER": "cat", **(env or {})}
    proc = subprocess.run(git_command(None, *args), cwd=cwd, input=input, capture_output=True,
                          text=True, env=full_env)
    if check and proc.returncode != 0:
        raise _GitCommandError(args, proc.returncode, proc.stderr)
    return proc


def git_dir_of(project_root: str | os.PathLike[str]) -> Path:
    """The repository's top level for ``project_root``; :class:`NotAGitRepository` if none."""
    root = Path(project_root).expanduser()
    if not root.is_dir():
        raise NotAGitRepository(f"{root} is not a directory; pass --project PATH of a git checkout")
    proc = run_git(root, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        proc = run_git(root, "rev-parse", "--absolute-git-dir", check=False)
        if proc.returncode != 0:
            raise NotAGitRepository(
                f"{root.resolve()} is not inside a git repository; run 'git init' there "
                "or point --project / OTEL_RUNS_PROJECT_ROOT at a git checkout")
    return Path(proc.stdout.strip())


def _rev(cwd: Path, ref: str) -> str | None:
    proc = run_git(cwd, "rev-parse", "-q", "--verify", f"{ref}^{{commit}}", check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def _is_ancestor(cwd: Path, a: str, b: str) -> bool:
    return run_git(cwd, "merge-base", "--is-ancestor", a, b, check=False).returncode == 0


@dataclass
class SyncResult:
    """What one :func:`sync_ledger` did."""

    remote: str
    branch: str
    merge: str  # "up-to-date" | "fast-forward" | "merged" | "created" | "local-only"
    new_local_runs: int  # runs that came from the remote
    pushed: bool
    attempts: int

    def describe(self) -> str:
        pushed = "pushed" if self.pushed else "nothing to push"
        return (f"ledger {self.branch} synced with {self.remote}: {self.merge}, "
                f"{self.new_local_runs} run(s) received, {pushed}"
                + (f" (after {self.attempts} attempts)" if self.attempts > 1 else ""))


def check_remote(cwd: Path, remote: str) -> None:
    """Raise :class:`LedgerError` unless ``remote`` is a configured remote or a URL/path."""
    if run_git(cwd, "remote", "get-url", remote, check=False).returncode == 0:
        return
    looks_like_url = "://" in remote or remote.startswith(("git@", "/", "./", "../", "~"))
    if looks_like_url or Path(remote).exists():
        return
    names = run_git(cwd, "remote", check=False).stdout.split()
    known = ", ".join(names) if names else "none configured"
    raise LedgerError(f"unknown remote {remote!r} (remotes: {known}); "
                      f"add it with 'git remote add {remote} URL' or pass a URL")


def _fetch(cwd: Path, remote: str, branch: str, tag_prefix: str | None) -> str | None:
    """Fetch the remote ledger branch (into a private ref) and its run tags;
    the fetched commit, or None when the remote has no ledger yet."""
    heads = run_git(cwd, "ls-remote", "--heads", remote, f"refs/heads/{branch}", check=False)
    if heads.returncode != 0:
        raise LedgerError(f"cannot read remote {remote!r}: {git_error_line(heads.stderr)}")
    if not heads.stdout.strip():
        return None
    specs = [f"+refs/heads/{branch}:{_FETCHED_REF}"]
    if tag_prefix:
        specs.append(f"refs/tags/{tag_prefix}*:refs/tags/{tag_prefix}*")
    run_git(cwd, "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", remote, *specs)
    return _rev(cwd, _FETCHED_REF)


def _count_added_runs(cwd: Path, old: str | None, new: str) -> int:
    if old is None:
        proc = run_git(cwd, "ls-tree", "-r", "--name-only", new, "--", "ledger/runs")
    else:
        proc = run_git(cwd, "diff-tree", "-r", "--name-only", "--no-commit-id",
                       "--diff-filter=A", old, new, "--", "ledger/runs")
    return sum(1 for line in proc.stdout.splitlines() if line.endswith("/run.json"))


def _merge_into_local(cwd: Path, ref: str, fetched: str | None, remote: str) -> tuple[str, int]:
    """Move the local branch to contain ``fetched``; retried if a ledger write
    moves it meanwhile. Returns (what happened, runs received)."""
    for _ in range(20):
        local = _rev(cwd, ref)
        if fetched is None:
            return ("local-only", 0)
        if local is None:
            new, how = fetched, "created"
        elif _is_ancestor(cwd, fetched, local):
            return ("up-to-date", 0)
        elif _is_ancestor(cwd, local, fetched):
            new, how = fetched, "fast-forward"
        else:
            merged = run_git(cwd, "merge-tree", "--write-tree", "--allow-unrelated-histories",
                             "--name-only", local, fetched, check=False)
            if merged.returncode != 0:
                lines = merged.stdout.strip().splitlines()
                conflicts = ", ".join(ln for ln in lines[1:6] if ln.strip())
                raise LedgerError(f"the local and remote ledgers conflict ({conflicts}); "
                                  "a run file was changed on both sides; inspect with "
                                  f"'git diff {local} {fetched}'")
            tree = merged.stdout.splitlines()[0].strip()
            new = run_git(cwd, "commit-tree", tree, "-p", local, "-p", fetched, "-m",
                          f"otel-runs: sync ledger with {remote}", env=_IDENTITY).stdout.strip()
            how = "merged"
        expected = local or "0" * 40
        upd = run_git(cwd, "update-ref", "-m", f"otel-runs: sync with {remote}", ref, new,
                      expected, check=False)
        if upd.returncode == 0:
            return (how, _count_added_runs(cwd, local, new))
        time.sleep(0.05)  # a ledger write moved the branch: merge again
    raise LedgerError(f"could not update {ref}: it kept moving; try again")


def _push(cwd: Path, remote: str, branch: str, tag_prefix: str | None) -> bool | str:
    """Push branch and run tags without force. True: pushed; False: nothing to
    push; a string: why the remote rejected it (it moved, or a concurrent push
    held a ref lock): fetch, merge and try again."""
    specs = [f"refs/heads/{branch}:refs/heads/{branch}"]
    if tag_prefix:
        specs.append(f"refs/tags/{tag_prefix}*:refs/tags/{tag_prefix}*")
    proc = run_git(cwd, "push", "--porcelain", remote, *specs, check=False)
    lines = proc.stdout.splitlines()
    rejected = [ln for ln in lines if ln.startswith("!")]
    if proc.returncode != 0:
        if rejected:
            return "; ".join(ln.split("\t")[-1] for ln in rejected)[:300]
        raise _GitCommandError(("push", remote), proc.returncode, proc.stderr or proc.stdout)
    # porcelain flags: ' ' fast-forward, '*' new ref, '=' up to date
    return any(ln[:1] in (" ", "*") for ln in lines if "\t" in ln)


def sync_ledger(project_root: str | os.PathLike[str], remote: str = "origin", *,
                branch: str = DEFAULT_BRANCH, tag_prefix: str | None = DEFAULT_TAG_PREFIX,
                max_attempts: int = 5,
                on_step: Callable[[str], None] | None = None) -> SyncResult:
    """Fetch ``remote``'s ledger branch and run tags, merge them into the local
    ledger, and push the union back (no force; a rejected push starts over, up
    to ``max_attempts`` times). Safe to run from several clones in turn.
    ``on_step(name)`` is called after each of ``SYNC_STEPS`` (for progress)."""
    cwd = git_dir_of(project_root)
    check_remote(cwd, remote)
    ref = f"refs/heads/{branch}"
    step = on_step or (lambda _name: None)
    received = 0
    how = "up-to-date"
    why = ""
    for attempt in range(1, max_attempts + 1):
        fetched = _fetch(cwd, remote, branch, tag_prefix)
        step("fetch")
        how_now, got = _merge_into_local(cwd, ref, fetched, remote)
        received += got
        if how_now != "up-to-date" or attempt == 1:
            how = how_now
        step("merge")
        if _rev(cwd, ref) is None:  # no ledger anywhere yet
            step("push")
            return SyncResult(remote, branch, "empty", received, False, attempt)
        pushed = _push(cwd, remote, branch, tag_prefix)
        if isinstance(pushed, bool):
            step("push")
            return SyncResult(remote, branch, how, received, pushed, attempt)
        why = pushed
        time.sleep(min(0.1 * attempt, 0.5))
    raise LedgerError(f"push to {remote!r} was rejected {max_attempts} times ({why}); "
                      "run sync again")
