"""Quarantine: journal records that can never be committed, moved aside with the reason.

A record is quarantined when it cannot be decoded or lacks what a run needs, when
its run id is malformed, when the store refuses it (``PoisonRecords``), or when it
keeps failing alone while other runs commit (see ``_commits``). It is written to
``<journal dir>/quarantine/<run id>.json`` (``line-<sha1 of the line>.json`` when it
has no valid run id; ``<run id>.<sha1[:8]>.json`` for a second, different record of
the same id) as one JSON object::

    {"run_id": "20261127T101500123Z-3fa9c2d1e5" | null, "claimed_id": "...",
     "reason": "...", "source": "<segment>:<line>" | "memory", "quarantined_at": "...Z",
     "pid": 123, "line": "<the journal line>" | null, "line_base64": "..." (if not UTF-8)}

Quarantining the same line again is a no-op. :func:`quarantined` lists them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._ids import is_run_id
from ._git import fsync_dir

__all__ = ["QUARANTINE_DIR", "Quarantined", "quarantine", "quarantined"]

#: The quarantine's directory name inside a journal directory.
QUARANTINE_DIR = "quarantine"


@dataclass(frozen=True)
class Quarantined:
    """One quarantined record (``line``: the journal line exactly as it was)."""

    path: Path
    run_id: str | None
    claimed_id: str | None
    reason: str
    source: str
    quarantined_at: str
    line: bytes


def _line_fields(line: bytes) -> dict[str, Any]:
    try:
        return {"line": line.decode("utf-8")}
    except UnicodeDecodeError:
        return {"line": None, "line_base64": base64.b64encode(line).decode("ascii")}


def _stored_line(data: dict[str, Any]) -> bytes:
    if isinstance(data.get("line"), str):
        return str(data["line"]).encode("utf-8", "surrogateescape")
    if isinstance(data.get("line_base64"), str):
        try:
            return base64.b64decode(data["line_base64"])
        except ValueError:
            return b""
    return b""


def _read(path: Path) -> Quarantined:
    try:
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        return Quarantined(path, None, None, f"unreadable quarantine file: {exc}", "", "", b"")
    rid = data.get("run_id")
    claimed = data.get("claimed_id")
    return Quarantined(path, rid if is_run_id(rid) else None,
                       claimed if isinstance(claimed, str) else None, str(data.get("reason", "")),
                       str(data.get("source", "")), str(data.get("quarantined_at", "")),
                       _stored_line(data))


def quarantine(journal_dir: Path, line: bytes, reason: str, *, claimed_id: str | None,
               source: str) -> tuple[Path, bool]:
    """Keep ``line`` aside with ``reason``; return its file and whether it is new
    (False: this very line was quarantined before). Raises ``OSError``."""
    qdir = Path(journal_dir) / QUARANTINE_DIR
    qdir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(line).hexdigest()
    valid = claimed_id if is_run_id(claimed_id) else None
    names = [f"{valid}.json", f"{valid}.{digest[:8]}.json"] if valid else [f"line-{digest[:20]}.json"]
    path = qdir / names[0]
    for name in names:
        path = qdir / name
        if not path.exists():
            break
        if _read(path).line == line:
            return path, False
    body = {"run_id": valid, "claimed_id": claimed_id, "reason": reason, "source": source,
            "quarantined_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "pid": os.getpid(), **_line_fields(line)}
    data = (json.dumps(body, ensure_ascii=True, sort_keys=True) + "\n").encode("ascii")
    tmp = qdir / f".{path.name}.{os.getpid()}.{os.urandom(3).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(qdir)
    return path, True


def quarantined(journal_dir: str | os.PathLike[str]) -> list[Quarantined]:
    """Every record quarantined under ``journal_dir`` (a ledger's ``journal_dir``), by
    file name; an unreadable quarantine file is listed too, with that as its reason."""
    qdir = Path(journal_dir) / QUARANTINE_DIR
    try:
        names = sorted(n for n in os.listdir(qdir) if n.endswith(".json") and not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [_read(qdir / name) for name in names]
