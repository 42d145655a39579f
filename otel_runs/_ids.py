"""Run identifiers: unique, time-sortable, URL- and ref-safe, short enough to type."""

from __future__ import annotations

import calendar
import os
import random
import re
import threading
import time
from datetime import datetime, timezone

__all__ = ["InvalidRunId", "is_run_id", "new_run_id", "validate_run_id", "run_id_time"]

#: ``20261127T101500123Z-3fa9c2d1e5``: UTC start time to the millisecond, then
#: 40 random bits (lowercase hex). Sorting ids as strings sorts runs by start time.
#: ASCII only (``[0-9]``, never ``\d``, which also matches other scripts' digits), so
#: every regex built from it accepts exactly what :func:`validate_run_id` accepts.
RUN_ID_PATTERN = r"[0-9]{8}T[0-9]{9}Z-[0-9a-f]{10}"
_RUN_ID_RE = re.compile(RUN_ID_PATTERN)


class InvalidRunId(ValueError):
    """A run id from outside does not have the run id format."""


class SecondStamp:
    """``time.strftime(fmt)`` of a UTC second, remembering the last second formatted
    (run ids and ISO times are made many times a second)."""

    def __init__(self, fmt: str) -> None:
        self._fmt = fmt
        #: (second, text) formatted last: hot paths read it inline and call only
        #: for another second (one tuple: safe to share between threads).
        self.last: tuple[int, str] = (-1, "")

    def __call__(self, sec: int) -> str:
        last_sec, text = self.last
        if last_sec != sec:
            text = time.strftime(self._fmt, time.gmtime(sec))
            self.last = (sec, text)
        return text


_id_stamp = SecondStamp("%Y%m%dT%H%M%S")
#: The random parts' source: a generator of our own, seeded from the OS (as
#: ``random``'s is; an application's ``random.seed()`` does not touch it) and
#: reseeded in a forked child, so two processes never share a sequence. Run ids
#: are not secrets: this costs no system call per id, unlike ``secrets``.
_random = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random.seed)
_last: tuple[int, int] = (-1, 0)  # (ms, random part) of the previous id
_last_lock = threading.Lock()


def _next_suffix(ms: int) -> int:
    """The random part of this process's next id at millisecond ``ms``: fresh random
    bits in a new millisecond, the previous value plus one within the same
    millisecond (as ULID's monotonic mode), so a process's ids sort in creation
    order. If the clock steps back, fresh bits and the sequence is left alone."""
    global _last
    with _last_lock:
        last_ms, last_rnd = _last
        if ms == last_ms and last_rnd + 1 < 1 << 40:
            _last = (ms, last_rnd + 1)
            return last_rnd + 1
        rnd = _random.getrandbits(39)  # headroom for increments within one ms
        if ms > last_ms:
            _last = (ms, rnd)
        return rnd


def _format(ms: int, rnd: int) -> str:
    sec = ms // 1000
    last = _id_stamp.last
    stamp = last[1] if last[0] == sec else _id_stamp(sec)
    return f"{stamp}{ms % 1000:03d}Z-{rnd:010x}"


def now_run_id() -> tuple[str, int]:
    """A new run id for a run starting now, and that start time (``time_ns``).
    Ids made by one process sort in creation order, even within a millisecond."""
    ns = time.time_ns()
    ms = ns // 1_000_000
    return _format(ms, _next_suffix(ms)), ns


def new_run_id(at: datetime | None = None) -> str:
    """A new run id for a run starting at ``at`` (default: now, as :func:`now_run_id`)."""
    if at is None:
        return now_run_id()[0]
    at = at.astimezone(timezone.utc)
    ms = int(calendar.timegm(at.timetuple())) * 1000 + at.microsecond // 1000
    return _format(ms, _random.getrandbits(40))


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


def is_run_id(value: object) -> bool:
    """Whether ``value`` is a well-formed run id (:func:`validate_run_id` without raising)."""
    return isinstance(value, str) and _RUN_ID_RE.fullmatch(value) is not None


def run_id_time(run_id: str) -> datetime:
    """Return the start time encoded in a (valid) run id."""
    validate_run_id(run_id)
    stamp = run_id.split("-", 1)[0]
    base = datetime.strptime(stamp[:15], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    return base.replace(microsecond=int(stamp[15:18]) * 1000)
