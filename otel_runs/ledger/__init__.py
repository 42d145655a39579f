"""The git ledger: every run of a project on an orphan branch of its own repository.

``ledger_for(root)`` is the process-wide shared :class:`Ledger` of a project (the
one ``configure()`` records through); ``Ledger(...)`` opens another handle.
``sync_ledger`` merges a remote's ledger with the local one (``otel-runs sync``);
``verify_ledger`` checks run files and tags (``otel-runs verify``).
"""

from __future__ import annotations

from ._errors import LedgerError, NotAGitRepository
from ._ledger import Ledger, ledger_for
from ._sync import SyncResult, sync_ledger
from ._verify import Problem, VerifyReport, verify_ledger

__all__ = [
    "Ledger",
    "LedgerError",
    "NotAGitRepository",
    "Problem",
    "SyncResult",
    "VerifyReport",
    "ledger_for",
    "sync_ledger",
    "verify_ledger",
]
