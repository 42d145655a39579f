"""Check a ledger's integrity: every run file parses, every run has its tag,
every run tag names a run of the branch and points into its history."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .._ids import InvalidRunId, validate_run_id
from .._model import Run
from ._errors import LedgerError
from ._git import git_command, git_env
from ._sync import DEFAULT_BRANCH, DEFAULT_TAG_PREFIX, git_dir_of, run_git

__all__ = ["Problem", "VerifyReport", "verify_ledger"]

_RUNS_DIR = "ledger/runs/"
_REPAIRABLE = {"orphan-tag", "tag-off-branch", "missing-branch", "count-mismatch"}
_COUNT_RE = re.compile(r"^Otel-Runs-Count: ([0-9]+)$", re.MULTILINE)


@dataclass(frozen=True)
class Problem:
    """One integrity problem: ``kind`` (``unparsable``, ``bad-path``, ``id-mismatch``,
    ``bad-spans``, ``missing-tag``, ``orphan-tag``, ``bad-tag``, ``tag-off-branch``,
    ``duplicate-run``, ``missing-branch``, ``count-mismatch``), what it is about, and a
    message."""

    kind: str
    subject: str
    message: str

    def describe(self) -> str:
        return f"{self.kind}: {self.subject}: {self.message}"


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_ledger`."""

    branch: str
    runs: int = 0
    tags: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: Journal records set aside because they can never be committed (see ``quarantined``).
    quarantined: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def repairable(self) -> bool:
        """Whether ``otel-runs repair`` would put lost runs back on the branch."""
        return any(p.kind in _REPAIRABLE for p in self.problems)


def _list_files(cwd: os.PathLike[str] | str, branch: str) -> list[tuple[str, str]]:
    """(blob id, path) for every file under ``ledger/runs/`` on the branch."""
    proc = run_git(cwd, "ls-tree", "-r", "--full-tree", f"refs/heads/{branch}",
                   "--", _RUNS_DIR.rstrip("/"))
    out = []
    for line in proc.stdout.splitlines():
        meta, _, path = line.partition("\t")
        parts = meta.split()
        if len(parts) == 3 and parts[1] == "blob":
            out.append((parts[2], path))
    return out


def _read_blobs(cwd: os.PathLike[str] | str, oids: list[str]) -> Iterator[tuple[str, bytes]]:
    """(oid, content) for each blob, read through one ``git cat-file --batch``."""
    if not oids:
        return
    proc = subprocess.Popen(git_command(None, "cat-file", "--batch"), cwd=cwd, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=git_env())
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for oid in oids:
            proc.stdin.write(oid.encode() + b"\n")
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            if len(header) != 3:
                raise LedgerError(f"git cat-file could not read object {oid}")
            size = int(header[2])
            data = proc.stdout.read(size)
            proc.stdout.read(1)  # trailing newline
            yield oid, data
    finally:
        proc.stdin.close()
        proc.stdout.close()
        proc.wait(timeout=30)


def _run_tags(cwd: os.PathLike[str] | str, tag_prefix: str) -> dict[str, str]:
    """tag suffix -> commit it points at, for every ``<tag_prefix>*`` tag (one
    ``for-each-ref``: never enumerate tags through gitpython)."""
    proc = run_git(cwd, "for-each-ref", "--format=%(refname)%09%(objectname)%09%(*objectname)",
                   f"refs/tags/{tag_prefix}")
    tags: dict[str, str] = {}
    full = f"refs/tags/{tag_prefix}"
    for line in proc.stdout.splitlines():
        name, oid, peeled = (line.split("\t") + ["", ""])[:3]
        if name.startswith(full):
            tags[name[len(full):]] = peeled or oid
    return tags


