"""The hub on the feed file (:mod:`._feed`): one live feed for every process of a host.

``publish`` appends the event to the project's feed file (one ``write()``) and, while
a stream of this process is open, catches the process's buffer up to it at once
(reading what other processes appended before it, so the order is the file's).
One follower thread per hub polls the file (``fstat``, every ``poll_interval``) for
the events of other processes, only while a stream is open; it stops
``idle_timeout`` s after the last one closed, and publishing then only appends.

The buffer is the in-process hub's (:class:`~._event_hub.EventHub`): the newest
``buffer_size`` events, at most ``max_bytes`` (``OTEL_RUNS_SSE_BUFFER_BYTES``), their
SSE frames encoded once for every stream, readers with a cursor dropped by the same
rules. A reader further back (a ``Last-Event-ID`` replay, a lagging one) reads the
feed file itself until it reaches the buffer. Ids are feed positions
(``<generation>-<offset>``): the same in every process, so a browser resumes on any.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import os
import threading
import time
import weakref
from collections import deque
from pathlib import Path

from .._ratelimit import RateLimitedLog
from ._feed import (
    GENERATION_BYTES,
    KEEP_GENERATIONS,
    FeedGap,
    FeedWriter,
    Position,
    end_position,
    is_boundary,
)
from ._feed_census import StreamCensus
from ._feed_cursor import FeedCursor
from ._feed_later import HeldRecords
from ._feed_publish import FeedPublishing
from ._feed_sub import FeedSubscription, feed_events
from ._hub import (
    _EVENT_OVERHEAD,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_CLIENT_QUEUE,
    DEFAULT_SLOW_AFTER,
    Event,
    buffer_bytes,
    parse_event_id,
)

__all__ = ["FeedHub"]

logger = logging.getLogger("otel_runs.hub")
_warn = RateLimitedLog(logger)

#: Seconds between two looks at the feed file by the follower (each look after a sleep
#: costs ~0.1-0.3 ms here whatever it reads: 25 ms cost 1.6x the CPU of 50 ms).
POLL_INTERVAL = 0.04
#: A follower with no stream to serve for this long stops (the next stream starts one).
FOLLOWER_IDLE = 1.0


class FeedHub(FeedPublishing):
    """A hub whose events go through the feed directory ``directory`` (shared by every
    process that uses it); thread-safe. Implements :class:`~._hub.Hub`."""

    def __init__(self, directory: str | os.PathLike[str], *,
                 buffer_size: int = DEFAULT_BUFFER_SIZE,
                 client_queue: int = DEFAULT_CLIENT_QUEUE,
                 slow_after: float = DEFAULT_SLOW_AFTER, max_bytes: int | None = None,
                 generation_bytes: int = GENERATION_BYTES, keep: int = KEEP_GENERATIONS,
                 poll_interval: float = POLL_INTERVAL, idle_timeout: float = FOLLOWER_IDLE,
                 announce: bool = True) -> None:
        if buffer_size < 1 or client_queue < 1:
            raise ValueError("buffer_size and client_queue must be >= 1")
        if client_queue > buffer_size:
            raise ValueError(f"client_queue ({client_queue}) must not exceed buffer_size "
                             f"({buffer_size})")
        self.feed_dir = Path(directory)
        self.buffer_size = buffer_size
        self.client_queue = client_queue
        self.slow_after = slow_after
        self.max_bytes = buffer_bytes() if max_bytes is None else max_bytes
        self.generation_bytes = generation_bytes
        self.keep = keep
        self.poll_interval = poll_interval
        self.idle_timeout = idle_timeout
        self.writer = FeedWriter(self.feed_dir, generation_bytes, keep)
        #: This process's open streams, for the host-wide pacing (None: not counted).
        self.census = StreamCensus(self.feed_dir) if announce else None
        self.closed = False
        self._init_runtime()
        _live_hubs.add(self)

    def _init_runtime(self) -> None:
        #: Held while reading the file into the buffer; buffer, floor and head change
        #: only under it (and under ``_cond``, which readers of the buffer take).
        self._read_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._keys: deque[Position] = deque()
        self._events: deque[Event] = deque()
        self._frames: deque[bytes] = deque()
        self._sizes: deque[int] = deque()
        self.buffered_bytes = 0
        self._seq = 0  # local number of the newest buffered event
        self._floor: Position = (0, 0)  # every event after it, up to head, is buffered
        self._head: Position = (0, 0)  # how far the buffer has read the feed
        self._restarts = 0  # a subscription from before a restart is dropped
        self._reader: FeedCursor | None = None
        self._active = False
        self._follower: threading.Thread | None = None
        self._stop = threading.Event()
        self._subscribers: set[FeedSubscription] = set()
        #: Records waiting to join the next append (``run:started``, ``run:output``; see
        #: ``_feed_later``).
        self._later = HeldRecords(self._flush_held)

    # -- the buffer -------------------------------------------------------------

    @property
    def last_event_id(self) -> str:
        """The position the buffer has read up to, as an id (when a stream is open)."""
        return f"{self._head[0]}-{self._head[1]}"

    @property
    def subscriber_count(self) -> int:
        """How many readers of this process follow the feed now."""
        with self._cond:
            return len(self._subscribers)

    def paced_streams(self) -> int:
        """Streams open on this feed in every process of the host (refreshed every
        second): what the streams' pacing divides the wake-ups among."""
        own = self.subscriber_count
        return own if self.census is None else self.census.total(own)

    @property
    def following(self) -> bool:
        """Whether the follower thread runs (only while streams are open, and shortly after)."""
        return self._follower is not None and self._follower.is_alive()

    def _activate_locked(self) -> None:
        """Start following the feed from its end (caller holds ``_read_lock``)."""
        if self._active:
            return
        position = end_position(self.feed_dir)
        self._reader = FeedCursor(self.feed_dir, position, self.generation_bytes)
        with self._cond:
            self._clear_locked()
            self._floor = self._head = position
            self._active = True
        self._stop.clear()
        self._follower = threading.Thread(target=self._follow, name="otel-runs-feed-follower",
                                          daemon=True)
        self._follower.start()

    def _clear_locked(self) -> None:
        self._keys.clear()
        self._events.clear()
        self._frames.clear()
        self._sizes.clear()
        self.buffered_bytes = 0

    def _deactivate_locked(self) -> None:
        with self._cond:
            self._active = False
            self._clear_locked()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _catch_up_locked(self, until: Position | None = None) -> None:
        """Read what the feed has after ``head`` (up to ``until``, a line end) into the
        buffer (caller holds ``_read_lock``)."""
        reader = self._reader
        if reader is None:
            return
        while True:
            try:
                records = reader.read(max_events=self.buffer_size, until=until)
            except FeedGap as exc:  # stalled past the kept generations: start again
                _warn.warning("feed-gap", "otel-runs: live feed follower restarts: %s", exc)
                self._deactivate_locked()
                with self._cond:
                    self._restarts += 1
                    self._cond.notify_all()
                self._activate_locked()
                return
            with self._cond:
                self._add_locked(feed_events(records))
                self._head = reader.position
                if records:
                    self._cond.notify_all()
            if len(records) < self.buffer_size:
                return

    def _add_locked(self, events: list[tuple[Position, Event]]) -> None:
        for position, event in events:
            frame = event.frame
            size = len(event.data) + len(frame) + _EVENT_OVERHEAD
            self._keys.append(position)
            self._events.append(event)
            self._frames.append(frame)
            self._sizes.append(size)
            self.buffered_bytes += size
            self._seq += 1
        while len(self._keys) > 1 and (len(self._keys) > self.buffer_size
                                       or self.buffered_bytes > self.max_bytes):
            self._floor = self._keys.popleft()
            self._events.popleft()
            self._frames.popleft()
            self.buffered_bytes -= self._sizes.popleft()

    def _seq_after(self, position: Position) -> int:
        """The local number of the last buffered event at or before ``position``
        (``position`` >= floor; caller holds ``_cond``)."""
        return self._seq - len(self._keys) + bisect.bisect_right(self._keys, position)

    def _follow(self) -> None:
        idle_since: float | None = None
        while not self.closed:
            with self._read_lock:
                if not self._active or threading.current_thread() is not self._follower:
                    return
                with self._cond:
                    readers = len(self._subscribers)
                if readers:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= self.idle_timeout:
                    self._deactivate_locked()
                    self._follower = None
                    return
                try:
                    self._catch_up_locked()
                except OSError as exc:
                    _warn.warning("feed-follow", "otel-runs: reading the live feed %s "
                                  "failed: %s", self.feed_dir, exc)
            self._stop.wait(self.poll_interval)

    # -- subscribing ------------------------------------------------------------

    def subscribe(self, last_event_id: str | None = None) -> FeedSubscription:
        """Follow the feed from now, or from after ``last_event_id`` (a ``reset`` first
        when that id is malformed, ahead of the feed, or older than the kept generations)."""
        parsed = parse_event_id(last_event_id) if last_event_id else None
        with self._read_lock:
            self._activate_locked()
            self._catch_up_locked()  # ids from other processes may be newer than our head
            head, floor = self._head, self._floor
            reset = bool(last_event_id) and (parsed is None or parsed > head)
            if parsed is not None and not reset and parsed not in (head, floor) \
                    and not self._buffered(parsed):
                reset = not is_boundary(self.feed_dir, parsed, self.keep)
            with self._cond:
                sub = FeedSubscription(self, head, self._seq, reset)
                if parsed is not None and not reset:
                    sub.position = parsed
                    sub.seq = self._seq_after(parsed) if parsed >= floor else None
                self._subscribers.add(sub)
                count = len(self._subscribers)
        if self.census is not None:
            self.census.set(count)
        return sub

    def _buffered(self, position: Position) -> bool:
        index = bisect.bisect_left(self._keys, position)
        return index < len(self._keys) and self._keys[index] == position

    def _forget(self, sub: FeedSubscription) -> None:
        with self._cond:
            self._subscribers.discard(sub)
            self._cond.notify_all()
            count = len(self._subscribers)
        if self.census is not None:
            self.census.set(count)

    def close(self) -> None:
        """End every subscription and stop the follower (publishing still appends)."""
        self.closed = True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._later.closed = True  # (publish_later writes at once from now on)
        self._flush_held()
        self.writer.close()

    def _after_fork_in_child(self) -> None:
        self.writer.after_fork_in_child()
        if self.census is not None:
            self.census.after_fork_in_child()
        self._init_runtime()


# -- one hub per feed and settings in a process ---------------------------------------

_live_hubs: weakref.WeakSet[FeedHub] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for hub in list(_live_hubs):
        hub._after_fork_in_child()


def _flush_at_exit() -> None:
    for hub in list(_live_hubs):
        hub._flush_held()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
