"""Child spans of a long run, journaled while it runs: every process of the host then
shows the run's timeline so far (the ledger's journal view reads them), not only once
it ended.

A run that has run for :data:`LIVE_AFTER` seconds gets the child spans that end from
then on (with the earlier ones) journaled in chunks, at most every :data:`INTERVAL`
seconds, by one thread per process; a run shorter than that (a request) costs nothing
more. Its end record holds every child span, as before: these chunks are for readers
only, and are dropped with the run's segment once it is committed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["INTERVAL", "LIVE_AFTER", "LiveSpans"]

#: Seconds a run runs before its child spans are journaled while it runs.
LIVE_AFTER = 0.5
#: Most time (s) a child span of such a run waits before it is journaled.
INTERVAL = 0.5


class LiveSpans:
    """Which open runs have child spans not journaled yet, and the thread that writes
    them: ``children(run_id, n)`` gives a run's kept child spans from the n-th on;
    ``journal(run_id, spans)`` journals some."""

    def __init__(self, children: Callable[[str, int], list[dict[str, Any]]],
                 journal: Callable[[str, list[dict[str, Any]]], None]) -> None:
        self._children, self._journal = children, journal
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}  # open run -> when it started (monotonic)
        self._sent: dict[str, int] = {}  # open run -> child spans journaled
        self._dirty: set[str] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False

    def run_started(self, run_id: str) -> None:
        self._started[run_id] = time.monotonic()

    def run_ended(self, run_id: str) -> None:
        """The run ended (its end record holds its spans): nothing more to journal."""
        started = self._started.get(run_id)
        if started is not None and time.monotonic() - started < LIVE_AFTER:
            self._started.pop(run_id, None)  # a short run: none of its spans was marked
            return
        with self._lock:
            self._started.pop(run_id, None)
            self._sent.pop(run_id, None)
            self._dirty.discard(run_id)

    def child_ended(self, run_id: str) -> None:
        """A child span of ``run_id`` was kept: journal it soon if the run is long."""
        started = self._started.get(run_id)
        if started is None or run_id in self._dirty or time.monotonic() - started < LIVE_AFTER:
            return
        with self._lock:
            if self._closed or run_id not in self._started:
                return
            self._dirty.add(run_id)
            if self._pid != os.getpid():  # a forked child: a thread of its own
                self._pid, self._thread = os.getpid(), None
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="otel-runs-live-spans")
                self._thread.start()
        self._wake.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._dirty.clear()
        self._wake.set()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            time.sleep(INTERVAL)
            with self._lock:
                self._wake.clear()
                todo, self._dirty = self._dirty, set()
            for run_id in todo:
                self._send(run_id)

    def _send(self, run_id: str) -> None:
        with self._lock:
            if run_id not in self._started:
                return  # ended meanwhile
            sent = self._sent.get(run_id, 0)
        spans = self._children(run_id, sent)
        if not spans:
            return
        self._journal(run_id, spans)  # (logs its own failures)
        with self._lock:
            if run_id in self._started:
                self._sent[run_id] = sent + len(spans)
