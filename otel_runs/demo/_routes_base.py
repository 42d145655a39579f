"""The demo's action blueprint and the helpers its views share.

``actions_blueprint`` carries every action route; the ``_routes_*`` modules add
their views to it. The helpers give the scratch project, the JSON reply of an
action, checked names (a bad one answers 400) and real file writes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify

from ._tools import _event, _note, demo_state

__all__ = ["BadInputError", "actions_blueprint", "checked_name", "reply", "scratch_project",
           "write_files"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

actions_blueprint = Blueprint("demo", __name__)


def scratch_project() -> Path:
    """The scratch project every action works in."""
    return demo_state().project


def reply(ok: bool, summary: str, **details: Any) -> Any:
    """An action's JSON answer: ``ok``, ``summary`` and any ``details``."""
    return jsonify({"ok": ok, "summary": summary, **details})


def checked_name(value: Any, default: str) -> str:
    """``value`` (``default`` when empty) if it is a safe name, else :class:`BadInputError`."""
    text = str(value) if value not in (None, "") else default
    if not _NAME_RE.match(text):
        raise BadInputError(f"invalid name {text!r}: letters, digits, '.', '_' and '-' only")
    return text


class BadInputError(ValueError):
    """A request value the demo refuses: answered 400 with its message."""


@actions_blueprint.errorhandler(BadInputError)
def _bad_input(exc: BadInputError) -> Any:
    return jsonify({"ok": False, "summary": str(exc)}), 400


def write_files(files: dict[str, str], summary: str) -> Any:
    """Really write generated files into the scratch project."""
    project = scratch_project()
    with demo_state().lock:
        for rel, content in files.items():
            path = project / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            _event("file_written", path=rel, bytes=len(content.encode()))
    _note(files=sorted(files))
    return reply(True, summary, files=sorted(files))
