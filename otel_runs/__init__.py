"""otel-runs: every action of a Flask control plane becomes a tracked, durable,
observable Run, modeled as an OpenTelemetry span.

The public names below are imported on first use, and so are the submodules
(``otel_runs.inventory``, ``otel_runs.flask``, ...): ``import otel_runs`` is cheap
and ``otel_runs.<submodule>`` works without importing it first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: The package version (the one place it is written; ``pyproject.toml`` reads it).
__version__ = "0.1.0"

#: Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "RUN_ID_HEADER": "_decorator",
    "run_tracked": "_decorator",
    "InvalidRunId": "_ids",
    "new_run_id": "_ids",
    "validate_run_id": "_ids",
    "STATUSES": "_model",
    "Run": "_model",
    "CommandResult": "_run_command",
    "run_command": "_run_command",
    "configure": "_setup",
    "flush": "_setup",
    "shutdown": "_setup",
    "RUN_TYPES": "_taxonomy",
    "RunTypeError": "_taxonomy",
    "register_run_type": "_taxonomy",
    "RunHandle": "_tracking",
    "current_run": "_tracking",
    "tracked_run": "_tracking",
    "untracked_routes": "audit",
    "add_secret_key_parts": "redaction",
    "add_secret_patterns": "redaction",
    "add_secret_values": "redaction",
}

__all__ = [
    "RUN_ID_HEADER",
    "RUN_TYPES",
    "STATUSES",
    "CommandResult",
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
    "run_command",
    "run_tracked",
    "shutdown",
    "tracked_run",
    "untracked_routes",
    "validate_run_id",
]

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from ._decorator import RUN_ID_HEADER, run_tracked
    from ._ids import InvalidRunId, new_run_id, validate_run_id
    from ._model import STATUSES, Run
    from ._run_command import CommandResult, run_command
    from ._setup import configure, flush, shutdown
    from ._taxonomy import RUN_TYPES, RunTypeError, register_run_type
    from ._tracking import RunHandle, current_run, tracked_run
    from .audit import untracked_routes
    from .redaction import add_secret_key_parts, add_secret_patterns, add_secret_values


def __getattr__(name: str) -> Any:
    """A public name (imported from its submodule once), or a submodule."""
    home = _EXPORTS.get(name)
    if home is not None:
        value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
        globals()[name] = value
        return value
    if name.isidentifier() and not name.startswith("__"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # the submodule exists but needs something missing: say what
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def _main() -> None:
    """The ``otel-runs`` console script. It imports the command line itself, so that a
    Ctrl-C while Python is still loading it exits 130 without a traceback, as later."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    main()
