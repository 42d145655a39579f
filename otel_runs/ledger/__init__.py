"""The git ledger: every run of a project on an orphan branch of its own repository.

``ledger_for(root)`` is the process-wide shared :class:`Ledger` of a project (the
one ``configure()`` records through); ``Ledger(...)`` opens another handle.
``sync_ledger`` merges a remote's ledger with the local one (``otel-runs sync``);
``verify_ledger`` checks run files and tags (``otel-runs verify``); ``repair_ledger``
rebuilds a branch deleted or moved by someone else (``otel-runs repair``), which writes
refuse with ``BranchLost`` until then. ``UnsafeRepository``: a repository git itself
refuses (dubious ownership).
``quarantined(journal_dir)`` lists the records set aside because they can never be
committed; ``JournalUnavailable`` is what a tracked block raises when its run cannot
be journaled and ``OTEL_RUNS_ON_JOURNAL_ERROR=raise``. ``RunCensus(ledger)`` counts the
committed runs by type and status from the commits' index lines (the metrics' gauge).
"""

from __future__ import annotations

from ._census import RunCensus
from ._errors import BranchLost, LedgerError, NotAGitRepository, UnsafeRepository
from ._journal import JournalUnavailable
from ._ledger import Ledger, ledger_for
from ._quarantine import Quarantined, quarantined
from ._repair import RepairResult, repair_ledger
from ._sync import SyncResult, sync_ledger
from ._verify import Problem, VerifyReport, verify_ledger

__all__ = [
    "BranchLost",
    "JournalUnavailable",
    "Ledger",
    "LedgerError",
    "NotAGitRepository",
    "Problem",
    "Quarantined",
    "RepairResult",
    "RunCensus",
    "SyncResult",
    "UnsafeRepository",
    "VerifyReport",
    "ledger_for",
    "quarantined",
    "repair_ledger",
    "sync_ledger",
    "verify_ledger",
]
