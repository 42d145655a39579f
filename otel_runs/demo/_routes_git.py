"""The demo's git actions: commit, push, pull and remotes.

Real git commands against the scratch repository, its bare remote and a
teammate's clone (the teammate pushes first, so a pull brings a real commit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._routes_base import actions_blueprint, checked_name, reply, scratch_project
from ._tools import _note, demo_state, payload, run_command


def _git(*args: str, cwd: Path | None = None) -> Any:
    from ._scratch import GIT_ENV

    return run_command(["git", *args], cwd or scratch_project(), env=GIT_ENV)


def _remotes() -> list[str]:
    return _git("remote").stdout.split()


def _git_failed(proc: Any, what: str) -> Any:
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return reply(False, f"{what} failed: {lines[-1] if lines else proc.returncode}")


@actions_blueprint.post("/git/commit")
def git_commit() -> Any:
    state = demo_state()
    number = state.next_number()
    message = str(payload().get("message") or f"Demo change #{number}")[:200]
    with state.lock:
        notes = state.project / "notes"
        notes.mkdir(exist_ok=True)
        (notes / f"change-{number}.md").write_text(f"{message}\n")
        add = _git("add", "-A")
        if add.returncode != 0:
            return _git_failed(add, "git add")
        proc = _git("commit", "-q", "-m", message)
        if proc.returncode != 0:
            return _git_failed(proc, "git commit")
        sha = _git("rev-parse", "--short", "HEAD").stdout.strip()
        count = _git("show", "--name-only", "--pretty=format:", "HEAD").stdout.split()
    _note(commit=sha, files=len(count))
    return reply(True, f"Committed {sha}: {message} ({len(count)} files)", commit=sha)


@actions_blueprint.post("/git/push")
def git_push() -> Any:
    with demo_state().lock:
        proc = _git("push", "--porcelain", "origin", "HEAD:refs/heads/main")
    if proc.returncode != 0:
        return _git_failed(proc, "git push")
    line = next((ln for ln in proc.stdout.splitlines() if "\t" in ln), "")
    detail = line.split("\t")[-1] if line else "done"
    return reply(True, f"Pushed main to origin ({detail.strip('[]')})")


@actions_blueprint.post("/git/pull")
def git_pull() -> Any:
    state = demo_state()
    number = state.next_number()
    with state.lock:
        # A teammate pushes a change first, so that the pull brings something real.
        mate = state.teammate
        _git("pull", "-q", "--rebase", "origin", "main", cwd=mate)
        (mate / "team").mkdir(exist_ok=True)
        (mate / "team" / f"update-{number}.md").write_text(f"teammate update {number}\n")
        _git("add", "-A", cwd=mate)
        _git("commit", "-q", "-m", f"Teammate update #{number}", cwd=mate)
        _git("push", "-q", "origin", "HEAD:main", cwd=mate)
        before = _git("rev-parse", "HEAD").stdout.strip()
        proc = _git("pull", "--no-rebase", "--no-edit", "origin", "main")
        if proc.returncode != 0:
            return _git_failed(proc, "git pull")
        after = _git("rev-parse", "HEAD").stdout.strip()
        count = len(_git("rev-list", f"{before}..{after}").stdout.split())
    return reply(True, f"Pulled {count} commit(s) from origin/main", commits=count)


@actions_blueprint.post("/git/remote/add")
def git_remote_add() -> Any:
    data = payload()
    state = demo_state()
    with state.lock:
        existing = _remotes()
        default = "mirror" if "mirror" not in existing else f"mirror-{state.next_number()}"
        name = checked_name(data.get("name"), default)
        url = str(data.get("url") or state.remote)
        proc = _git("remote", "add", name, url)
    _note(remote=name, url=url)
    if proc.returncode != 0:
        return _git_failed(proc, f"git remote add {name}")
    return reply(True, f"Added remote {name} -> {url}", remote=name)


def _extra_remote(data: dict[str, Any], key: str) -> str | None:
    if data.get(key):
        return checked_name(data.get(key), "x")
    extras = [r for r in _remotes() if r != "origin"]
    return extras[-1] if extras else None


@actions_blueprint.post("/git/remote/remove")
def git_remote_remove() -> Any:
    with demo_state().lock:
        name = _extra_remote(payload(), "name")
        if name is None:
            return reply(False, "no remote to remove besides origin (add one first)")
        proc = _git("remote", "remove", name)
    if proc.returncode != 0:
        return _git_failed(proc, f"git remote remove {name}")
    return reply(True, f"Removed remote {name}", remote=name)


@actions_blueprint.post("/git/remote/rename")
def git_remote_rename() -> Any:
    data = payload()
    with demo_state().lock:
        old = _extra_remote(data, "old")
        if old is None:
            return reply(False, "no remote to rename besides origin (add one first)")
        new = checked_name(data.get("new"), f"{old}-renamed")
        proc = _git("remote", "rename", old, new)
    if proc.returncode != 0:
        return _git_failed(proc, f"git remote rename {old}")
    return reply(True, f"Renamed remote {old} to {new}", remote=new)


@actions_blueprint.post("/git/remote/set-url")
def git_remote_set_url() -> Any:
    data = payload()
    state = demo_state()
    with state.lock:
        name = checked_name(data.get("name"), "origin")
        current = _git("remote", "get-url", name).stdout.strip()
        plain = str(state.remote)
        default = plain if current.startswith("file://") else state.remote.as_uri()
        url = str(data.get("url") or default)
        proc = _git("remote", "set-url", name, url)
    if proc.returncode != 0:
        return _git_failed(proc, f"git remote set-url {name}")
    _note(remote=name, url=url)
    return reply(True, f"Set {name} URL to {url}", remote=name, url=url)
