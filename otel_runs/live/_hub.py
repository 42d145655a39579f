"""The event hub behind ``/api/events``: publish events, replay missed ones, fan out.

``hub.publish("run:started", data)`` appends an event to a ring buffer (bounded by
count and by bytes: ``OTEL_RUNS_SSE_BUFFER_BYTES``, 8 MiB by default) and wakes the
stream readers; it never waits for a client. Each reader follows the buffer
with its own cursor, so a slow or stalled client costs no memory of its own: when
it is more than ``client_queue`` events behind and has not come back for
``slow_after`` seconds (its thread was stuck writing to a stalled socket), or its
cursor left the buffer, it is dropped; its browser reconnects with
``Last-Event-ID`` and replays what it missed from the buffer.

Event ids look like ``<epoch>-<seq>`` (the Redis Streams form) and compare as
integer pairs. In-process, ``epoch`` is the hub's start time in milliseconds, so
ids keep increasing across a server restart and an id from an earlier process is
recognised (the reader gets a ``reset`` event telling it to reload).
:func:`hub_from_settings` returns the Redis hub (:mod:`otel_runs.live._redis`) with
``OTEL_RUNS_REDIS_URL``, else the feed file hub (:mod:`otel_runs.live._feed_hub`) of a
project in a git repository: one feed for every process of the host.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from functools import cached_property
from itertools import islice
from typing import Any, Protocol

from .. import _settings

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_CLIENT_QUEUE",
    "DEFAULT_SLOW_AFTER",
    "RESET_EVENT",
    "Event",
    "EventHub",
    "Hub",
    "Subscription",
    "SubscriberDroppedError",
    "buffer_bytes",
    "get_hub",
    "hub_from_settings",
    "parse_event_id",
    "redis_url",
]

#: Events kept for ``Last-Event-ID`` replay.
DEFAULT_BUFFER_SIZE = 1000
#: Bytes of events kept for replay (their JSON text and SSE frame); the oldest events
#: are dropped first beyond it (the newest is always kept). ``OTEL_RUNS_SSE_BUFFER_BYTES``.
DEFAULT_BUFFER_BYTES = 8 * 1024 * 1024
#: What one buffered event costs besides its text and frame (the objects holding them).
_EVENT_OVERHEAD = 256
#: How far (in events) a reader may fall behind before it is dropped.
DEFAULT_CLIENT_QUEUE = 256
#: A reader more than ``client_queue`` events behind is dropped once it has not
#: come back for this many seconds (it is stuck writing to a stalled client);
#: a reader that is merely busy gets the backlog in chunks.
DEFAULT_SLOW_AFTER = 2.0
#: The event type telling a client its ``Last-Event-ID`` is too old: reload.
RESET_EVENT = "reset"

_EVENT_ID_RE = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_EVENT_TYPE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def redis_url() -> str | None:
    """``OTEL_RUNS_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379/0``), or None."""
    return _settings.env_str(_settings.OTEL_RUNS_REDIS_URL)


def parse_event_id(value: str | None) -> tuple[int, int] | None:
    """``"1700000000000-7"`` -> ``(1700000000000, 7)``; None for a malformed id."""
    if value is None:
        return None
    match = _EVENT_ID_RE.match(value.strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


#: Event types already found valid (a set lookup per event on the request path, not a match).
_valid_types: set[str] = set()


def validate_event_type(event_type: str) -> str:
    """Return ``event_type`` if it is safe on an ``event:`` line, else raise ``ValueError``."""
    if type(event_type) is str and event_type in _valid_types:
        return event_type
    if not isinstance(event_type, str) or not _EVENT_TYPE_RE.fullmatch(event_type):
        raise ValueError(
            f"event type {event_type!r} must be 1-64 letters, digits or '_.:-' (e.g. 'run:started')")
    if type(event_type) is str and len(_valid_types) < 256:
        _valid_types.add(event_type)
    return event_type


@dataclass(frozen=True)
class Event:
    """One published event; ``data`` is the JSON text sent on the ``data:`` line."""

    id: str
    type: str
    data: str

    def to_sse(self) -> str:
        """The event in ``text/event-stream`` framing."""
        return f"event: {self.type}\nid: {self.id}\ndata: {self.data}\n\n"

    @cached_property
    def frame(self) -> bytes:
        """:meth:`to_sse` as UTF-8, encoded once for every stream."""
        return self.to_sse().encode()

    def json(self) -> Any:
        """``data`` decoded."""
        return json.loads(self.data)


class SubscriberDroppedError(Exception):
    """The reader fell too far behind; it should reconnect with ``Last-Event-ID``."""


class Subscription(Protocol):
    """One stream reader's view of a hub."""

    def next_batch(self, timeout: float) -> list[Event]:
        """Events after the cursor, waiting up to ``timeout`` s ([] on timeout).

        Raises :class:`SubscriberDroppedError` when the reader is too far behind, or
        when the hub is closed."""

    def next_frames(self, timeout: float) -> tuple[int, bytes]:
        """:meth:`next_batch` as ``(event count, their SSE frames joined)``: what a
        stream writes."""

    def close(self) -> None:
        """Stop following the hub (idempotent)."""


class Hub(Protocol):
    """What ``/api/events`` and the SSE processor need from a hub."""

    #: The most events a reader gets in one batch (a backlog comes in chunks this big).
    client_queue: int

    @property
    def subscriber_count(self) -> int:
        """How many readers follow the hub now (in this process)."""

    def publish(self, event_type: str, data: Any) -> str:
        """Publish an event; return its id."""

    def publish_nowait(self, event_type: str, data: Any) -> None:
        """Publish without ever blocking the caller (may drop, with a warning)."""

    def publish_json(self, event_type: str, text: str) -> None:
        """:meth:`publish_nowait` of data already encoded as JSON (``text``): how the
        SSE processor hands over a run encoded once for the journal and the feed."""

    def subscribe(self, last_event_id: str | None = None) -> Subscription:
        """Follow the hub; replay events after ``last_event_id`` (or a ``reset``)."""

    def close(self) -> None:
        """End every subscription and release resources."""


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)


def buffer_bytes() -> int:
    """``OTEL_RUNS_SSE_BUFFER_BYTES``, else :data:`DEFAULT_BUFFER_BYTES`."""
    return _settings.env_int(_settings.OTEL_RUNS_SSE_BUFFER_BYTES, DEFAULT_BUFFER_BYTES,
                             minimum=65_536)


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
                if (lag > self.client_queue and sub.cursor >= sub.replay_until
                        and time.monotonic() - sub.last_read > self.slow_after):
                    raise SubscriberDroppedError(
                        f"reader fell {lag} events behind and was away "
                        f"{time.monotonic() - sub.last_read:.1f}s")
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
