"""How batches are committed when some fail.

* **Poison** — items the store says can never be written (``PoisonRecords``, raised
  before anything is written) are quarantined at once and the rest is written
  again straight away (:func:`write_isolating`).
* **Any other failure** (disk full, a lock, git failing) fails the whole batch. The
  next batch is half its size (:class:`BatchSizer`), down to one run; every
  successful commit doubles it again, up to the maximum. A run whose batch of one
  failed goes to the back of the queue, so the others get their turn.
* **The rule for a run that keeps failing:** a run is quarantined when its batch of
  one has failed :data:`SOLO_FAILURES` times *and* at least one other batch was
  committed since it first failed. When nothing commits at all (the disk is full),
  nothing is quarantined: every run is kept and retried.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from ._errors import LedgerError, PoisonRecords

__all__ = ["SOLO_FAILURES", "BatchSizer", "commit_all", "write_isolating"]

#: Failures of a run's batch of one (with other batches committed meanwhile) after
#: which it is quarantined.
SOLO_FAILURES = 3
#: Consecutive failed batches after which :func:`commit_all` stops (tried again later).
MAX_CONSECUTIVE = 16


class Attempted(Protocol):
    """What :class:`BatchSizer` counts on each item."""

    failures: int
    solo_failures: int
    failed_mark: int


T = TypeVar("T")
A = TypeVar("A", bound=Attempted)


def write_isolating(items: Sequence[T], write: Callable[[list[T]], int],
                    reject: Callable[[T, str], None]) -> int | None:
    """``write(items)``; when it raises ``PoisonRecords``, ``reject`` each item it names
    (with the reason) and write the others again. Returns what the last write returned,
    or None if every item was rejected (nothing was written: no sign the store works)."""
    batch = list(items)
    while batch:
        try:
            return write(batch)
        except PoisonRecords as exc:
            bad: dict[int, str] = {}
            for index, _rid, reason in exc.rejected:
                if isinstance(index, int) and 0 <= index < len(batch):
                    bad.setdefault(index, str(reason))
            if not bad:
                raise LedgerError(f"the store refused a batch without naming an item: {exc}") \
                    from exc
            for index, reason in bad.items():
                reject(batch[index], reason)
            batch = [item for i, item in enumerate(batch) if i not in bad]
    return None


class BatchSizer:
    """The size of the next batch, and the failure counts the quarantine rule reads."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = maximum
        self.commits = 0  # successful commits (the rule: "others committed since")
        self.failures = 0  # consecutive failed batches
        self.solo_streak = 0  # consecutive failed batches of one run (for the backoff)

    def succeeded(self) -> None:
        """A batch was committed: grow back."""
        self.commits += 1
        self.failures = self.solo_streak = 0
        self.limit = min(self.maximum, self.limit * 2)

    def failed(self, batch: Sequence[A]) -> A | None:
        """A batch failed (not as poison): shrink, count; return the run to quarantine
        under the rule above, if any."""
        self.failures += 1
        for item in batch:
            item.failures += 1
            if item.failed_mark < 0:
                item.failed_mark = self.commits
        if len(batch) > 1:
            self.limit = max(1, len(batch) // 2)
            return None
        self.limit = 1
        self.solo_streak += 1
        item = batch[0]
        item.solo_failures += 1
        if item.solo_failures >= SOLO_FAILURES and self.commits > item.failed_mark:
            return item
        return None


def commit_all(items: Sequence[A], write: Callable[[list[A]], int],
               reject: Callable[[A, str], None], maximum: int) -> tuple[int, bool, Any]:
    """Commit ``items`` in batches of at most ``maximum`` under the rules above, at once
    (no waiting: for recovery). Stops early when the failures look like the
    environment's: :data:`MAX_CONSECUTIVE` failed batches in a row, or every item left
    failed alone with nothing committed since. Returns (runs written, True if every
    item was committed or rejected, the last error)."""
    queue: deque[A] = deque(items)
    sizer = BatchSizer(maximum)
    written = 0
    last_error: Any = None
    while queue:
        batch = [queue.popleft() for _ in range(min(sizer.limit, len(queue)))]
        try:
            result = write_isolating(batch, write, reject)
        except Exception as exc:  # noqa: BLE001 - every other failure is the environment's
            last_error = exc
            culprit = sizer.failed(batch)
            if culprit is not None:
                reject(culprit, f"its commit failed {culprit.solo_failures} times on its own "
                                f"while other runs were committed: {type(exc).__name__}: {exc}")
            elif len(batch) == 1:
                queue.append(batch[0])
                if sizer.solo_streak >= len(queue) and sizer.commits == batch[0].failed_mark:
                    return written, False, last_error  # nothing commits: the environment
            else:
                queue.extendleft(reversed(batch))
            if sizer.failures >= MAX_CONSECUTIVE:
                return written, False, last_error
            continue
        if result is not None:
            written += result
            sizer.succeeded()
    return written, True, last_error
