"""A reader of the feed hub (:mod:`._feed_hub`): served from the process's buffer, or
from the feed file itself while it is further back (a ``Last-Event-ID`` replay, a
reader that lagged past the buffer), as the Redis hub's readers are."""

from __future__ import annotations

import time
import weakref
from itertools import islice
from typing import TYPE_CHECKING, Any

from ._feed import FeedGap, Position, Record
from ._feed_cursor import FeedCursor
from ._hub import RESET_EVENT, Event, SubscriberDroppedError, _dumps, drop_stalled_reader

if TYPE_CHECKING:
    from ._feed_hub import FeedHub

__all__ = ["FeedSubscription", "feed_events"]


def _event(position: Position, event_type: bytes, data: bytes) -> Event | None:
    """The event of a record, its frame built from the record's bytes (encoded once)."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    event_id = f"{position[0]}-{position[1]}"
    event = object.__new__(Event)  # a frozen dataclass's __init__ costs more than the rest
    event.__dict__.update(id=event_id, type=event_type.decode(), data=text, frame=b"".join(
        (b"event: ", event_type, b"\nid: ", event_id.encode(), b"\ndata: ", data, b"\n\n")))
    return event


def feed_events(records: list[Record]) -> list[tuple[Position, Event]]:
    """The events of feed records (a record that is not UTF-8 is skipped)."""
    out = []
    for position, event_type, data in records:
        event = _event(position, event_type, data)
        if event is not None:
            out.append((position, event))
    return out


#: Per hub, the last span of its buffer handed to a reader and its frames joined:
#: readers at the same place get the same bytes, joined once, not once per reader.
_joined: weakref.WeakKeyDictionary[FeedHub, tuple[Any, tuple[int, int, int], bytes]] = \
    weakref.WeakKeyDictionary()


def _joined_locked(hub: FeedHub, start: int, count: int) -> bytes:
    """The frames of ``count`` buffered events from index ``start``, joined (caller
    holds ``hub._cond``). The key holds the buffer itself (a new one after a fork) and
    the local number of the first event (never reused within one buffer)."""
    if not count:
        return b""
    key = (hub._restarts, hub._seq - len(hub._keys) + 1 + start, count)
    entry = _joined.get(hub)
    if entry is None or entry[0] is not hub._frames or entry[1] != key:
        entry = (hub._frames, key, b"".join(islice(hub._frames, start, start + count)))
        _joined[hub] = entry
    return entry[2]


class FeedSubscription:
    """A reader's place: a local number into the hub's buffer (``seq``), or, while it is
    further back than the buffer, a cursor reading the feed file (``seq`` None)."""

    def __init__(self, hub: FeedHub, position: Position, seq: int, reset: bool) -> None:
        self.hub = hub
        self.position = position
        self.seq: int | None = seq
        #: Events up to here are a replay: read in chunks, not a reason to drop.
        self.replay_until = position
        self.restarts = hub._restarts
        self.last_read = time.monotonic()
        self.pending_reset = reset
        self.closed = False
        self._cursor: FeedCursor | None = None

    def next_batch(self, timeout: float) -> list[Event]:
        batch: list[Event] = self._next(timeout, frames=False)
        return batch

    def next_frames(self, timeout: float) -> tuple[int, bytes]:
        """:meth:`next_batch` as ``(event count, their SSE frames joined)``."""
        frames: tuple[int, bytes] = self._next(timeout, frames=True)
        return frames

    def _next(self, timeout: float, frames: bool) -> Any:
        """The next events (``frames``: as ``(count, joined frames)``), waiting up to
        ``timeout`` s: from the file while the reader is behind the buffer."""
        hub = self.hub
        if self.pending_reset:
            self.pending_reset = False
            reset = Event(f"{self.position[0]}-{self.position[1]}", RESET_EVENT,
                          _dumps({"reason": "last event id unknown or too old; reload"}))
            return (1, reset.frame) if frames else [reset]
        deadline = time.monotonic() + timeout
        while True:
            if self.seq is None:
                events, progressed = self._from_file()
                if events:
                    return (len(events), b"".join(e.frame for e in events)) if frames else events
                if self.seq is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return (0, b"") if frames else []
                    if not progressed:  # the feed is not there yet: wait, bounded
                        time.sleep(min(remaining, hub.poll_interval))
                    continue
            with hub._cond:
                span = self._from_buffer_locked(deadline)
                if span is not None:
                    start, count = span
                    if frames:
                        return count, _joined_locked(hub, start, count)
                    return list(islice(hub._events, start, start + count))

    def _check_locked(self) -> None:
        hub = self.hub
        if hub.closed or self.closed or self.restarts != hub._restarts:
            raise SubscriberDroppedError("hub closed" if hub.closed or self.closed
                                         else "the feed follower restarted")

    def _from_buffer_locked(self, deadline: float) -> tuple[int, int] | None:
        """``(buffer index, count)`` of the next buffered events (count 0 on timeout);
        None when the reader fell behind the buffer (caller holds ``_cond``)."""
        hub = self.hub
        while True:
            self._check_locked()
            if self.seq is None:
                return None
            lag = hub._seq - self.seq
            if lag > 0:
                first = hub._seq - len(hub._keys) + 1
                if self.seq < first - 1:  # behind the buffer: read on from the file
                    self.seq = None
                    return None
                drop_stalled_reader(lag, hub.client_queue, self.position < self.replay_until,
                                    self.last_read, hub.slow_after)
                count = min(lag, hub.client_queue)
                start = self.seq + 1 - first
                self.seq += count
                self.position = hub._keys[start + count - 1]
                self.last_read = time.monotonic()
                return start, count
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.last_read = time.monotonic()
                return 0, 0
            hub._cond.wait(remaining)

    def _from_file(self) -> tuple[list[Event], bool]:
        """The next events from the feed file and whether the reader moved; once it has
        reached the buffer, ``seq`` is set and it reads from there."""
        hub = self.hub
        with hub._cond:
            self._check_locked()
            if self.position >= hub._floor:
                self.seq = hub._seq_after(self.position)
                return [], True
            head = hub._head
        if self._cursor is None or self._cursor.position != self.position:
            if self._cursor is not None:
                self._cursor.close()
            self._cursor = FeedCursor(hub.feed_dir, self.position, hub.generation_bytes)
        limit = hub.client_queue
        try:
            records = self._cursor.read(max_events=limit, until=head)
        except (FeedGap, OSError) as exc:
            raise SubscriberDroppedError(f"reader fell behind the kept feed: {exc}") from None
        if self._cursor.position < head:  # more than it read waits: behind by at least one more
            drop_stalled_reader(len(records) + 1, limit, self.position < self.replay_until,
                                self.last_read, hub.slow_after)
        progressed = self._cursor.position != self.position
        self.position = self._cursor.position
        self.last_read = time.monotonic()
        return [event for _, event in feed_events(records)], progressed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._cursor is not None:
                self._cursor.close()
            self.hub._forget(self)
