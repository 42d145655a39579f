"""Every instrument otel-runs creates, as data: name, kind, unit, description.

The run instruments are OpenTelemetry's CICD metrics (names from the
``opentelemetry-semantic-conventions`` package); the ``otel_runs.*`` ones are otel-runs'
own health. :func:`prometheus_series` gives the names a Prometheus scrape shows, which the
Grafana dashboard's queries are checked against.
"""

from __future__ import annotations

from typing import NamedTuple

from opentelemetry.semconv._incubating.metrics.cicd_metrics import (
    CICD_PIPELINE_RUN_ACTIVE,
    CICD_PIPELINE_RUN_DURATION,
    CICD_PIPELINE_RUN_ERRORS,
)

__all__ = ["DURATION_BUCKETS", "INSTRUMENTS", "Instrument", "METER_NAME", "prometheus_name",
           "prometheus_series"]

#: The instrumentation scope of every instrument below.
METER_NAME = "otel_runs"
#: Histogram bucket bounds of ``cicd.pipeline.run.duration``, seconds: from a fast API
#: action (5 ms) to an hour-long pipeline.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0, 1800.0, 3600.0)


class Instrument(NamedTuple):
    """One instrument: ``kind`` is ``histogram`` or ``counter`` (recorded as runs end), or
    ``gauge``, ``observable_counter`` or ``observable_updowncounter`` (read when metrics
    are collected)."""

    name: str
    kind: str
    unit: str
    description: str


DURATION = Instrument(CICD_PIPELINE_RUN_DURATION, "histogram", "s",
                      "Duration of a run (a pipeline run) by subtype, type, result and service.")
ACTIVE = Instrument(CICD_PIPELINE_RUN_ACTIVE, "observable_updowncounter", "{run}",
                    "Runs started and not ended in this process, by subtype, type and state.")
ERRORS = Instrument(CICD_PIPELINE_RUN_ERRORS, "counter", "{error}",
                    "Failed runs, by subtype, type and error.type.")
JOURNALED = Instrument("otel_runs.runs.journaled", "observable_counter", "{run}",
                       "Finished runs this process handed to a ledger's journal.")
SPANS_DROPPED = Instrument("otel_runs.spans.dropped", "counter", "{span}",
                           "Child spans not stored with their run (the ledger's limits per run).")
EVENTS_DROPPED = Instrument("otel_runs.events.dropped", "counter", "{event}",
                            "Run events beyond a run's limits, counted and not kept.")
LEDGER_RUNS = Instrument("otel_runs.ledger.runs", "gauge", "{run}",
                         "Runs committed to the ledger branch, by type and status (counted "
                         "from the commits' index lines, refreshed periodically).")
PENDING = Instrument("otel_runs.ledger.pending", "gauge", "{run}",
                     "Runs this process finished and has not committed yet.")
COMMIT_LAG = Instrument("otel_runs.ledger.commit.lag", "gauge", "s",
                        "How long the oldest run this process has not committed yet has waited "
                        "(0: none waiting).")
ONLY_IN_MEMORY = Instrument("otel_runs.ledger.only_in_memory", "gauge", "{run}",
                            "Runs neither committed nor journaled (the journal cannot be written).")
QUARANTINED = Instrument("otel_runs.ledger.quarantined", "gauge", "{record}",
                         "Journal records set aside because they can never be committed.")
STREAMS = Instrument("otel_runs.live.streams", "gauge", "{stream}",
                     "Open /api/events streams of this process.")

INSTRUMENTS: tuple[Instrument, ...] = (DURATION, ACTIVE, ERRORS, JOURNALED, SPANS_DROPPED,
                                       EVENTS_DROPPED, LEDGER_RUNS, PENDING, COMMIT_LAG,
                                       ONLY_IN_MEMORY, QUARANTINED, STREAMS)

_UNIT_SUFFIX = {"s": "seconds"}


def prometheus_name(instrument: Instrument) -> str:
    """The metric family name Prometheus shows for ``instrument`` (the OpenTelemetry
    Prometheus exporter's and the collector's rules: dots to ``_``, a known unit as a
    suffix, ``{...}`` annotations dropped)."""
    name = instrument.name.replace(".", "_")
    suffix = _UNIT_SUFFIX.get(instrument.unit)
    return f"{name}_{suffix}" if suffix else name


def prometheus_series() -> frozenset[str]:
    """Every series name a scrape of otel-runs' metrics can show (histograms as
    ``_bucket``/``_count``/``_sum``, counters with ``_total``)."""
    names: set[str] = set()
    for instrument in INSTRUMENTS:
        base = prometheus_name(instrument)
        if instrument.kind == "histogram":
            names.update(f"{base}{part}" for part in ("_bucket", "_count", "_sum"))
        elif instrument.kind in ("counter", "observable_counter"):
            names.add(f"{base}_total")
        else:
            names.add(base)
    return frozenset(names)
