"""Feed records that may be written a little later, joined to the next append.

A run's ``run:started`` (and a chunk of its output, ``run:output``) need not reach the
feed file the instant it is published: the ledger's journal (what every worker's journal
view reads) has the run and its output at once. Held here, it goes out in the same
``write()`` as the next event this process publishes on the feed (for a short run, its
own ``run:completed``: one append per run instead of two or three),
and at the latest :data:`LATER_SECONDS` after it was held (a flusher thread, running
only while records are held, and shortly after). Order is kept: every event this
process publishes goes out after the records held before it.

A held record is its bytes or a function making them (called when it is written, off
the request path when the flusher writes it); one that fails is left out and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .._ratelimit import RateLimitedLog

__all__ = ["LATER_SECONDS", "MAX_HELD_BYTES", "HeldRecords"]

#: Longest a held record waits for an append to join (then the flusher writes it).
LATER_SECONDS = 0.02
#: Most bytes held: past that, the records are written at once.
MAX_HELD_BYTES = 256 * 1024
#: Idle flusher ticks (of ``LATER_SECONDS``) after which the flusher thread stops.
_IDLE_TICKS = 50

_warn = RateLimitedLog(logging.getLogger("otel_runs.hub"))

#: A held record: its bytes, or a function making them.
Held = bytes | Callable[[], bytes]


class HeldRecords:
    """Records held for a later append. ``lock`` orders appends: take it, then
    :meth:`take_locked` (what is held, to write before the caller's record) and write,
    all under the lock. ``flush`` (the hub's) writes what is held; the flusher thread
    calls it."""

    def __init__(self, flush: Callable[[], None], delay: float = LATER_SECONDS) -> None:
        self.lock = threading.Lock()
        self._records: list[Held] = []
        self._lazy = False  # some held records are functions
        self._bytes = 0
        self._flush = flush
        self._delay = delay
        self._thread: threading.Thread | None = None
        self.closed = False

    def hold(self, record: Held, size: int | None = None) -> bool:
        """Hold ``record`` (caller holds :attr:`lock`; ``size``: about how many bytes a
        function makes); False when it must be written now (too much held, or closed):
        then it is not held."""
        if size is None:
            size = len(record)  # type: ignore[arg-type]
        if self.closed or self._bytes + size > MAX_HELD_BYTES:
            return False
        self._records.append(record)
        self._bytes += size
        if not isinstance(record, bytes):
            self._lazy = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="otel-runs-feed-later",
                                            daemon=True)
            self._thread.start()
        return True

    def take_locked(self) -> bytes:
        """What is held (b"" if nothing), no longer held (caller holds :attr:`lock`)."""
        if not self._records:
            return b""
        records, self._records, self._bytes = self._records, [], 0
        if not self._lazy:
            return b"".join(records)  # type: ignore[arg-type]
        self._lazy = False
        return b"".join([record if isinstance(record, bytes) else _made(record)
                         for record in records])

    def __bool__(self) -> bool:
        return bool(self._records)

    def _run(self) -> None:
        idle = 0
        while not self.closed:
            time.sleep(self._delay)
            with self.lock:
                if not self._records:
                    idle += 1
                    if idle >= _IDLE_TICKS:
                        self._thread = None  # (a later hold starts another)
                        return
                    continue
            idle = 0
            self._flush()
        with self.lock:
            self._thread = None


def _made(make: Callable[[], bytes]) -> bytes:
    """What a held function makes (b"" when it fails: logged; the others still go)."""
    try:
        return make()
    except Exception as exc:  # noqa: BLE001 - one bad event never holds back the others
        _warn.warning("feed-publish", "otel-runs: a held event was not written to the live "
                      "feed: %s", exc)
        return b""
