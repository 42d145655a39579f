"""The live view of runs: the event hub behind ``/api/events`` and its backends.

- :mod:`._hub`: the hub protocol, event ids, the in-process :class:`EventHub`;
- :mod:`._redis`: the Redis Streams hub (``OTEL_RUNS_REDIS_URL``), one feed for every host;
- :mod:`._streams`: what keeps ``/api/events`` streams from starving the server.

Imports go one way: ``_streams`` and ``_redis`` use ``_hub``; nothing here imports
the web layer.
"""

from __future__ import annotations

from ._hub import (
    DEFAULT_BUFFER_BYTES,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_CLIENT_QUEUE,
    DEFAULT_SLOW_AFTER,
    RESET_EVENT,
    Event,
    EventHub,
    Hub,
    SubscriberDroppedError,
    Subscription,
    buffer_bytes,
    get_hub,
    hub_from_settings,
    parse_event_id,
    redis_url,
)

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_CLIENT_QUEUE",
    "DEFAULT_SLOW_AFTER",
    "RESET_EVENT",
    "Event",
    "EventHub",
    "Hub",
    "SubscriberDroppedError",
    "Subscription",
    "buffer_bytes",
    "get_hub",
    "hub_from_settings",
    "parse_event_id",
    "redis_url",
]
