"""The event hub on a Redis Stream: one feed for every worker process and host.

Events are ``XADD``-ed to one stream trimmed to about ``buffer_size`` entries
(``MAXLEN ~``; Redis keeps at least that many). Redis assigns the ids
(``<ms>-<seq>``), so they increase across every process that publishes, and a
``Last-Event-ID`` from any worker is understood by all of them. In each process
one follower thread blocks in ``XREAD`` and keeps the newest events (decoded and
encoded once) for every stream reader of the process; a reader further back (a
``Last-Event-ID`` replay) reads from the stream with ``XRANGE`` until it reaches
what the follower holds. Needs the ``redis`` extra.

``publish`` is synchronous with short socket timeouts; ``publish_nowait`` (what
the SSE processor uses) hands the event to one background thread through a
bounded queue, so a slow or down Redis never slows a tracked request: events
that do not fit are dropped with a rate-limited warning.
"""

from __future__ import annotations

import bisect
import logging
import queue
import threading
import time
from collections import deque
from typing import Any

from .._ratelimit import RateLimitedLog
from ._hub import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_CLIENT_QUEUE,
    DEFAULT_SLOW_AFTER,
    RESET_EVENT,
    Event,
    SubscriberDroppedError,
    _dumps,
    buffer_bytes,
    drop_stalled_reader,
    parse_event_id,
    validate_event_type,
)

__all__ = ["DEFAULT_STREAM_KEY", "RedisHub"]

logger = logging.getLogger("otel_runs.hub")
_warn = RateLimitedLog(logger)

#: The Redis key of the stream (one feed per Redis database by default).
DEFAULT_STREAM_KEY = "otel-runs:events"
_PUBLISH_QUEUE = 10_000
_SOCKET_TIMEOUT = 2.0
#: A follower with no reader for this long stops (the next reader starts another):
#: a worker with no page open does not read every event from Redis.
_FOLLOWER_IDLE = 30.0


