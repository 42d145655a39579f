"""The live view of runs: the event hub behind ``/api/events`` and its backends.

- :mod:`._hub`: the hub protocol, events, event ids;
- :mod:`._event_hub`: the in-process :class:`EventHub`, and which hub a project gets;
- :mod:`._feed`: the feed file, one ordered append-only log per ledger for every process
  of a host (``.git/otel-runs/feed-*``: generations, records, the rotation protocol,
  the writer); :mod:`._feed_cursor`: its reader;
- :mod:`._feed_hub`, :mod:`._feed_sub`: the hub on it (the default for a project in a
  git repository) and its readers;
- :mod:`._redis`: the Redis Streams hub (``OTEL_RUNS_REDIS_URL``), one feed for every host;
- :mod:`._streams`: what keeps ``/api/events`` streams from starving the server;
  :mod:`._stream_pacing`: how often a stream writes; :mod:`._stream_writer`: the one
  thread per process that writes every stream straight to its socket.

Imports go one way: ``_streams`` uses ``_stream_writer``, which uses ``_stream_pacing``,
``_feed_hub``, ``_event_hub`` and ``_hub``; ``_event_hub``, ``_redis`` and ``_feed_hub``
use ``_hub`` (``_event_hub`` imports the other hubs only when it picks one);
``_feed_hub`` uses ``_feed_cursor`` and ``_feed``; ``_feed_cursor`` uses ``_feed``;
nothing here imports the web layer (``_feed_hub`` asks the ledger where a project's git
directory is).
"""

from __future__ import annotations

from ._event_hub import EventHub, get_hub, hub_from_settings
from ._feed_hub import FeedHub
from ._feed_registry import feed_dir_for, feed_hub_for
from ._hub import (
    DEFAULT_BUFFER_BYTES,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_CLIENT_QUEUE,
    DEFAULT_SLOW_AFTER,
    RESET_EVENT,
    Event,
    Hub,
    SubscriberDroppedError,
    Subscription,
    buffer_bytes,
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
    "FeedHub",
    "Hub",
    "SubscriberDroppedError",
    "Subscription",
    "buffer_bytes",
    "feed_dir_for",
    "feed_hub_for",
    "get_hub",
    "hub_from_settings",
    "parse_event_id",
    "redis_url",
]
