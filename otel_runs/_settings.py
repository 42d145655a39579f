"""Every environment variable otel-runs reads, read in one place."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("otel_runs")

#: Default project root when none is passed (else the current directory).
OTEL_RUNS_PROJECT_ROOT = "OTEL_RUNS_PROJECT_ROOT"
#: ``journal`` (default: survives the process being killed) or ``fsync``
#: (also survives power loss; group-committed fsync).
OTEL_RUNS_DURABILITY = "OTEL_RUNS_DURABILITY"
#: Ledger branch name (default ``scp-ledger``).
OTEL_RUNS_LEDGER_BRANCH = "OTEL_RUNS_LEDGER_BRANCH"
#: ``0``/``false`` turns the git ledger off.
OTEL_RUNS_LEDGER = "OTEL_RUNS_LEDGER"
#: Redis URL for a hub shared by several processes (the ``redis`` extra).
OTEL_RUNS_REDIS_URL = "OTEL_RUNS_REDIS_URL"
#: Trace link template for the runs page, e.g. ``http://localhost:16686/trace/{trace_id}``.
OTEL_RUNS_TRACE_URL = "OTEL_RUNS_TRACE_URL"
#: Extra comma-separated key parts that mark metadata keys as secrets.
OTEL_RUNS_SECRET_KEYS = "OTEL_RUNS_SECRET_KEYS"
#: Most bytes one run's record may take (metadata, summary and events; default 262144).
OTEL_RUNS_MAX_RUN_BYTES = "OTEL_RUNS_MAX_RUN_BYTES"
#: Longest string kept in metadata, event and span attributes (default 4096 characters).
OTEL_RUNS_MAX_VALUE_CHARS = "OTEL_RUNS_MAX_VALUE_CHARS"
#: Most items of one list and keys of one dict kept (default 1000).
OTEL_RUNS_MAX_ITEMS = "OTEL_RUNS_MAX_ITEMS"
#: Most events one run keeps, the dropped-events marker and the exception included
#: (default 128, never more than the SDK's ``OTEL_SPAN_EVENT_COUNT_LIMIT``).
OTEL_RUNS_MAX_EVENTS = "OTEL_RUNS_MAX_EVENTS"
#: Most bytes of child spans the ledger stores with one run (default 1048576).
OTEL_RUNS_MAX_SPANS_BYTES = "OTEL_RUNS_MAX_SPANS_BYTES"
#: Most bytes the live feed's in-process replay buffer holds (default 8388608).
OTEL_RUNS_SSE_BUFFER_BYTES = "OTEL_RUNS_SSE_BUFFER_BYTES"
#: What a tracked block does when its run cannot be written to the journal (disk
#: full, read-only ``.git``): ``keep`` (default: the run is kept in memory, journaled
#: again and committed when writing works) or ``raise`` (the same, and the block
#: raises ``otel_runs.ledger.JournalUnavailable``).
OTEL_RUNS_ON_JOURNAL_ERROR = "OTEL_RUNS_ON_JOURNAL_ERROR"
#: ``1`` lets any client reach the runs API, stream and page (default: loopback
#: clients only), for apps that put them behind their own proxy authentication.
OTEL_RUNS_API_PUBLIC = "OTEL_RUNS_API_PUBLIC"
#: Extra comma-separated ``Host`` names accepted besides ``localhost``, ``127.0.0.1``,
#: ``[::1]`` and the bound address (``*``: any); DNS-rebinding protection.
OTEL_RUNS_ALLOWED_HOSTS = "OTEL_RUNS_ALLOWED_HOSTS"
#: Extra comma-separated origins (``https://ops.example.com``) whose state-changing
#: requests a ``RunTracking(app, protect=True)`` app accepts besides its own.
OTEL_RUNS_ALLOWED_ORIGINS = "OTEL_RUNS_ALLOWED_ORIGINS"

#: ``1`` records run metrics (OpenTelemetry's CICD metrics and otel-runs' health) through
#: the OpenTelemetry metrics SDK (default off; also ``app.config``).
OTEL_RUNS_METRICS = "OTEL_RUNS_METRICS"
#: ``1`` (or a path such as ``/metrics``) serves the metrics for Prometheus at that path of
#: each ``RunTracking`` app, guarded like the runs API (default off; implies metrics on).
OTEL_RUNS_METRICS_ENDPOINT = "OTEL_RUNS_METRICS_ENDPOINT"
#: Seconds between two counts of the ledger branch's runs for ``otel_runs.ledger.runs``
#: (default 30).
OTEL_RUNS_METRICS_LEDGER_INTERVAL = "OTEL_RUNS_METRICS_LEDGER_INTERVAL"

_DURABILITY_CHOICES = ("journal", "fsync")
_ON_JOURNAL_ERROR_CHOICES = ("keep", "raise")


def env_str(name: str, default: str | None = None) -> str | None:
    """The variable's value, stripped; ``default`` when unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or default


def env_bool(name: str, default: bool) -> bool:
    """A boolean variable (``1/true/yes/on`` or ``0/false/no/off``); a bad value
    falls back to ``default`` with a warning."""
    value = env_str(name)
    if value is None:
        return default
    low = value.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    logger.warning("%s=%r is not a boolean; using %s", name, value, default)
    return default


def env_int(name: str, default: int, minimum: int = 1) -> int:
    """An integer variable of at least ``minimum``; a bad value falls back to
    ``default`` with a warning."""
    value = env_str(name)
    if value is None:
        return default
    try:
        number = int(value.replace("_", ""))
    except ValueError:
        number = minimum - 1
    if number < minimum:
        logger.warning("%s=%r is not an integer >= %d; using %d", name, value, minimum, default)
        return default
    return number


def durability(explicit: str | None = None) -> str:
    """The durability mode: ``explicit``, else ``OTEL_RUNS_DURABILITY``, else ``journal``."""
    if explicit is not None:
        if explicit not in _DURABILITY_CHOICES:
            raise ValueError(f"durability must be one of {_DURABILITY_CHOICES}, got {explicit!r}")
        return explicit
    value = env_str(OTEL_RUNS_DURABILITY, "journal")
    if value not in _DURABILITY_CHOICES:
        logger.warning("%s=%r is not one of %s; using 'journal'", OTEL_RUNS_DURABILITY, value,
                       _DURABILITY_CHOICES)
        return "journal"
    return value  # type: ignore[return-value]


def on_journal_error() -> str:
    """``OTEL_RUNS_ON_JOURNAL_ERROR``: ``keep`` (default) or ``raise``; a bad value
    warns and means ``keep``."""
    value = (env_str(OTEL_RUNS_ON_JOURNAL_ERROR, "keep") or "keep").lower()
    if value not in _ON_JOURNAL_ERROR_CHOICES:
        logger.warning("%s=%r is not one of %s; using 'keep'", OTEL_RUNS_ON_JOURNAL_ERROR, value,
                       _ON_JOURNAL_ERROR_CHOICES)
        return "keep"
    return value
