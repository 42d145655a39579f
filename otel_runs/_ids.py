"""Run identifiers: unique, time-sortable, URL- and ref-safe, short enough to type."""

from __future__ import annotations

import calendar
import re
import secrets
import time
from datetime import datetime, timezone

__all__ = ["InvalidRunId", "new_run_id", "validate_run_id", "run_id_time"]

#: ``20261127T101500123Z-3fa9c2d1e5``: UTC start time to the millisecond, then
#: 40 random bits (lowercase hex). Sorting ids as strings sorts runs by start time.
RUN_ID_PATTERN = r"\d{8}T\d{9}Z-[0-9a-f]{10}"
_RUN_ID_RE = re.compile(RUN_ID_PATTERN)


class InvalidRunId(ValueError):
    """A run id from outside does not have the run id format."""


_stamp_cache: tuple[int, str] = (-1, "")


def new_run_id(at: datetime | int | None = None) -> str:
    """A new run id for a run starting at ``at`` (a datetime or ``time.time_ns()``;
    default: now)."""
    global _stamp_cache
    if isinstance(at, datetime):
        at = at.astimezone(timezone.utc)
        ns = int(calendar.timegm(at.timetuple())) * 1_000_000_000 + at.microsecond * 1000
    else:
        ns = time.time_ns() if at is None else at
    sec, rem = divmod(ns, 1_000_000_000)
    cached_sec, prefix = _stamp_cache
    if cached_sec != sec:
        prefix = time.strftime("%Y%m%dT%H%M%S", time.gmtime(sec))
        _stamp_cache = (sec, prefix)
    return f"{prefix}{rem // 1_000_000:03d}Z-{secrets.token_hex(5)}"


def validate_run_id(run_id: object) -> str:
    """Return ``run_id`` if it is a well-formed run id, else raise :class:`InvalidRunId`.

    Use this wherever an id comes in from outside (URL, CLI, ledger file): a valid
    id cannot traverse paths or inject into git refs.
    """
    if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
        shown = run_id if isinstance(run_id, str) and len(run_id) <= 80 else repr(run_id)[:80]
        raise InvalidRunId(
            f"malformed run id {shown!r}: expected e.g. '20261127T101500123Z-3fa9c2d1e5'"
        )
    return run_id


def run_id_time(run_id: str) -> datetime:
    """Return the start time encoded in a (valid) run id."""
    validate_run_id(run_id)
    stamp = run_id.split("-", 1)[0]
    base = datetime.strptime(stamp[:15], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    return base.replace(microsecond=int(stamp[15:18]) * 1000)
