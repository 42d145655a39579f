"""otel-runs: every action of a Flask control plane becomes a tracked, durable,
observable Run, modeled as an OpenTelemetry span."""

from __future__ import annotations

from ._decorator import RUN_ID_HEADER, run_tracked
from ._ids import InvalidRunId, new_run_id, validate_run_id
from ._model import STATUSES, Run
from ._setup import configure, flush, shutdown
from ._taxonomy import RUN_TYPES, RunTypeError, register_run_type
from ._tracking import RunHandle, current_run, tracked_run
from .audit import untracked_routes
from .redaction import add_secret_key_parts, add_secret_patterns, add_secret_values

__version__ = "0.1.0"

__all__ = [
    "RUN_ID_HEADER",
    "RUN_TYPES",
    "STATUSES",
    "InvalidRunId",
    "Run",
    "RunHandle",
    "RunTypeError",
    "add_secret_key_parts",
    "add_secret_patterns",
    "add_secret_values",
    "configure",
    "current_run",
    "flush",
    "new_run_id",
    "register_run_type",
    "run_tracked",
    "shutdown",
    "tracked_run",
    "untracked_routes",
    "validate_run_id",
]