class RedisHub:
    """A hub whose buffer is a Redis Stream shared by every process using ``url``."""

    def __init__(self, url: str, *, stream: str = DEFAULT_STREAM_KEY,
                 buffer_size: int = DEFAULT_BUFFER_SIZE,
                 client_queue: int = DEFAULT_CLIENT_QUEUE,
                 slow_after: float = DEFAULT_SLOW_AFTER) -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "OTEL_RUNS_REDIS_URL is set but the 'redis' package is missing: "
                "pip install 'otel-runs[redis]'") from exc
        if client_queue > buffer_size:
            raise ValueError(f"client_queue ({client_queue}) must not exceed buffer_size ({buffer_size})")
        self.url = url
        self.stream = stream
        self.buffer_size = buffer_size
        self.client_queue = client_queue
        self.slow_after = slow_after
        self._redis = redis.Redis.from_url(
            url, socket_timeout=_SOCKET_TIMEOUT, socket_connect_timeout=_SOCKET_TIMEOUT)
        self._outbox: queue.Queue[tuple[str, str] | None] = queue.Queue(_PUBLISH_QUEUE)
        self._sender: threading.Thread | None = None
        self._sender_lock = threading.Lock()
        self._closed = threading.Event()
        self._subscribers: set[_RedisSubscription] = set()
        self._lock = threading.Lock()
        self._follower: _Follower | None = None

    # -- publishing -------------------------------------------------------------

    def publish(self, event_type: str, data: Any) -> str:
        """``XADD`` the event (trimmed stream); return the id Redis gave it."""
        validate_event_type(event_type)
        return self._xadd(event_type, _dumps(data))

    def _xadd(self, event_type: str, text: str) -> str:
        event_id = self._redis.xadd(
            self.stream, {"type": event_type, "data": text},
            maxlen=self.buffer_size, approximate=True)
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    def publish_nowait(self, event_type: str, data: Any) -> None:
        """Queue the event for the background sender; drop it (warning) if the queue is full."""
        self.publish_json(event_type, _dumps(data))

    def publish_json(self, event_type: str, text: str) -> None:
        """:meth:`publish_nowait` of data already encoded as JSON."""
        validate_event_type(event_type)
        self._ensure_sender()
        try:
            self._outbox.put_nowait((event_type, text))
        except queue.Full:
            _warn.warning("redis-hub-full", "otel-runs: Redis event queue full (%d); dropping %s "
                          "events until %s answers", _PUBLISH_QUEUE, event_type, self.url)

    def _ensure_sender(self) -> None:
        if self._sender is not None and self._sender.is_alive():
            return
        with self._sender_lock:
            if self._sender is None or not self._sender.is_alive():
                self._sender = threading.Thread(
                    target=self._send_loop, name="otel-runs-redis-hub", daemon=True)
                self._sender.start()

    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            try:
                if item is None:
                    return
                self._xadd(*item)
            except Exception as exc:
                _warn.warning("redis-hub-publish", "otel-runs: publishing to Redis %s failed: %s",
                              self.url, exc)
            finally:
                self._outbox.task_done()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait (bounded) until queued ``publish_nowait`` events are sent."""
        deadline = time.monotonic() + timeout
        while self._outbox.unfinished_tasks and time.monotonic() < deadline:
            if self._sender is None or not self._sender.is_alive():
                break
            time.sleep(0.005)
        return not self._outbox.unfinished_tasks

    # -- reading ----------------------------------------------------------------

    @property
    def last_event_id(self) -> str:
        """The id of the newest event in the stream (``0-0`` when empty)."""
        info = self._info()
        return info["last"] if info else "0-0"

    def _info(self) -> dict[str, Any] | None:
        """Last id, first retained id, and whether anything was trimmed or deleted."""
        import redis

        try:
            raw = self._redis.xinfo_stream(self.stream)
        except redis.ResponseError:  # no such key yet
            return None

        def text(key: str) -> str:
            value = raw.get(key)
            return value.decode() if isinstance(value, bytes) else str(value or "0-0")

        first = raw.get("first-entry")
        first_id = first[0].decode() if first else text("last-generated-id")
        added = int(raw.get("entries-added") or 0)
        return {"last": text("last-generated-id"), "first": first_id,
                "lost": added > int(raw.get("length") or 0)}

    def _too_old(self, event_id: tuple[int, int], info: dict[str, Any] | None) -> bool:
        """Whether events after ``event_id`` may have been trimmed away already."""
        if not info or not info["lost"]:
            return False
        return event_id < (parse_event_id(info["first"]) or (0, 0))

    def subscribe(self, last_event_id: str | None = None) -> _RedisSubscription:
        """Follow the stream from now, or from after ``last_event_id`` (``reset`` if
        that id is malformed, newer than the stream, or already trimmed away)."""
        info = self._info()
        now = info["last"] if info else "0-0"
        cursor, reset = now, False
        if last_event_id:
            parsed = parse_event_id(last_event_id)
            last = parse_event_id(now) or (0, 0)
            if parsed is None or parsed > last or self._too_old(parsed, info):
                reset = True
            else:
                cursor = f"{parsed[0]}-{parsed[1]}"
        sub = _RedisSubscription(self, cursor, reset, replay_until=parse_event_id(now) or (0, 0))
        with self._lock:
            if self._follower is None or not self._follower.alive:
                self._follower = _Follower(self, parse_event_id(now) or (0, 0))
            self._subscribers.add(sub)
        return sub

    def _forget(self, sub: _RedisSubscription) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    @property
    def subscriber_count(self) -> int:
        """How many readers of this process follow the stream now."""
        with self._lock:
            return len(self._subscribers)

    def close(self) -> None:
        """End this process's subscriptions and stop the sender."""
        self._closed.set()
        if self._sender is not None:
            try:
                self._outbox.put_nowait(None)
            except queue.Full:
                pass
        for sub in list(self._subscribers):
            sub.close()
        follower = self._follower
        if follower is not None:
            with follower.cond:  # readers waiting for events: they are dropped now
                follower.cond.notify_all()


class _Follower:
    """The process's one ``XREAD BLOCK`` loop: every event after ``floor`` is in
    ``events`` (the newest ``buffer_size``), decoded once for all readers. It stops
    after ``_FOLLOWER_IDLE`` seconds without readers."""

    def __init__(self, hub: RedisHub, start: tuple[int, int]) -> None:
        self.hub = hub
        self.floor = start  # every event after this id is held here
        self.ids: deque[tuple[int, int]] = deque()
        self.events: deque[Event] = deque()
        self.sizes: deque[int] = deque()
        #: Bytes of event data held (bounded by ``buffer_bytes()`` as the in-process hub).
        self.held_bytes = 0
        self.max_bytes = buffer_bytes()
        self.cond = threading.Condition()
        self.alive = True
        self._thread = threading.Thread(target=self._run, name="otel-runs-redis-follower",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import redis

        conn = redis.Redis.from_url(self.hub.url, socket_connect_timeout=_SOCKET_TIMEOUT,
                                    socket_timeout=_SOCKET_TIMEOUT + 1.0)
        cursor = f"{self.floor[0]}-{self.floor[1]}"
        idle_since: float | None = None
        try:
            while not self.hub._closed.is_set():
                with self.hub._lock:  # as subscribe(), which starts a follower if this one stops
                    if self.hub._subscribers:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since >= _FOLLOWER_IDLE:
                        self.alive = False
                        return
                try:
                    reply = conn.xread({self.hub.stream: cursor}, count=1000, block=1000)
                except Exception as exc:  # Redis away: retry; readers wait (bounded) meanwhile
                    _warn.warning("redis-hub-follow", "otel-runs: reading the event stream from "
                                  "Redis %s failed: %s", self.hub.url, exc)
                    self.hub._closed.wait(0.5)
                    continue
                entries = reply[0][1] if reply else []
                if not entries:
                    continue
                batch = [(_event_key(raw_id), _event(raw_id, fields)) for raw_id, fields in entries]
                cursor = batch[-1][1].id
                capacity = max(self.hub.buffer_size, 1)
                with self.cond:
                    for key, event in batch:
                        self.ids.append(key)
                        self.events.append(event)
                        size = len(event.data) + len(event.type) + 32
                        self.sizes.append(size)
                        self.held_bytes += size
                    while len(self.ids) > capacity or (len(self.ids) > 1
                                                       and self.held_bytes > self.max_bytes):
                        self.floor = self.ids.popleft()  # readers further back use XRANGE
                        self.events.popleft()
                        self.held_bytes -= self.sizes.popleft()
                    self.cond.notify_all()
        finally:
            with self.cond:
                self.alive = False
                self.cond.notify_all()
            conn.close()


def _event_key(raw_id: Any) -> tuple[int, int]:
    return parse_event_id(raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)) or (0, 0)


