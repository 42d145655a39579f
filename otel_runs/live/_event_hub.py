"""The in-process event hub (:class:`EventHub`), and which hub a project gets.

``hub.publish("run:started", data)`` appends an event to a ring buffer (bounded by
count and by bytes: ``OTEL_RUNS_SSE_BUFFER_BYTES``, 8 MiB by default) and wakes the
stream readers; it never waits for a client. Each reader follows the buffer
with its own cursor, so a slow or stalled client costs no memory of its own: when
it is more than ``client_queue`` events behind and has not come back for
``slow_after`` seconds (its thread was stuck writing to a stalled socket), or its
cursor left the buffer, it is dropped; its browser reconnects with
``Last-Event-ID`` and replays what it missed from the buffer.

Ids are ``<epoch>-<seq>`` (:mod:`._hub`); ``epoch`` is the hub's start time in
milliseconds, so ids keep increasing across a server restart and an id from an
earlier process is recognised (the reader gets a ``reset`` event telling it to reload).
:func:`hub_from_settings` returns the Redis hub (:mod:`otel_runs.live._redis`) with
``OTEL_RUNS_REDIS_URL``, else the feed file hub (:mod:`otel_runs.live._feed_hub`) of a
project in a git repository: one feed for every process of the host; else an
:class:`EventHub`. :func:`get_hub` is the hub of a Flask app.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from itertools import islice
from typing import Any

from ._hub import (
    _EVENT_OVERHEAD,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_CLIENT_QUEUE,
    DEFAULT_SLOW_AFTER,
    RESET_EVENT,
    Event,
    Hub,
    SubscriberDroppedError,
    _dumps,
    buffer_bytes,
    drop_stalled_reader,
    parse_event_id,
    redis_url,
    validate_event_type,
)

__all__ = ["EventHub", "get_hub", "hub_from_settings"]


class EventHub:
    """The in-process hub: a ring buffer of the last ``buffer_size`` events, at most
    ``max_bytes`` of them (default :func:`buffer_bytes`).

    Thread-safe. ``publish`` is O(1) (amortised) and does no I/O.
    """

    def __init__(self, buffer_size: int = DEFAULT_BUFFER_SIZE,
                 client_queue: int = DEFAULT_CLIENT_QUEUE,
                 slow_after: float = DEFAULT_SLOW_AFTER, max_bytes: int | None = None) -> None:
        if buffer_size < 1 or client_queue < 1:
            raise ValueError("buffer_size and client_queue must be >= 1")
        if client_queue > buffer_size:
            raise ValueError(
                f"client_queue ({client_queue}) must not exceed buffer_size ({buffer_size}): "
                "a dropped client must be able to catch up from the buffer")
        self.buffer_size = buffer_size
        self.max_bytes = buffer_bytes() if max_bytes is None else max_bytes
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.client_queue = client_queue
        self.slow_after = slow_after
        self.epoch = time.time_ns() // 1_000_000
        self._seq = 0
        self._buffer: deque[tuple[int, Event]] = deque()
        #: The same events' SSE frames, index for index: a stream's batch is one
        #: C-level join over a slice, whatever its length.
        self._frames: deque[bytes] = deque()
        #: What each buffered event costs (bytes), index for index, and their sum.
        self._sizes: deque[int] = deque()
        self.buffered_bytes = 0
        #: The last span handed to a reader, ``((first seq, count), its frames joined)``.
        self._joined: tuple[tuple[int, int], bytes] = ((0, 0), b"")
        self._cond = threading.Condition(threading.Lock())
        self._subscribers: set[_LocalSubscription] = set()
        self._closed = False

    def _event_id(self, seq: int) -> str:
        return f"{self.epoch}-{seq}"

    @property
    def last_event_id(self) -> str:
        """The id of the newest event (``<epoch>-0`` before the first)."""
        return self._event_id(self._seq)

    @property
    def subscriber_count(self) -> int:
        """How many readers follow the hub now."""
        with self._cond:
            return len(self._subscribers)

    def publish(self, event_type: str, data: Any) -> str:
        """Append an event (``data`` is JSON-encoded) and wake the readers; return its id."""
        validate_event_type(event_type)
        return self._append(event_type, _dumps(data))

    def publish_json(self, event_type: str, text: str) -> None:
        """Append an event whose data is JSON text already (not checked again)."""
        validate_event_type(event_type)
        self._append(event_type, text)

    def _append(self, event_type: str, text: str) -> str:
        with self._cond:
            self._seq += 1
            event = Event(self._event_id(self._seq), event_type, text)
            frame = event.frame
            size = len(text) + len(frame) + _EVENT_OVERHEAD
            self._buffer.append((self._seq, event))
            self._frames.append(frame)
            self._sizes.append(size)
            self.buffered_bytes += size
            while len(self._buffer) > 1 and (len(self._buffer) > self.buffer_size
                                             or self.buffered_bytes > self.max_bytes):
                self._buffer.popleft()
                self._frames.popleft()
                self.buffered_bytes -= self._sizes.popleft()
            self._cond.notify_all()
        return event.id

    def publish_nowait(self, event_type: str, data: Any) -> None:
        """Same as :meth:`publish` (it never blocks on a client)."""
        self.publish(event_type, data)

    def subscribe(self, last_event_id: str | None = None) -> _LocalSubscription:
        """Follow the hub from now, or from after ``last_event_id``.

        When that id is malformed, from another hub incarnation, or older than the
        buffer, the first batch is a single ``reset`` event and reading continues
        from now.
        """
        with self._cond:
            cursor = self._seq
            reset = False
            if last_event_id:
                parsed = parse_event_id(last_event_id)
                oldest = self._buffer[0][0] if self._buffer else self._seq + 1
                if (parsed is None or parsed[0] != self.epoch or parsed[1] > self._seq
                        or parsed[1] < oldest - 1):
                    reset = True
                else:
                    cursor = parsed[1]
            sub = _LocalSubscription(self, cursor, reset)
            self._subscribers.add(sub)
            return sub

    def close(self) -> None:
        """End every subscription (their streams finish; clients reconnect)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- used by subscriptions -------------------------------------------------

    def _read(self, sub: _LocalSubscription, timeout: float) -> list[Event]:
        with self._cond:
            span = self._next_locked(sub, timeout)
            if isinstance(span, Event):
                return [span]
            start, count = span
            return [ev for _, ev in islice(self._buffer, start, start + count)]

    def _read_frames(self, sub: _LocalSubscription, timeout: float) -> tuple[int, bytes]:
        with self._cond:
            span = self._next_locked(sub, timeout)
            if isinstance(span, Event):
                return 1, span.frame
            start, count = span
            if not count:
                return 0, b""
            # Readers at the same place get the same bytes: joined once, not per reader.
            key = (self._buffer[start][0], count)
            if self._joined[0] != key:
                self._joined = (key, b"".join(islice(self._frames, start, start + count)))
            return count, self._joined[1]

    def _next_locked(self, sub: _LocalSubscription, timeout: float) -> tuple[int, int] | Event:
        """Advance ``sub`` over its next events and return their ``(buffer index,
        count)`` (count 0 on timeout), or the ``reset`` event it must get first.
        The caller holds the lock and slices the buffer before releasing it."""
        deadline = time.monotonic() + timeout
        if sub.pending_reset:
            sub.pending_reset = False
            return Event(self._event_id(sub.cursor), RESET_EVENT,
                         _dumps({"reason": "last event id unknown or too old; reload"}))
        while True:
            if self._closed or sub.closed:
                raise SubscriberDroppedError("hub closed")
            lag = self._seq - sub.cursor
            if lag > 0:
                oldest = self._buffer[0][0]
                if sub.cursor < oldest - 1:
                    raise SubscriberDroppedError("reader fell behind the replay buffer")
                drop_stalled_reader(lag, self.client_queue, sub.cursor < sub.replay_until,
                                    sub.last_read, self.slow_after)
                # A replay or a burst is handed out one chunk at a time.
                count = min(lag, self.client_queue)
                start = sub.cursor + 1 - oldest
                sub.cursor += count
                sub.last_read = time.monotonic()
                return start, count
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                sub.last_read = time.monotonic()
                return 0, 0
            self._cond.wait(remaining)

    def _unsubscribe(self, sub: _LocalSubscription) -> None:
        with self._cond:
            sub.closed = True
            self._subscribers.discard(sub)
            self._cond.notify_all()


