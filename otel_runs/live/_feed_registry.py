"""Which :class:`~otel_runs.live._feed_hub.FeedHub` a project gets: its feed directory
(next to its ledger's journal) and one hub per feed and settings in a process."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any

from .. import _settings
from ._feed import feed_dir_of_journal
from ._feed_hub import FeedHub
from ._hub import buffer_bytes

__all__ = ["feed_dir_for", "feed_hub_for"]

logger = logging.getLogger("otel_runs.hub")

_registry: weakref.WeakValueDictionary[tuple[Any, ...], FeedHub] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()
_warned: set[str] = set()


def feed_dir_for(project_root: str | os.PathLike[str]) -> Path:
    """The feed directory of a project's ledger: next to its journal directory.

    Raises the ledger's ``NotAGitRepository`` / ``UnsafeRepository`` / ``LedgerError``."""
    from ..ledger._git import discover
    from ..ledger._ledger import DEFAULT_BRANCH, DEFAULT_TAG_PREFIX, journal_dir_for

    common, _ = discover(project_root)
    branch = _settings.env_str(_settings.OTEL_RUNS_LEDGER_BRANCH, DEFAULT_BRANCH) or DEFAULT_BRANCH
    return feed_dir_of_journal(journal_dir_for(common, branch, DEFAULT_TAG_PREFIX))


def feed_hub_for(project_root: str | os.PathLike[str], *, writable: bool = True,
                 **settings: Any) -> FeedHub | None:
    """This process's :class:`FeedHub` of the project's feed (one per feed and settings),
    or None when the project is in no git repository, or (``writable``) the feed
    directory cannot be written (warned once per directory)."""
    from ..ledger._errors import LedgerError

    try:
        directory = feed_dir_for(project_root)
    except (LedgerError, OSError) as exc:
        logger.debug("otel-runs: no live feed file for %s: %s", project_root, exc)
        return None
    key = (str(directory), writable, buffer_bytes(), *sorted(settings.items()))
    with _registry_lock:
        hub = _registry.get(key)
        if hub is not None and not hub.closed:
            return hub
        hub = FeedHub(directory, announce=writable, **settings)
        if writable:
            try:
                hub.writer.open()
            except OSError as exc:
                if str(directory) not in _warned:
                    _warned.add(str(directory))
                    logger.warning("otel-runs: the live feed directory %s cannot be written "
                                   "(%s): this process's live feed shows only its own runs",
                                   directory, exc)
                return None
        _registry[key] = hub
    return hub


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
