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

_DURABILITY_CHOICES = ("journal", "fsync")


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
