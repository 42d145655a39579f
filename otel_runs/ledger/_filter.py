"""Which runs a listing or a count takes: :class:`RunFilter`.

A run's start time is the one its id records (UTC, to the millisecond; ids sort by it),
so a time range is a range of run ids: ``since`` (inclusive) and ``until`` (exclusive)
become id bounds, and a reader walking runs newest first stops at the first id below
``since``. ``subtype`` keeps runs whose subtype contains it, case-insensitively, with
runs of white space counted as one space (as the commits' index lines write them).
"""

from __future__ import annotations

import functools
import re
from calendar import timegm
from datetime import datetime, timezone
from typing import Any, NamedTuple

from ._layout import IndexLine

__all__ = ["RunFilter", "id_bound", "id_ms", "norm_subtype"]

_SPACE_RE = re.compile(r"[\s\x00-\x1f\x7f]+")
#: Index lines cut a subtype to this many characters (the last one an ellipsis).
_LINE_SUBTYPE_CHARS = 200


def norm_subtype(text: str) -> str:
    """``text`` lower-cased, each run of white space or control characters one space, stripped."""
    return _SPACE_RE.sub(" ", text).strip().lower()


def id_bound(at: datetime) -> str:
    """The id prefix of a run started at ``at`` (naive: UTC), to the millisecond: every
    id of a run started at or after ``at`` sorts at or above it, every earlier one below."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    at = at.astimezone(timezone.utc)
    return (f"{at.year:04d}{at.month:02d}{at.day:02d}T{at.hour:02d}{at.minute:02d}"
            f"{at.second:02d}{at.microsecond // 1000:03d}Z")


@functools.lru_cache(maxsize=4096)
def _day_ms(day: str) -> int:
    return timegm((int(day[0:4]), int(day[4:6]), int(day[6:8]), 0, 0, 0, 0, 0, 0)) * 1000


def id_ms(run_id: str) -> int:
    """The start time a well-formed run id records, in ms since the epoch (no check)."""
    return (_day_ms(run_id[:8]) + int(run_id[9:11]) * 3_600_000 + int(run_id[11:13]) * 60_000
            + int(run_id[13:15]) * 1000 + int(run_id[15:18]))


class RunFilter(NamedTuple):
    """Runs of a type, a subtype (part of it), a status, and an id range ``[lo, hi)``."""

    type: str | None = None
    #: Normalised (:func:`norm_subtype`); None or "": any subtype.
    subtype: str | None = None
    status: str | None = None
    #: Ids at or above this ("": no lower bound; from ``since``).
    lo: str = ""
    #: Ids strictly below this (None: no upper bound; from ``until`` and ``before``).
    hi: str | None = None

    @classmethod
    def of(cls, type: str | None = None, subtype: str | None = None,  # noqa: A002
           status: str | None = None, since: datetime | None = None,
           until: datetime | None = None, before: str | None = None) -> RunFilter:
        """The filter of these arguments (``before``: a validated run id, exclusive)."""
        sub = norm_subtype(subtype) if subtype else None
        his = [b for b in (None if until is None else id_bound(until), before) if b]
        return cls(type or None, sub or None, status or None,
                   "" if since is None else id_bound(since), min(his) if his else None)

    @property
    def narrowed(self) -> bool:
        """Whether a subtype or an id range is set (beyond type and status)."""
        return bool(self.subtype or self.lo or self.hi is not None)

    def in_range(self, run_id: str) -> bool:
        return run_id >= self.lo and (self.hi is None or run_id < self.hi)

    def subtype_ok(self, subtype: Any) -> bool:
        return not self.subtype or self.subtype in norm_subtype(str(subtype or ""))

    def run_ok(self, run: dict[str, Any]) -> bool:
        """Whether a run dict is one of these runs."""
        return (self.in_range(str(run.get("run_id", "")))
                and (self.type is None or run.get("type") == self.type)
                and (self.status is None or run.get("status") == self.status)
                and self.subtype_ok(run.get("subtype")))

    def line_ok(self, line: IndexLine) -> bool:
        """Whether an index line may be one of these runs (a cut subtype may: the run
        file decides)."""
        if not self.in_range(line.run_id) or (self.type is not None and line.type != self.type) \
                or (self.status is not None and line.status != self.status):
            return False
        return self.subtype_ok(line.subtype) or len(line.subtype) >= _LINE_SUBTYPE_CHARS

    def key_ok(self, rtype: str, subtype: str) -> bool:
        """Whether a census key (an index line's type and subtype) is of these runs."""
        return (self.type is None or rtype == self.type) and self.subtype_ok(subtype)