def _event(raw_id: Any, fields: dict[bytes, bytes]) -> Event:
    event_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
    return Event(event_id, fields.get(b"type", b"message").decode(),
                 fields.get(b"data", b"null").decode())


class _RedisSubscription:
    """A cursor into the stream: served from the process's follower, or with
    ``XRANGE`` while it is further back than what the follower holds."""

    def __init__(self, hub: RedisHub, cursor: str, reset: bool,
                 replay_until: tuple[int, int]) -> None:
        self.hub = hub
        self.cursor = cursor
        self._key = parse_event_id(cursor) or (0, 0)
        #: Events up to here are a replay: read in chunks, not a reason to drop.
        self.replay_until = replay_until
        self.last_read = time.monotonic()
        self.pending_reset = reset
        self.closed = False

    def next_batch(self, timeout: float) -> list[Event]:
        if self.pending_reset:
            self.pending_reset = False
            return [Event(self.cursor, RESET_EVENT,
                          _dumps({"reason": "last event id unknown or too old; reload"}))]
        if self.closed or self.hub._closed.is_set():
            raise SubscriberDroppedError("hub closed")
        follower = self.hub._follower
        if follower is not None and follower.alive and self._key >= follower.floor:
            return self._from_follower(follower, timeout)
        return self._from_stream()

    def _from_follower(self, follower: _Follower, timeout: float) -> list[Event]:
        limit = self.hub.client_queue
        deadline = time.monotonic() + timeout
        with follower.cond:
            while True:
                if self.closed or self.hub._closed.is_set():
                    raise SubscriberDroppedError("hub closed")
                if self._key < follower.floor:  # evicted meanwhile: read from the stream
                    break
                start = bisect.bisect_right(follower.ids, self._key)
                lag = len(follower.ids) - start
                if lag:
                    drop_stalled_reader(lag, limit, self._key < self.replay_until,
                                        self.last_read, self.hub.slow_after)
                    events = [follower.events[i] for i in range(start, start + min(lag, limit))]
                    self._advance(events)
                    return events
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not follower.alive:
                    self.last_read = time.monotonic()
                    return []
                follower.cond.wait(remaining)
        return self._from_stream()

    def _from_stream(self) -> list[Event]:
        """Read on from the stream itself: the reader is further back than the
        follower holds (a ``Last-Event-ID`` replay, or it lagged that far)."""
        limit = self.hub.client_queue
        replaying = self._key < self.replay_until
        if replaying and self.hub._too_old(self._key, self.hub._info()):
            raise SubscriberDroppedError("reader fell behind the trimmed stream")
        reply = self.hub._redis.xread({self.hub.stream: self.cursor},
                                      count=limit if replaying else limit + 1)
        entries = reply[0][1] if reply else []
        if not entries:  # the follower holds newer events, the stream none after ours
            raise SubscriberDroppedError("reader fell behind the trimmed stream")
        if len(entries) > limit:  # (asked for one more only when not replaying)
            drop_stalled_reader(len(entries), limit, False, self.last_read, self.hub.slow_after)
            if self.hub._too_old(self._key, self.hub._info()):
                raise SubscriberDroppedError("reader fell behind the trimmed stream")
            entries = entries[:limit]  # a busy reader: hand out the backlog in chunks
        events = [_event(raw_id, fields) for raw_id, fields in entries]
        self._advance(events)
        return events

    def _advance(self, events: list[Event]) -> None:
        self.last_read = time.monotonic()
        if events:
            self.cursor = events[-1].id
            self._key = parse_event_id(self.cursor) or (0, 0)

    def next_frames(self, timeout: float) -> tuple[int, bytes]:
        batch = self.next_batch(timeout)
        return len(batch), b"".join(ev.frame for ev in batch)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub._forget(self)
