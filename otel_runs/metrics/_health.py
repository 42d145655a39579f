"""otel-runs' own health as observable instruments, read when metrics are collected.

Nothing here runs on the request path: the callbacks run on the reader's thread (a
Prometheus scrape, the OTLP reader's interval). They read the ledgers' public state
(pending runs, runs only in memory, quarantined records), the open streams and the
committed runs by type and status. That last one (``otel_runs.ledger.runs``) is counted
by :class:`~otel_runs.ledger.RunCensus` from the commits' index lines, in a background
thread, at most every ``OTEL_RUNS_METRICS_LEDGER_INTERVAL`` seconds (default 30): a
collection reads the last counts and, when they are older, starts a refresh.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from .. import _attributes as A
from .. import _settings
from . import _names as N

__all__ = ["DEFAULT_LEDGER_INTERVAL", "Health"]

logger = logging.getLogger("otel_runs.metrics")

#: Seconds between two counts of the ledger branch's runs (``OTEL_RUNS_METRICS_LEDGER_INTERVAL``).
DEFAULT_LEDGER_INTERVAL = 30


class Health:
    """The observable instruments and what they read: ledgers (by resolved project
    root) with their censuses, and the stream gates of the apps."""

    def __init__(self, meter: Meter) -> None:
        self._lock = threading.Lock()
        self._ledgers: dict[str, Any] = {}
        self._censuses: dict[str, Any] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._quarantined = 0
        self._gates: weakref.WeakSet[Any] = weakref.WeakSet()
        self._refreshing = False
        self._refreshed_at = -float("inf")
        self.interval = float(_settings.env_int(_settings.OTEL_RUNS_METRICS_LEDGER_INTERVAL,
                                                DEFAULT_LEDGER_INTERVAL, minimum=1))
        callbacks = {
            N.LEDGER_RUNS.name: self._observe_ledger_runs,
            N.PENDING.name: self._observe_pending,
            N.COMMIT_LAG.name: self._observe_commit_lag,
            N.ONLY_IN_MEMORY.name: self._observe_only_in_memory,
            N.QUARANTINED.name: self._observe_quarantined,
            N.STREAMS.name: self._observe_streams,
        }
        for spec in N.INSTRUMENTS:
            if spec.name in callbacks:
                meter.create_observable_gauge(spec.name, callbacks=[callbacks[spec.name]],
                                              unit=spec.unit, description=spec.description)
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    # -- what is watched --------------------------------------------------------------------

    def watch_ledger(self, resolved_root: str, ledger: Any) -> None:
        """Report ``ledger`` (of ``resolved_root``); counts its branch in the background."""
        from ..ledger import RunCensus

        with self._lock:
            if resolved_root in self._ledgers:
                return
            self._ledgers[resolved_root] = ledger
            # One census per ledger: several roots of one repository share the branch.
            if not any(c._ledger is ledger for c in self._censuses.values()):
                self._censuses[resolved_root] = RunCensus(ledger)
        self.refresh_soon(force=True)

    def watch_streams(self, gate: Any) -> None:
        """Report the open streams of an app's ``StreamGate``."""
        self._gates.add(gate)

    # -- the ledger's runs by type and status -------------------------------------------------

    def refresh_soon(self, force: bool = False) -> None:
        """Start a background count unless one runs or the last is recent."""
        with self._lock:
            if self._refreshing or not self._censuses:
                return
            if not force and time.monotonic() - self._refreshed_at < self.interval:
                return
            self._refreshing = True
        threading.Thread(target=self._refresh, name="otel-runs-metrics-census",
                         daemon=True).start()

    def refresh(self) -> dict[tuple[str, str], int]:
        """Count now (in this thread); the counts by ``(type, status)``."""
        with self._lock:
            self._refreshing = True
        self._refresh()
        return dict(self._counts)

    def _refresh(self) -> None:
        try:
            with self._lock:
                censuses = list(self._censuses.values())
                ledgers = list({id(v): v for v in self._ledgers.values()}.values())
            total: dict[tuple[str, str], int] = {}
            for census in censuses:
                try:
                    counts = census.refresh()
                except Exception as exc:  # the previous counts stay
                    logger.warning("otel-runs: counting the ledger's runs for metrics failed: "
                                   "%s", exc)
                    counts = census.counts()
                for key, value in counts.items():
                    total[key] = total.get(key, 0) + value
            quarantined = 0
            for ledger in ledgers:
                try:
                    quarantined += len(ledger.quarantined())
                except Exception:  # an unreadable journal dir: reported as none
                    pass
            self._counts, self._quarantined = total, quarantined
        finally:
            with self._lock:
                self._refreshing = False
                self._refreshed_at = time.monotonic()

    # -- callbacks ------------------------------------------------------------------------------

    def _observe_ledger_runs(self, options: CallbackOptions) -> Iterable[Observation]:
        self.refresh_soon()
        return [Observation(count, {A.RUN_TYPE: run_type, A.RUN_STATUS: status,
                                    A.CICD_PIPELINE_RESULT: A.RESULT_OF_STATUS.get(status,
                                                                                   status)})
                for (run_type, status), count in sorted(self._counts.items())]

    def _each_ledger(self) -> list[Any]:
        with self._lock:
            return list({id(v): v for v in self._ledgers.values()}.values())

    def _observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        ledgers = self._each_ledger()
        return [Observation(sum(len(ledger.pending) for ledger in ledgers))] if ledgers else []

    def _observe_commit_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        ledgers = self._each_ledger()
        if not ledgers:
            return []
        now, lag = time.monotonic(), 0.0
        for ledger in ledgers:
            queue = ledger.pending
            first = getattr(queue, "first_at", None)
            if len(queue) and isinstance(first, float) and first > 0:
                lag = max(lag, now - first)
        return [Observation(round(lag, 6))]

    def _observe_only_in_memory(self, options: CallbackOptions) -> Iterable[Observation]:
        ledgers = self._each_ledger()
        return [Observation(sum(ledger.only_in_memory for ledger in ledgers))] if ledgers else []

    def _observe_quarantined(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._quarantined)] if self._ledgers else []

    def _observe_streams(self, options: CallbackOptions) -> Iterable[Observation]:
        gates = list(self._gates)
        return [Observation(sum(int(g.open) for g in gates))] if gates else []

    # -- fork safety ------------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        # The parent's refresh thread (and maybe its locks) did not come along.
        from ..ledger import RunCensus

        self._lock = threading.Lock()
        self._refreshing = False
        self._refreshed_at = -float("inf")
        self._censuses = {root: RunCensus(census._ledger)
                          for root, census in self._censuses.items()}
