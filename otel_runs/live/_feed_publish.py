"""Publishing on the feed file: how a :class:`~._feed_hub.FeedHub` appends events.

One ``write()`` per append, with the records held for a later append (``_feed_later``:
``run:started``, ``run:output``, and ``run:completed`` while no stream of this process is
open) going first, in the order they were published; while a stream of this process is
open, its buffer is caught up to the new event before ``publish`` returns.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._ratelimit import RateLimitedLog
from ._feed import FeedWriter, Position, encode_record
from ._feed_later import HeldRecords
from ._hub import _dumps, validate_event_type

__all__ = ["FeedPublishing"]

_warn = RateLimitedLog(logging.getLogger("otel_runs.hub"))


class FeedPublishing:
    """The publishing half of ``FeedHub`` (a mixin: the hub sets the attributes below
    and provides ``_catch_up_locked``)."""

    feed_dir: Path
    generation_bytes: int
    writer: FeedWriter
    _later: HeldRecords
    _active: bool
    _read_lock: threading.Lock
    _head: Position

    def _catch_up_locked(self, until: Position | None = None) -> None:
        raise NotImplementedError

    def publish(self, event_type: str, data: Any) -> str:
        """Append an event to the feed (``data`` JSON-encoded); return its id.
        Raises ``OSError`` when the feed cannot be written."""
        validate_event_type(event_type)
        return self._append(event_type, _dumps(data).encode())

    def publish_json(self, event_type: str, text: str | bytes) -> None:
        """:meth:`publish_nowait` of data already encoded as JSON (not encoded again)."""
        validate_event_type(event_type)
        try:
            self._append(event_type, text if isinstance(text, bytes) else text.encode(),
                         need_id=False)
        except (OSError, ValueError) as exc:
            _warn.warning("feed-publish", "otel-runs: %s event not written to the live feed "
                          "%s: %s", event_type, self.feed_dir, exc)

    def publish_later(self, event_type: str,
                      text: str | bytes | Callable[[], str | bytes], size: int = 0) -> None:
        """:meth:`publish_json`, written with the next event this hub publishes (one
        ``write()`` for both, in order) or within ``LATER_SECONDS`` (``_feed_later``).
        ``text`` may be a function making it, called when the event is written (``size``:
        about how long its text is)."""
        validate_event_type(event_type)
        try:
            if callable(text):
                make = text

                def record() -> bytes:
                    made = make()
                    return self._record(event_type, made if isinstance(made, bytes)
                                        else made.encode())

                with self._later.lock:
                    if self._later.hold(record, size + 32):
                        return
                self._write(record(), need_id=False)
                return
            held = self._record(event_type, text if isinstance(text, bytes) else text.encode())
            with self._later.lock:
                if self._later.hold(held):
                    return
            self._write(held, need_id=False)
        except (OSError, ValueError) as exc:
            _warn.warning("feed-publish", "otel-runs: %s event not written to the live feed "
                          "%s: %s", event_type, self.feed_dir, exc)

    def publish_soon(self, event_type: str, text: str | bytes) -> None:
        """:meth:`publish_json` while a stream of this process is open (it gets the event
        at once), else :meth:`publish_later`: no stream here waits for it, and the other
        processes' followers find it in the file within ``LATER_SECONDS`` more."""
        if self._active:
            self.publish_json(event_type, text)
        else:
            self.publish_later(event_type, text)

    def flush_held(self) -> None:
        """Write the events held for a later append now (failures are logged)."""
        self._flush_held()

    def publish_nowait(self, event_type: str, data: Any) -> None:
        """:meth:`publish` that never raises for the feed (a failure is logged)."""
        validate_event_type(event_type)
        self.publish_json(event_type, _dumps(data).encode())

    def _record(self, event_type: str, data: bytes) -> bytes:
        record = encode_record(event_type, data)
        if len(record) > self.generation_bytes:
            raise ValueError(f"event of {len(record)} bytes is larger than a feed "
                             f"generation ({self.generation_bytes})")
        return record

    def _append(self, event_type: str, data: bytes, need_id: bool = True) -> str:
        """Append one event; its id ("" when not ``need_id`` and no stream of this
        process is open: then its position is not asked for)."""
        return self._write(self._record(event_type, data), need_id)

    def _flush_held(self) -> None:
        """Write the held records now (the flusher's and ``close``'s; failures logged)."""
        try:
            self._write(b"", need_id=False)
        except OSError as exc:
            _warn.warning("feed-publish", "otel-runs: held events (run:started, run:output) "
                          "not written to the live feed %s: %s", self.feed_dir, exc)

    def _write(self, record: bytes, need_id: bool) -> str:
        """Append the held records and ``record`` with one ``write()`` (see :meth:`_append`)."""
        later = self._later
        with later.lock:  # (held records go first: the order events were published in)
            if later:
                record = later.take_locked() + record
            if not record:
                return ""
            if not need_id and not self._active:
                # No stream here to catch up (one opening meanwhile reads it from the file).
                self.writer.append(record, position=False)
                return ""
            position = self.writer.append(record)
        if self._active:  # a stream is open: it gets this event now, in the file's order
            with self._read_lock:
                if self._active and self._head < position:
                    try:
                        self._catch_up_locked(position)  # others' appends after it: later
                    except OSError as exc:  # the follower reads it again
                        _warn.warning("feed-follow", "otel-runs: reading the live feed %s "
                                      "failed: %s", self.feed_dir, exc)
        return f"{position[0]}-{position[1]}"
