"""The git ledger: every run of a project on an orphan branch of its own repository.

``ledger_for(root)`` is the process-wide shared :class:`Ledger` of a project (the
one ``configure()`` records through); ``Ledger(...)`` opens another handle.
"""

from __future__ import annotations

from ._errors import LedgerError, NotAGitRepository
from ._ledger import Ledger, ledger_for

__all__ = ["Ledger", "LedgerError", "NotAGitRepository", "ledger_for"]
