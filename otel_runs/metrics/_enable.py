"""``enable_metrics``: turn run metrics on for a project root (process-wide state)."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider

from .. import __version__, _settings, _setup
from ._health import Health
from ._names import METER_NAME
from ._processor import MetricsRunProcessor
from ._provider import choose_meter_provider

__all__ = ["MetricsState", "enable_metrics", "metrics_state"]

logger = logging.getLogger("otel_runs.metrics")


@dataclass
class MetricsState:
    """What this process's run metrics go through."""

    provider: MeterProvider
    #: Whether otel-runs made ``provider`` (False: the application's).
    owns_provider: bool
    processor: MetricsRunProcessor
    health: Health
    #: Whether ``provider`` has a Prometheus reader (``/metrics`` serves its metrics).
    prometheus: bool


_lock = threading.Lock()
_state: MetricsState | None = None


def metrics_state() -> MetricsState | None:
    """The process's metrics state once :func:`enable_metrics` ran, else None."""
    return _state


def _has_prometheus_reader(provider: MeterProvider) -> bool:
    readers = getattr(provider, "_metric_readers", ())  # the SDK keeps them there
    return any(type(r).__name__ == "PrometheusMetricReader" for r in readers)


def enable_metrics(project_root: str | os.PathLike[str] | None = None, *,
                   prometheus: bool = False, otlp_endpoint: str | None = None,
                   stream_gate: Any = None) -> MetricsState:
    """Record run metrics for ``project_root``'s runs (default: the configured root,
    ``OTEL_RUNS_PROJECT_ROOT`` or the current directory). Idempotent, process-wide.

    The first call chooses the MeterProvider (the application's SDK provider if it
    installed one, else one otel-runs makes for its instruments: see :mod:`otel_runs.metrics._provider`;
    ``prometheus=True`` gives it a Prometheus reader, ``otlp_endpoint`` an OTLP one). Each
    root's ledger (if it has one) is reported by the health gauges; ``stream_gate`` is an
    app's ``StreamGate`` (its open streams).
    """
    global _state
    root = project_root if project_root is not None else _settings.env_str(
        _settings.OTEL_RUNS_PROJECT_ROOT, os.getcwd())
    assert root is not None
    resolved = str(Path(root).expanduser().resolve())
    with _lock:
        state = _state
        if state is None:
            provider, owns = choose_meter_provider(prometheus=prometheus,
                                                   otlp_endpoint=otlp_endpoint)
            meter = provider.get_meter(METER_NAME, __version__)
            state = MetricsState(provider, owns, MetricsRunProcessor(meter), Health(meter),
                                 _has_prometheus_reader(provider))
            _state = state
        elif prometheus and not state.prometheus:
            logger.warning("otel-runs: the MeterProvider in use has no Prometheus reader: "
                           "/metrics serves prometheus_client's registry without the run "
                           "metrics (enable the endpoint before other metrics, or add a "
                           "PrometheusMetricReader to the application's MeterProvider)")
        proc = state.processor
        new_root = resolved not in proc.roots
        proc.roots.add(resolved)
    if new_root:
        # For the process's life: otel_runs.shutdown() and configure() again keep it.
        _setup.add_app_processor(proc, resolved)
        if _setup.ledger_processor(resolved) is not None:
            proc.ledger_roots.add(resolved)
            from ..ledger import ledger_for

            state.health.watch_ledger(resolved, ledger_for(resolved))
    if stream_gate is not None:
        state.health.watch_streams(stream_gate)
    return state
