"""The tail of a run's output: its last lines within half the run's cap.

Lines are held as the chunks they came in, with the running sums of their sizes, so that
dropping lines from the front costs no Python step per line: a whole chunk goes at once,
and the front of a chunk is cut where a bisect of its sums says. Lines without a level are
held as ``(n, t, stream, text)`` tuples (most of them are dropped again: no dict is made
for them); :meth:`OutputTail.lines` makes the dicts of those that stay.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from itertools import accumulate
from typing import Any

__all__ = ["OutputTail", "TailLine"]

#: A line in the tail: its dict, or ``(n, t, stream, text)`` for a line without a level.
TailLine = dict[str, Any] | tuple[int, float, str, str]


def _number(line: TailLine) -> int:
    return line[0] if type(line) is tuple else line["n"]  # type: ignore[index,return-value]


class OutputTail:
    """The last lines added within ``limit`` bytes (each line's size is given with it);
    always at least the last line. Counts what it dropped: :attr:`dropped` lines of
    :attr:`dropped_bytes`, the first numbered :attr:`first_dropped`. Not thread-safe."""

    __slots__ = ("_parts", "bytes", "dropped", "dropped_bytes", "first_dropped")

    def __init__(self) -> None:
        # Each part: [its lines, running sums of their sizes, index of its first kept line]
        self._parts: deque[list[Any]] = deque()
        self.bytes = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self.first_dropped = -1

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, lines: list[TailLine], sizes: list[int], limit: int) -> None:
        """Add ``lines`` (of ``sizes`` bytes each), then drop from the front what is over
        ``limit``."""
        if not lines:
            return
        sums = list(accumulate(sizes))
        self._parts.append([lines, sums, 0])
        self.bytes += sums[-1]
        if self.bytes > limit:
            self._trim(limit)

    def _trim(self, limit: int) -> None:
        parts = self._parts
        while self.bytes > limit:
            part = parts[0]
            lines, sums, start = part
            before = sums[start - 1] if start else 0
            only = len(parts) == 1
            if not only and self.bytes - (sums[-1] - before) >= limit:
                end = len(lines)  # all of this part goes
            else:  # the fewest lines from its front that bring the tail within the limit
                end = bisect_left(sums, before + self.bytes - limit, start) + 1
                if only:
                    end = min(end, len(lines) - 1)  # (the last line stays, however long)
                if end <= start:
                    return
            gone = sums[end - 1] - before
            if self.first_dropped < 0:
                self.first_dropped = _number(lines[start])
            self.dropped += end - start
            self.dropped_bytes += gone
            self.bytes -= gone
            if end == len(lines):
                parts.popleft()
            else:
                part[2] = end

    def lines(self) -> list[dict[str, Any]]:
        """The lines kept, oldest first, as dicts."""
        kept: list[dict[str, Any]] = []
        for lines, _, start in self._parts:
            for line in lines[start:] if start else lines:
                if type(line) is tuple:
                    n, t, stream, text = line
                    kept.append({"n": n, "t": t, "stream": stream, "text": text})
                else:
                    kept.append(line)  # type: ignore[arg-type]
        return kept
