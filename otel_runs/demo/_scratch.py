"""The demo's scratch world: a project repository, a bare remote and a teammate's clone."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DemoDirError", "DemoError", "Scratch", "make_scratch"]

GIT_ENV = {"GIT_AUTHOR_NAME": "otel-runs demo", "GIT_AUTHOR_EMAIL": "demo@localhost",
           "GIT_COMMITTER_NAME": "otel-runs demo", "GIT_COMMITTER_EMAIL": "demo@localhost",
           "GIT_TERMINAL_PROMPT": "0"}
_MARKER = ".otel-runs-demo"


class DemoError(ValueError):
    """The demo cannot start (its message is one line saying why)."""


class DemoDirError(DemoError):
    """The directory given for the demo cannot be used."""


@dataclass(frozen=True)
class Scratch:
    base: Path
    project: Path
    remote: Path
    teammate: Path


def git(cwd: Path, *args: str) -> str:
    """Run git for the demo's own setup (raises on failure)."""
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV})
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def make_scratch(directory: str | os.PathLike[str] | None = None) -> Scratch:
    """Create (or reuse, if it is a previous demo's) the scratch world in ``directory``
    (default: a new temporary directory)."""
    if directory is None:
        base = Path(tempfile.mkdtemp(prefix="otel-runs-demo-"))
    else:
        base = Path(directory).expanduser().resolve()
        if base.exists() and not base.is_dir():
            raise DemoDirError(f"{base} is not a directory")
        if base.is_dir() and any(base.iterdir()) and not (base / _MARKER).exists():
            raise DemoDirError(f"{base} is not empty and is not a previous demo directory; "
                               "pass a new or empty --dir")
    scratch = Scratch(base, base / "project", base / "remote.git", base / "teammate")
    if (base / _MARKER).exists() and (scratch.project / ".git").exists():
        return scratch
    existed = base.exists()
    base.mkdir(parents=True, exist_ok=True)
    try:
        (base / _MARKER).write_text("created by otel-runs demo\n")
        _create(scratch)
    except BaseException:  # git missing, disk full, Ctrl-C: leave nothing half made
        _remove(scratch, existed)
        raise
    return scratch


def _remove(s: Scratch, keep_base: bool) -> None:
    """Remove what :func:`make_scratch` creates (and ``s.base`` unless ``keep_base``)."""
    if not keep_base:
        shutil.rmtree(s.base, ignore_errors=True)
        return
    for path in (s.project, s.remote, s.teammate, s.base / "incoming"):
        shutil.rmtree(path, ignore_errors=True)
    (s.base / _MARKER).unlink(missing_ok=True)


def _create(s: Scratch) -> None:
    s.project.mkdir()
    git(s.project, "init", "-q", "-b", "main")
    git(s.project, "config", "user.name", GIT_ENV["GIT_AUTHOR_NAME"])
    git(s.project, "config", "user.email", GIT_ENV["GIT_AUTHOR_EMAIL"])
    (s.project / "README.md").write_text(
        "# demo-project\n\nA scratch project for the otel-runs demo control plane.\n")
    (s.project / "app.py").write_text(
        'def greet(name: str) -> str:\n    return f"hello {name}"\n')
    (s.project / "data").mkdir()
    (s.project / "data" / "users.csv").write_text("id,name\n1,ada\n2,linus\n")
    (s.project / ".gitignore").write_text("secrets.env\n.env\nbackups/\n_site/\n")
    git(s.project, "add", "-A")
    git(s.project, "commit", "-q", "-m", "Initial commit")
    git(s.base, "init", "-q", "--bare", "-b", "main", str(s.remote))
    git(s.project, "remote", "add", "origin", str(s.remote))
    git(s.project, "push", "-q", "origin", "main")
    git(s.base, "clone", "-q", str(s.remote), str(s.teammate))
    git(s.teammate, "config", "user.name", "teammate")
    git(s.teammate, "config", "user.email", "teammate@localhost")
    backups = s.project / "backups"
    backups.mkdir()
    with tarfile.open(backups / "backup-initial.tar.gz", "w:gz") as tar:
        tar.add(s.project / "data", arcname="data")
    incoming = s.base / "incoming"
    incoming.mkdir()
    with tarfile.open(incoming / "backup-from-staging.tar.gz", "w:gz") as tar:
        tar.add(s.project / "data", arcname="data")
