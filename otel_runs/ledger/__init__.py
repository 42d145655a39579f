"""The git ledger: every run of a project on an orphan branch of its own repository.

``ledger_for(root)`` is the process-wide shared :class:`Ledger` of a project (the
one ``configure()`` records through); ``Ledger(...)`` opens another handle.
``sync_ledger`` merges a remote's ledger with the local one (``otel-runs sync``);
``verify_ledger`` checks run files and tags (``otel-runs verify``).
``quarantined(journal_dir)`` lists the records set aside because they can never be
committed; ``JournalUnavailable`` is what a tracked block raises when its run cannot
be journaled and ``OTEL_RUNS_ON_JOURNAL_ERROR=raise``.
"""

from __future__ import annotations

from ._errors import LedgerError, NotAGitRepository
from ._journal import JournalUnavailable
from ._ledger import Ledger, ledger_for
from ._quarantine import Quarantined, quarantined
from ._sync import SyncResult, sync_ledger
from ._verify import Problem, VerifyReport, verify_ledger

__all__ = [
    "JournalUnavailable",
    "Ledger",
    "LedgerError",
    "NotAGitRepository",
    "Problem",
    "Quarantined",
    "SyncResult",
    "VerifyReport",
    "ledger_for",
    "quarantined",
    "sync_ledger",
    "verify_ledger",
]