class _LocalSubscription:
    """A cursor into an :class:`EventHub`'s buffer."""

    def __init__(self, hub: EventHub, cursor: int, reset: bool) -> None:
        self.hub = hub
        self.cursor = cursor
        #: Events up to here are a replay: read in chunks, not a reason to drop.
        self.replay_until = hub._seq
        self.last_read = time.monotonic()
        self.pending_reset = reset
        self.closed = False

    def next_batch(self, timeout: float) -> list[Event]:
        return self.hub._read(self, timeout)

    def next_frames(self, timeout: float) -> tuple[int, bytes]:
        """:meth:`next_batch` as ``(event count, their SSE frames joined)``: what a
        stream writes, joined from the hub's encoded frames without a Python step
        per event."""
        return self.hub._read_frames(self, timeout)

    def close(self) -> None:
        self.hub._unsubscribe(self)


def hub_from_settings(buffer_size: int = DEFAULT_BUFFER_SIZE,
                      client_queue: int = DEFAULT_CLIENT_QUEUE,
                      slow_after: float = DEFAULT_SLOW_AFTER,
                      project_root: str | os.PathLike[str] | None = None) -> Hub:
    """The Redis hub when ``OTEL_RUNS_REDIS_URL`` is set; else, for a ``project_root``
    whose feed directory can be written, the host-wide feed hub (one per feed in a
    process); else a new :class:`EventHub`. Buffers are bounded by bytes too."""
    url = redis_url()
    if url:
        from ._redis import RedisHub

        return RedisHub(url, buffer_size=buffer_size, client_queue=client_queue,
                        slow_after=slow_after)
    if project_root is not None:
        from ._feed_registry import feed_hub_for

        hub = feed_hub_for(project_root, buffer_size=buffer_size, client_queue=client_queue,
                           slow_after=slow_after)
        if hub is not None:
            return hub
    return EventHub(buffer_size=buffer_size, client_queue=client_queue, slow_after=slow_after)


def get_hub(app: Any = None) -> Hub:
    """The hub of a Flask app set up with ``RunTracking`` (default: ``current_app``).

    Host apps publish their own events into the live feed with
    ``get_hub().publish("deploy:log", {...})``.
    """
    if app is None:
        from flask import current_app

        app = current_app._get_current_object()
    state = app.extensions.get("otel_runs")
    if state is None:
        raise RuntimeError("this app has no RunTracking: call otel_runs.flask.RunTracking(app) first")
    hub = state.extra.get("hub")
    if hub is None:
        raise RuntimeError("this app has no event hub: is OTEL_RUNS_API disabled?")
    return hub  # type: ignore[no-any-return]
