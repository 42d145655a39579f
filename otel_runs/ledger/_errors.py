"""Errors raised by the git ledger."""

from __future__ import annotations

__all__ = ["BranchLost", "LedgerError", "NotAGitRepository", "PoisonRecords", "UnsafeRepository"]


class LedgerError(RuntimeError):
    """Something went wrong reading or writing the git ledger."""


class NotAGitRepository(LedgerError):  # noqa: N818 - name fixed by the ledger API
    """The project root is not inside a git repository (the message names the path and the fix)."""


class UnsafeRepository(LedgerError):  # noqa: N818 - reads like git's own refusal
    """git itself would refuse the repository (dubious ownership); nothing was written."""


class BranchLost(LedgerError):  # noqa: N818
    """The ledger branch was deleted or moved by someone else since this ledger wrote it:
    nothing is written until ``otel-runs repair`` rebuilds it."""


class PoisonRecords(LedgerError):  # noqa: N818
    """Some items of a batch can never be written (nothing was written).

    ``rejected``: ``(index in the batch, run id or its repr, reason)`` for each.
    """

    def __init__(self, rejected: list[tuple[int, str, str]]) -> None:
        self.rejected = rejected
        first = rejected[0] if rejected else (0, "?", "?")
        super().__init__(f"{len(rejected)} record(s) cannot be written "
                         f"(first: run {first[1]}: {first[2]})")
