"""Child spans and events of a long run, journaled while it runs: every process of the
host then shows the run's timeline and events so far (the ledger's journal view reads
them), not only once it ended.

One thread per process, ticking every :data:`INTERVAL` seconds while runs are open,
looks at each run open for :data:`LIVE_AFTER` seconds or more: child spans kept for it
since the last look, and its events if it has new ones, go into one journal chunk. A
run shorter than that (a request) costs a dict store and a pop. Its end record holds
every child span and event, as before: these chunks are for readers only, and are
dropped with the run's segment once it is committed (the journal writes no chunk for a
run that already ended there).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace import Span

from .._model import span_events

__all__ = ["INTERVAL", "LIVE_AFTER", "LiveSpans"]

#: Seconds a run runs before its child spans and events are journaled while it runs.
LIVE_AFTER = 0.5
#: Seconds between two looks at the open runs.
INTERVAL = 0.5
#: Ticks without an open run after which the thread stops (the next run starts another).
_IDLE_TICKS = 20

_Journal = Callable[[str, list[dict[str, Any]], "list[dict[str, Any]] | None"], None]


class LiveSpans:
    """The open runs of one ledger processor and the thread that journals what they did
    so far: ``children(run_id, n)`` gives a run's kept child spans from the n-th on;
    ``journal(run_id, spans, events)`` writes a chunk (``events``: all of them so far, or
    None when none are new)."""

    def __init__(self, children: Callable[[str, int], list[dict[str, Any]]],
                 journal: _Journal) -> None:
        self._children, self._journal = children, journal
        self._lock = threading.Lock()
        #: open run -> (when it started (monotonic), its span, spans and events journaled)
        self._open: dict[str, list[Any]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        _instances.add(self)

    def _after_fork_in_child(self) -> None:
        """A forked child has no thread (and none of the parent's open runs)."""
        self._lock = threading.Lock()
        self._open = {}
        self._thread = None

    def run_started(self, run_id: str, span: Span) -> None:
        self._open[run_id] = [time.monotonic(), span, 0, 0]
        if self._thread is None and not self._closed:
            with self._lock:
                if self._thread is None and not self._closed:
                    self._thread = threading.Thread(target=self._run, daemon=True,
                                                    name="otel-runs-live-spans")
                    self._thread.start()

    def run_ended(self, run_id: str) -> None:
        """The run ended: its end record holds everything (a chunk being written for it
        meanwhile is not written: the journal writer checks the run is open)."""
        self._open.pop(run_id, None)

    def close(self) -> None:
        self._closed = True

    def _run(self) -> None:
        idle = 0
        while not self._closed:
            time.sleep(INTERVAL)
            runs = self._open.copy()
            if not runs:
                idle += 1
                if idle >= _IDLE_TICKS and self._stop():
                    return
                continue
            idle = 0
            now = time.monotonic()
            for run_id, state in runs.items():
                if now - state[0] >= LIVE_AFTER:
                    try:
                        self._send(run_id, state)
                    except Exception:  # noqa: BLE001 - never let the thread die
                        pass

    def _stop(self) -> bool:
        """Let the thread end (the next run starts another); False when a run was noted
        meanwhile and no other thread was started for it: this one carries on."""
        with self._lock:
            self._thread = None
        if not self._open:  # (else a run noted meanwhile may have seen this thread and started none)
            return True
        with self._lock:
            if self._thread is not None:
                return True  # another one was started for it
            self._thread = threading.current_thread()
        return False

    def _send(self, run_id: str, state: list[Any]) -> None:
        _, span, sent_spans, sent_events = state
        spans = self._children(run_id, sent_spans)
        count = len(span.events)
        events = span_events(span) if count > sent_events else None
        if not spans and events is None:
            return
        self._journal(run_id, spans, events)  # (logs its own failures)
        state[2] = sent_spans + len(spans)
        state[3] = max(sent_events, count)


_instances: weakref.WeakSet[LiveSpans] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for live in list(_instances):
        live._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
