"""The thread that hands waiting run output to the sinks: one per process, ticking only
while runs write lines (no wake-up per run)."""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Flushable", "OutputFlusher"]


class Flushable(Protocol):
    """What the flusher flushes (a ``RunOutput``)."""

    def flush(self) -> None: ...


class OutputFlusher:
    """One thread per process flushing outputs with waiting lines every ``interval`` s.
    While it ticks (lines came within the last :data:`_IDLE_TICKS` ticks), marking an
    output is a dict store under a lock: no wake-up per run."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._dirty: dict[int, Flushable] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._awake = False  # the thread ticks: no need to wake it

    def dirty(self, output: Flushable) -> None:
        with self._lock:
            self._dirty[id(output)] = output
            if self._awake:
                return
            self._awake = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="otel-runs-output")
                self._thread.start()
        self._wake.set()

    def forget(self, output: Flushable) -> None:
        """``output`` was flushed and closed: not held until the next tick (what it holds is
        freed when its run is, without the garbage collector)."""
        self._dirty.pop(id(output), None)  # (atomic; the thread iterates a copy of what it took)

    def _run(self) -> None:
        idle = 0
        while True:
            self._wake.wait()
            time.sleep(self.interval)
            with self._lock:
                todo, self._dirty = self._dirty, {}
                if not todo:
                    idle += 1
                    if idle >= _IDLE_TICKS:  # nothing for a while: wait to be woken
                        idle = 0
                        self._awake = False
                        self._wake.clear()
                    continue
            idle = 0
            for output in list(todo.values()):
                output.flush()
            del todo, output  # (held until the next tick otherwise: a finished run's lines)

    def after_fork_in_child(self) -> None:
        """A forked child has no flusher thread: it starts one of its own when needed."""
        self._lock = threading.Lock()
        self._dirty = {}
        self._wake = threading.Event()
        self._thread = None
        self._awake = False


#: Empty ticks after which the flusher thread waits to be woken again.
_IDLE_TICKS = 10
