"""The demo's backup actions: restore, import, wipe and delete.

Real archives of the scratch project's ``data/`` under ``backups/``; restoring
extracts regular files only, never outside the project.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import Any

from ._routes_base import actions_blueprint, reply, scratch_project
from ._tools import _note, demo_state


def _backups() -> list[Path]:
    return sorted((scratch_project() / "backups").glob("*.tar.gz"), key=lambda p: p.stat().st_mtime)


def _extract(archive: Path, target: Path) -> int:
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and not m.name.startswith("/") and ".." not in Path(m.name).parts]
        for m in members:
            dest = target / m.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            if src is not None:
                dest.write_bytes(src.read())
        return len(members)


@actions_blueprint.post("/backup/restore")
def backup_restore() -> Any:
    with demo_state().lock:
        backups = _backups()
        if not backups:
            return reply(False, "no backup to restore")
        count = _extract(backups[-1], scratch_project())
    _note(backup=backups[-1].name, files=count)
    return reply(True, f"Restored {count} file(s) from {backups[-1].name}")


@actions_blueprint.post("/backup/import")
def backup_import() -> Any:
    state = demo_state()
    with state.lock:
        incoming = sorted((state.base / "incoming").glob("*.tar.gz"))
        if not incoming:
            return reply(False, "no archive in incoming/ to import")
        target = state.project / "backups" / f"imported-{state.next_number():04d}.tar.gz"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(incoming[-1], target)
    return reply(True, f"Imported {incoming[-1].name} as {target.name}")


@actions_blueprint.post("/backup/wipe")
def backup_wipe() -> Any:
    data_dir = scratch_project() / "data"
    with demo_state().lock:
        files = [p for p in data_dir.rglob("*") if p.is_file()] if data_dir.is_dir() else []
        for p in files:
            p.unlink()
    return reply(True, f"Wiped {len(files)} file(s) from data/ (restore brings them back)")


@actions_blueprint.post("/backup/delete")
def backup_delete() -> Any:
    with demo_state().lock:
        backups = _backups()
        if len(backups) < 2:
            return reply(False, "refusing to delete the last backup")
        backups[0].unlink()
    return reply(True, f"Deleted backup {backups[0].name} ({len(backups) - 1} left)")