def verify_ledger(project_root: str | os.PathLike[str], *, branch: str = DEFAULT_BRANCH,
                  tag_prefix: str | None = DEFAULT_TAG_PREFIX,
                  on_total: Callable[[int], None] | None = None,
                  on_progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check the ledger of ``project_root``'s repository; never modifies anything.

    ``on_total(n)`` is called once with the number of files to check and
    ``on_progress(k)`` as they are checked (for a progress bar).
    """
    cwd = git_dir_of(project_root)
    report = VerifyReport(branch)
    has_branch = run_git(cwd, "rev-parse", "-q", "--verify", f"refs/heads/{branch}^{{commit}}",
                         check=False).returncode == 0
    files = _list_files(cwd, branch) if has_branch else []
    tags = _run_tags(cwd, tag_prefix) if tag_prefix else {}
    report.tags = len(tags)
    if on_total:
        on_total(len(files) + (1 if tags else 0))

    oid_paths: dict[str, list[str]] = {}
    run_ids: set[str] = set()
    for oid, path in files:
        oid_paths.setdefault(oid, []).append(path)
    checked = 0
    for oid, data in _read_blobs(cwd, list(oid_paths)):
        for path in oid_paths[oid]:
            run_id = _check_file(path, data, report)
            if run_id is not None:
                if run_id in run_ids:
                    report.problems.append(Problem("duplicate-run", run_id,
                                                   f"recorded twice (again at {path})"))
                run_ids.add(run_id)
            checked += 1
            if on_progress:
                on_progress(1)
    report.runs = len(run_ids)
    from ._ledger import journal_dir_for
    from ._quarantine import quarantined

    report.quarantined = len(quarantined(journal_dir_for(git_common_dir(cwd), branch,
                                                         tag_prefix)))
    if has_branch:
        message = run_git(cwd, "log", "-1", "--format=%B", f"refs/heads/{branch}").stdout
        said = _COUNT_RE.search(message)
        if said and int(said.group(1)) != len(run_ids):
            report.problems.append(Problem(
                "count-mismatch", branch,
                f"its tip says it holds {said.group(1)} runs; its tree holds {len(run_ids)}"))
    elif tags:
        report.problems.append(Problem("missing-branch", branch,
                                       f"the branch is gone but {len(tags)} run tag(s) remain"))

    if tag_prefix is not None:
        history = set(run_git(cwd, "rev-list", f"refs/heads/{branch}").stdout.split()) \
            if has_branch else set()
        for name, commit in sorted(tags.items()):
            try:
                validate_run_id(name)
            except InvalidRunId:
                report.problems.append(Problem("bad-tag", tag_prefix + name,
                                               "tag name is not a run id"))
                continue
            if name not in run_ids:
                report.problems.append(Problem("orphan-tag", tag_prefix + name,
                                               f"no run {name} on branch {branch}"))
            elif commit not in history:
                report.problems.append(Problem("tag-off-branch", tag_prefix + name,
                                               f"points at {commit[:12]}, not in {branch}'s history"))
        for run_id in sorted(run_ids - set(tags)):
            report.problems.append(Problem("missing-tag", run_id, f"no tag {tag_prefix}{run_id}"))
        if tags and on_progress:
            on_progress(1)
    return report


def git_common_dir(cwd: os.PathLike[str] | str) -> Path:
    """The repository's common git dir (where the journals are)."""
    out = run_git(cwd, "rev-parse", "--path-format=absolute", "--git-common-dir").stdout
    return Path(out.strip())


def _check_file(path: str, data: bytes, report: VerifyReport) -> str | None:
    """Check one file; the run id of a valid ``run.json``, else None."""
    parts = path.split("/")
    name = parts[-1]
    dir_id = parts[-2] if len(parts) >= 2 else ""
    try:
        validate_run_id(dir_id)
    except InvalidRunId:
        report.problems.append(Problem("bad-path", path, "not under a <run_id>/ directory"))
        return None
    if name == "run.json":
        try:
            run = Run.from_dict(json.loads(data.decode("utf-8")))
        except (ValueError, UnicodeDecodeError) as exc:
            report.problems.append(Problem("unparsable", path, str(exc).splitlines()[0][:200]))
            return None
        if run.run_id != dir_id:
            report.problems.append(Problem("id-mismatch", path,
                                           f"run_id {run.run_id!r} in directory {dir_id}"))
            return None
        return dir_id
    if name.endswith(".jsonl"):
        for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except ValueError as exc:
                report.problems.append(Problem("bad-spans", path, f"line {lineno}: {exc}"))
                break
    return None
