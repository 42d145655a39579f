"""The branch guard: the ledger branch must still hold what otel-runs last wrote.

After every write the new tip is remembered (``GitStore.remember_tip``). Before the next one, a
branch that no longer contains it (deleted, reset, force-moved by someone else) raises
:class:`BranchLost`: nothing is written, so no new history starts under runs that have tags,
until ``otel-runs repair`` rebuilds the branch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._errors import BranchLost

if TYPE_CHECKING:
    from ._store import GitStore
    from ._store_read import Commit

__all__ = ["check_branch", "has_run_tags"]

logger = logging.getLogger("otel_runs")


def _object_exists(store: GitStore, oid: str) -> bool:
    return store._run_git("cat-file", "-e", f"{oid}^{{commit}}", check=False).returncode == 0


def has_run_tags(store: GitStore) -> bool:
    """Whether any run tag exists."""
    if store.tag_prefix is None:
        return False
    out = store._run_git("for-each-ref", "--count=1", "--format=%(refname)",
                         f"refs/tags/{store.tag_prefix}").stdout
    return bool(out.strip())


def check_branch(store: GitStore, tip: Commit | None) -> None:
    """Raise :class:`BranchLost` if the branch no longer holds what otel-runs wrote."""
    last = store.last_tip()
    if last is None or (tip is not None and tip.oid.hex() == last):
        return
    if tip is not None:
        if store._run_git("merge-base", "--is-ancestor", last, tip.oid.hex(),
                          check=False).returncode == 0:
            return
        how = f"moved to {tip.oid.hex()[:12]}, which does not contain it"
    else:
        if not _object_exists(store, last) and not has_run_tags(store):
            logger.warning("ledger %s: branch %s is gone and so are its runs' tags and "
                           "commits; starting a new history", store.git_dir, store.branch)
            store.tip_file.unlink(missing_ok=True)
            return
        how = "deleted"
    raise BranchLost(
        f"ledger branch {store.branch} in {store.git_dir} was {how} by someone else (otel-runs "
        f"last wrote {last[:12]}); nothing is written until `otel-runs repair` rebuilds it "
        f"from the run tags (to start a new history on purpose, delete {store.tip_file})")
