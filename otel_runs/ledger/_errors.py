"""Errors raised by the git ledger."""

from __future__ import annotations

__all__ = ["LedgerError", "NotAGitRepository"]


class LedgerError(RuntimeError):
    """Something went wrong reading or writing the git ledger."""


class NotAGitRepository(LedgerError):  # noqa: N818 - name fixed by the ledger API
    """The project root is not inside a git repository (the message names the path and the fix)."""
