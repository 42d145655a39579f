"""Log a recurring failure once per interval instead of once per occurrence."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Logs the first failure of each key, then at most once per ``interval`` s,
    saying how many were suppressed in between."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, int]] = {}

    def exception(self, key: str, message: str, *args: object) -> None:
        """Log ``message`` with the current exception, rate-limited per ``key``."""
        self._log(key, logging.ERROR, message, args, exc_info=True)

    def warning(self, key: str, message: str, *args: object) -> None:
        """Log a warning, rate-limited per ``key``."""
        self._log(key, logging.WARNING, message, args, exc_info=False)

    def _log(self, key: str, level: int, message: str, args: tuple[object, ...], exc_info: bool) -> None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._state.get(key, (-float("inf"), 0))
            if now - last < self._interval:
                self._state[key] = (last, suppressed + 1)
                return
            self._state[key] = (now, 0)
        if suppressed:
            message += f" ({suppressed} more like this in the last {self._interval:.0f}s)"
        self._logger.log(level, message, *args, exc_info=exc_info)
