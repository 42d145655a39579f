"""How often a stream of ``/api/events`` writes, and how much one write carries: shared by
the stream generator (:mod:`._streams`) and the process's stream writer
(:mod:`._stream_writer`)."""

from __future__ import annotations

import time

from ._hub import Hub, SubscriberDroppedError, Subscription

__all__ = [
    "BATCH_BYTES",
    "MAX_PAUSE",
    "PEER_CHECK_INTERVAL",
    "STOP_CHECK_INTERVAL",
    "STREAM_WAKEUPS_PER_SECOND",
    "next_write_at",
    "paced_streams",
    "read_batch",
    "stream_pause",
]

#: All streams of a hub (of the host, on a feed file) together write at most about this
#: often per second (the default of ``OTEL_RUNS_SSE_WAKEUPS``) while each waits less than
#: :data:`MAX_PAUSE` (``streams / wakeups`` s after a write): 100 streams write every
#: 0.125 s. One write costs about 0.03 ms of CPU on the process's stream writer (0.15 ms
#: through the WSGI server: measured with ``bench/fanout.py``).
STREAM_WAKEUPS_PER_SECOND = 800.0
#: The longest a stream waits after a write (then each stream writes once a second).
MAX_PAUSE = 1.0
#: What one write of a stream carries at most when more is queued (bytes): the rest
#: follows at once, without a pause.
BATCH_BYTES = 256 * 1024
#: How often (s) a stream that keeps writing looks at its socket for a closed client.
PEER_CHECK_INTERVAL = 1.0
#: How often (s) a stream that can tell its server is stopping looks.
STOP_CHECK_INTERVAL = 1.0


def paced_streams(hub: Hub) -> int:
    """The streams sharing the wake-ups: the host's on one feed file, else the process's."""
    paced = getattr(hub, "paced_streams", None)
    return int(paced()) if paced is not None else hub.subscriber_count


def stream_pause(streams: int, linger: float, wakeups: float) -> float:
    """Seconds a stream waits after a write: ``streams / wakeups`` (so all ``streams``
    together wake about ``wakeups`` times a second), at least ``linger``, at most
    :data:`MAX_PAUSE`."""
    return max(linger, min(MAX_PAUSE, streams / wakeups if wakeups > 0 else MAX_PAUSE))


def next_write_at(now: float, pause: float, linger: float) -> float:
    """When a stream that wrote at ``now`` (``time.monotonic()``) looks again: the next
    multiple of ``pause`` at least ``linger`` away, so that the streams of every process
    of the host (one monotonic clock) wake together."""
    if pause <= 0:
        return now
    wait = pause - now % pause
    return now + (wait + pause if wait < linger else wait)


def read_batch(sub: Subscription, timeout: float, chunk: int) -> tuple[int, bytes]:
    """The next events of ``sub`` as ``(count, SSE frames)``, waiting up to ``timeout``
    s; after a full chunk (``client_queue`` events) the chunks already queued are
    added, up to :data:`BATCH_BYTES`: the whole backlog of a pause goes in one write.
    Raises :class:`SubscriberDroppedError` as :meth:`Subscription.next_frames`."""
    count, data = sub.next_frames(timeout)
    if count < chunk:
        return count, data
    parts = [data]
    size = len(data)
    while count % chunk == 0 and size < BATCH_BYTES:
        try:
            more, extra = sub.next_frames(0)
        except SubscriberDroppedError:
            break  # what was read goes out first; the next read ends the stream
        if not more:
            break
        count += more
        size += len(extra)
        parts.append(extra)
        if more < chunk:
            break
    return count, b"".join(parts) if len(parts) > 1 else data


def sleep_until(when: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``when``."""
    wait = when - time.monotonic()
    if wait > 0:
        time.sleep(wait)
