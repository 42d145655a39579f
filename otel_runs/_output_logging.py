"""Python ``logging`` records emitted inside a run, captured as lines of its output.

:func:`install_log_capture` installs one :class:`RunLogHandler` per process (however often
``configure()`` runs). It is not added to any logger: otel-runs wraps
``logging.Logger.callHandlers`` once (as Sentry's logging integration does), so every record
a logger emits is offered to it after the application's own handlers ran. The
application's logging is unchanged: ``logging.basicConfig`` still configures an empty root
logger, ``logging.lastResort`` still prints warnings when nothing else does.

A record emitted inside an open run at or above ``OTEL_RUNS_OUTPUT_LOG_LEVEL`` (default
``INFO``) becomes a ``log`` line with its level and logger name. Records below a logger's
effective level are never made by ``logging`` at all (Python's root logger defaults to
``WARNING``: an application sets its level, e.g. ``logging.basicConfig(level="INFO")``).
otel-runs' own loggers are not captured.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from ._context import CURRENT_RUN

__all__ = ["RunLogHandler", "install_log_capture", "log_capture_level"]

_installed: RunLogHandler | None = None
_lock = threading.Lock()


def log_capture_level() -> int:
    """``OTEL_RUNS_OUTPUT_LOG_LEVEL`` as a number (a name or a number; default INFO)."""
    raw = os.environ.get("OTEL_RUNS_OUTPUT_LOG_LEVEL", "").strip()
    if not raw:
        return logging.INFO
    if raw.isdigit():
        return int(raw)
    level = logging.getLevelName(raw.upper())
    return level if isinstance(level, int) else logging.INFO


class RunLogHandler(logging.Handler):
    """Adds each record emitted inside an open run to that run's output."""

    def emit(self, record: logging.LogRecord) -> None:
        handle = CURRENT_RUN.get()
        name = record.name
        if handle is None or name == "otel_runs" or name.startswith("otel_runs."):
            return
        out = handle.output_buffer()
        if out is None:
            return
        text = record.getMessage()
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = _FORMATTER.formatException(record.exc_info)
            text += "\n" + record.exc_text
        out.write("log", text, level=record.levelname, logger=name)


_FORMATTER = logging.Formatter()


def _wrap_call_handlers() -> None:
    original = logging.Logger.callHandlers
    if getattr(original, "_otel_runs", False):
        return

    def call_handlers(self: logging.Logger, record: logging.LogRecord) -> Any:
        try:
            return original(self, record)
        finally:
            handler = _installed
            if handler is not None and record.levelno >= handler.level \
                    and CURRENT_RUN.get() is not None:
                handler.handle(record)

    call_handlers._otel_runs = True  # type: ignore[attr-defined]
    call_handlers.__wrapped__ = original  # type: ignore[attr-defined]
    logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign]


def install_log_capture() -> RunLogHandler:
    """Install the capture (once per process); returns its handler."""
    global _installed
    with _lock:
        if _installed is None:
            handler = RunLogHandler()
            handler.setLevel(log_capture_level())
            _installed = handler
        _wrap_call_handlers()
        return _installed
