"""Runs as metrics: OpenTelemetry's CICD metrics and otel-runs' own health.

- ``cicd.pipeline.run.duration`` (histogram, s), ``cicd.pipeline.run.active`` (up-down
  counter), ``cicd.pipeline.run.errors`` (counter), recorded as each run starts and ends
  (:class:`MetricsRunProcessor`);
- ``otel_runs.*``: runs journaled, spans and events dropped, and, read when metrics are
  collected, runs committed to the ledger by type and status, pending runs, commit lag,
  runs only in memory, quarantined records, open streams (``_health``).

:func:`enable_metrics` turns them on for a project root (``RunTracking`` does it when
``OTEL_RUNS_METRICS`` or ``OTEL_RUNS_METRICS_ENDPOINT`` is on); the MeterProvider is the
application's if it installed one, else one otel-runs installs (``_provider``). See
docs/metrics.md.

Modules by layer: ``_names`` (the instruments as data), ``_processor`` (a run processor),
``_health`` (reads the ledger and the live view), ``_provider`` / ``_enable`` (wiring),
``_flask`` (the ``RunTracking`` hook and the ``/metrics`` route).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the submodule that defines it (imported on first use: the RunTracking
#: hook reads the settings without loading the metrics SDK when metrics are off).
_EXPORTS: dict[str, str] = {
    "MetricsState": "_enable", "enable_metrics": "_enable", "metrics_state": "_enable",
    "DURATION_BUCKETS": "_names", "INSTRUMENTS": "_names", "METER_NAME": "_names",
    "Instrument": "_names", "prometheus_series": "_names",
    "MetricsRunProcessor": "_processor",
}

__all__ = ["DURATION_BUCKETS", "INSTRUMENTS", "METER_NAME", "Instrument", "MetricsRunProcessor",
           "MetricsState", "enable_metrics", "metrics_state", "prometheus_series"]

if TYPE_CHECKING:
    from ._enable import MetricsState, enable_metrics, metrics_state
    from ._names import DURATION_BUCKETS, INSTRUMENTS, METER_NAME, Instrument, prometheus_series
    from ._processor import MetricsRunProcessor


def __getattr__(name: str) -> Any:
    """A public name, imported from its submodule once."""
    home = _EXPORTS.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
