"""The event hub protocol behind ``/api/events``: what every hub is, its events, their ids.

A hub publishes events, replays missed ones and fans them out to stream readers
(:class:`Hub`, :class:`Subscription`); a reader too far behind gets
:class:`SubscriberDroppedError` and its browser reconnects with ``Last-Event-ID``.
Event ids look like ``<epoch>-<seq>`` (the Redis Streams form) and compare as
integer pairs (:func:`parse_event_id`). The hubs: the in-process one and which hub a
project gets (:mod:`otel_runs.live._event_hub`), the feed file hub
(:mod:`otel_runs.live._feed_hub`), the Redis hub (:mod:`otel_runs.live._redis`).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from .. import _settings

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_CLIENT_QUEUE",
    "DEFAULT_SLOW_AFTER",
    "RESET_EVENT",
    "Event",
    "Hub",
    "Subscription",
    "SubscriberDroppedError",
    "buffer_bytes",
    "drop_stalled_reader",
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


def drop_stalled_reader(lag: int, limit: int, replaying: bool, last_read: float,
                        slow_after: float) -> None:
    """The rule every hub drops a slow reader by: more than ``limit`` events behind, past
    its replay, and away (not reading) longer than ``slow_after`` s since ``last_read``
    (``time.monotonic()``): its thread was stuck on a stalled socket. Raises
    :class:`SubscriberDroppedError`; a reader that is only busy gets its backlog in chunks."""
    if lag > limit and not replaying:
        away = time.monotonic() - last_read
        if away > slow_after:
            raise SubscriberDroppedError(
                f"reader fell more than {limit} events behind and was away {away:.1f}s")


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
