"""The process's stream writer: one thread writes every ``/api/events`` stream of the
process straight to the client sockets.

Through the WSGI server, each stream is a generator on a thread of its own that wakes
to write (about 0.15 ms of CPU per write under gunicorn ``gthread``, and a GIL hand-over
each time); with a hundred streams that is what the requests of the server lose. Here a
stream's generator writes its first frame through the server (status line, headers and
the body's framing are the server's) and then hands the socket to this writer
(:func:`take_over`) and sleeps until the writer is done with it. The writer thread:

- waits in one ``poll`` on every stream socket: a client that closes (``POLLRDHUP``,
  ``POLLHUP``) is seen at once, not at the next write;
- at each stream's turn (the pacing of :mod:`._stream_pacing`: streams of the host wake
  together) reads what its subscription queued and sends it with one non-blocking
  ``sendmsg`` in the server's framing (an HTTP/1.1 chunk; raw bytes after an HTTP/1.0
  response), about 0.03 ms; a stream with nothing new is looked at again
  :data:`IDLE_LOOK` s later and gets a heartbeat comment after ``heartbeat`` s;
- keeps what a full socket did not take and sends it when the socket can take more; a
  write that is not done ``send_timeout`` s after it began ends the stream (its
  connection is shut down: it stopped in the middle of a chunk);
- ends a stream whose subscription is dropped or closed, or whose ``stopping()``
  (looked at every :data:`STOP_LOOK` s) says the server is shutting down;
  its generator then returns and the server ends the response as usual (the last chunk).

It is used only when the socket is a plain (not TLS) socket, the server's response
object is found on the stack (gunicorn's ``Response``, werkzeug's request handler) for a
``GET`` on that very socket, and nothing but werkzeug's pass-through iterators stands
between the server and the generator (a middleware that rewrites the body, e.g. gzip,
keeps the generator path): :func:`server_framing` is None otherwise, and the stream
stays a generator (:func:`._streams.event_stream`).
"""

from __future__ import annotations

import logging
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ._event_hub import EventHub
from ._feed_hub import FeedHub
from ._hub import Hub, SubscriberDroppedError, Subscription
from ._stream_pacing import (
    BATCH_BYTES,
    STOP_CHECK_INTERVAL,
    next_write_at,
    paced_streams,
    read_batch,
    stream_pause,
)

__all__ = ["IDLE_LOOK", "StreamHandle", "server_framing", "take_over", "writer_running"]

logger = logging.getLogger("otel_runs.live")

#: How often (s) the writer looks again at a stream that had nothing to send.
IDLE_LOOK = 0.05
#: A stream whose in-process hub has no new event since it last read nothing is not
#: read again (a look costs a string compare, not a read)... for at most this long (s).
SKIP_AT_MOST = 1.0
#: How often (s) the writer asks whether the server of a stream is stopping (cheap:
#: an attribute and ``getppid``; a stream ends within about this long of the stop).
STOP_LOOK = 0.25
#: How often (s) a stream's server thread, waiting for the writer, checks it still runs.
WAITER_CHECK = 5.0
#: The writer thread stops after this long (s) without a stream (the next one starts it).
WRITER_IDLE = 1.0
_HEARTBEAT = b": heartbeat\n\n"
_RDHUP = getattr(select, "POLLRDHUP", 0)
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL | _RDHUP
#: Frames between the server's loop and the stream generator that pass bytes through
#: unchanged: (module, function).
_PASS_THROUGH = {("werkzeug.wsgi", "__next__"), ("werkzeug.wrappers.response", "_iter_encoded")}


def server_framing(sock: socket.socket | None, start: Any) -> bool | None:
    """Whether the server that wrote this response's first bytes frames its body in
    HTTP/1.1 chunks (True) or sends it as is (False), read from the server's own
    state on the stack above ``start`` (the frame that called the stream generator);
    None when the stream must stay on the generator path (see the module docstring)."""
    if sock is None or type(sock) is not socket.socket or not hasattr(select, "poll"):
        return None
    frame = start
    for _ in range(12):  # bounded: the server's loop is a few frames up
        if frame is None:
            return None
        module = frame.f_globals.get("__name__", "")
        if module.startswith("gunicorn."):
            resp = frame.f_locals.get("resp")
            if (type(resp).__module__ != "gunicorn.http.wsgi" or resp.sock is not sock
                    or not resp.headers_sent or getattr(resp, "_omits_body", False)
                    or resp.response_length is not None
                    or getattr(resp.req, "method", None) != "GET"):
                return None
            return bool(resp.chunked)
        if module == "werkzeug.serving":
            local = frame.f_locals
            handler = local.get("self")
            if ("chunk_response" not in local or getattr(handler, "connection", None) is not sock
                    or getattr(handler, "command", None) != "GET"):
                return None
            return bool(local["chunk_response"])
        if (module, frame.f_code.co_name) not in _PASS_THROUGH:
            return None
        frame = frame.f_back
    return None


class StreamHandle:
    """One stream on the writer; its generator waits on :meth:`wait`."""

    def __init__(self, sock: socket.socket, sub: Subscription, hub: Hub, heartbeat: float,
                 linger: float, wakeups: float, stopping: Callable[[], bool] | None,
                 chunked: bool, send_timeout: float | None) -> None:
        now = time.monotonic()
        self.sock = sock
        self.fd = sock.fileno()
        self.sub = sub
        self.hub = hub
        self.heartbeat = heartbeat
        self.linger = linger
        self.wakeups = wakeups
        self.stopping = stopping
        self.chunked = chunked
        self.send_timeout = send_timeout
        self.chunk = max(1, hub.client_queue)
        #: The hub's newest id when a read of this stream last found nothing (in-process
        #: hubs only: their ``last_event_id`` is an attribute, Redis's a round trip).
        self.head = hub if isinstance(hub, (EventHub, FeedHub)) else None
        self.seen: str | None = None
        self.seen_at = 0.0
        self.mask = select.POLLIN | _GONE
        self.pending: memoryview | None = None
        self.pending_since = 0.0
        self.next_at = now  # the replay, if any, goes out at once
        self.quiet_since = now
        self.stop_at = now + STOP_LOOK if stopping is not None else math.inf
        #: Set when the writer is done with the stream; ``broken``: its connection is
        #: not at a chunk boundary (or the client is gone) and must be shut down.
        self.done = threading.Event()
        self.broken = False

    def wait(self, writer: StreamWriter) -> None:
        """Block until the writer is done with the stream (or the writer died)."""
        while not self.done.wait(WAITER_CHECK):
            if not writer.running():
                self.broken = True
                return

    def deadline(self) -> float:
        if self.pending is not None and self.send_timeout:
            return min(self.stop_at, self.pending_since + self.send_timeout)
        return min(self.stop_at, self.next_at if self.pending is None else math.inf)


class StreamWriter:
    """The writer thread of a process (started with the first stream, stopped after
    :data:`WRITER_IDLE` s without one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._new: list[StreamHandle] = []
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._streams: dict[int, StreamHandle] = {}
        self._poller = select.poll()
        self._poller.register(self._wake_r, select.POLLIN)

    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def adopt(self, handle: StreamHandle) -> None:
        with self._lock:
            self._new.append(handle)
            if not self.running():
                self._thread = threading.Thread(target=self._run, name="otel-runs-sse-writer",
                                                daemon=True)
                self._thread.start()
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the writer wakes anyway

    # -- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug must not leave the generators waiting
            logger.exception("otel-runs: the live feed's stream writer failed")
            for handle in list(self._streams.values()):
                self._end(handle, broken=True)
            with self._lock:
                for handle in self._new:
                    handle.broken = True
                    handle.done.set()
                self._new.clear()
                if self._thread is threading.current_thread():
                    self._thread = None

    def _loop(self) -> None:
        idle_since: float | None = None
        while True:
            with self._lock:
                new, self._new = self._new, []
                if new or self._streams:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= WRITER_IDLE:
                    self._thread = None
                    return
            for handle in new:
                self._streams[handle.fd] = handle
                self._poller.register(handle.fd, handle.mask)
            now = time.monotonic()
            soonest = min((h.deadline() for h in self._streams.values()),
                          default=now + WRITER_IDLE)
            timeout = max(0.0, min(soonest - now, STOP_CHECK_INTERVAL))
            for fd, events in self._poller.poll(math.ceil(timeout * 1000)):
                if fd == self._wake_r:
                    self._drain_wake()
                elif (handle := self._streams.get(fd)) is not None:
                    self._on_socket(handle, events)
            self._pass(time.monotonic())

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _on_socket(self, handle: StreamHandle, events: int) -> None:
        if events & _GONE:
            self._end(handle, broken=True)
            return
        if events & select.POLLIN:
            try:
                gone = handle.sock.recv(1, socket.MSG_PEEK) == b""
            except (BlockingIOError, InterruptedError):
                gone = False
            except OSError:
                gone = True
            if gone:
                self._end(handle, broken=True)
                return
            handle.mask &= ~select.POLLIN  # the client sent bytes: hang-ups still show
            self._poller.modify(handle.fd, handle.mask | (
                select.POLLOUT if handle.pending is not None else 0))
        if events & select.POLLOUT and handle.pending is not None:
            self._flush(handle)

    def _pass(self, now: float) -> None:
        pauses: dict[int, float] = {}
        for handle in list(self._streams.values()):
            try:
                if now >= handle.stop_at:
                    handle.stop_at = now + STOP_LOOK
                    if handle.stopping is not None and handle.stopping():
                        self._end(handle, broken=handle.pending is not None)
                        continue
                if handle.pending is not None:
                    if handle.send_timeout and now - handle.pending_since > handle.send_timeout:
                        self._end(handle, broken=True)  # the client does not read
                elif now >= handle.next_at:
                    self._serve(handle, now, pauses)
            except Exception:
                logger.exception("otel-runs: a live feed stream failed")
                self._end(handle, broken=True)

    def _serve(self, handle: StreamHandle, now: float, pauses: dict[int, float]) -> None:
        head = handle.head.last_event_id if handle.head is not None else None
        if head is not None and head == handle.seen and now - handle.seen_at < SKIP_AT_MOST:
            count, data = 0, b""  # nothing new since the last read found nothing
        else:
            try:
                count, data = read_batch(handle.sub, 0, handle.chunk)
            except SubscriberDroppedError:
                self._end(handle, broken=False)
                return
            if not count:
                handle.seen, handle.seen_at = head, now
        if count:
            handle.quiet_since = now
            if len(data) >= BATCH_BYTES:
                handle.next_at = now  # a backlog in batches: no pause until it is drained
            else:
                pause = pauses.get(id(handle.hub))
                if pause is None:
                    pause = pauses[id(handle.hub)] = stream_pause(
                        paced_streams(handle.hub), handle.linger, handle.wakeups)
                handle.next_at = next_write_at(now, pause, handle.linger)
            self._send(handle, data, now)
        elif now - handle.quiet_since >= handle.heartbeat - 1e-3:
            handle.quiet_since = now
            handle.next_at = now + IDLE_LOOK
            self._send(handle, _HEARTBEAT, now)
        else:
            handle.next_at = min(now + IDLE_LOOK, handle.quiet_since + handle.heartbeat)

    def _send(self, handle: StreamHandle, data: bytes, now: float) -> None:
        parts = (b"%x\r\n" % len(data), data, b"\r\n") if handle.chunked else (data,)
        try:
            sent = handle.sock.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._end(handle, broken=True)
            return
        total = sum(len(part) for part in parts)
        if sent < total:
            handle.pending = memoryview(b"".join(parts))[sent:]
            handle.pending_since = now
            self._poller.modify(handle.fd, handle.mask | select.POLLOUT)

    def _flush(self, handle: StreamHandle) -> None:
        pending = handle.pending
        assert pending is not None
        try:
            sent = handle.sock.send(pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._end(handle, broken=True)
            return
        if sent < len(pending):
            handle.pending = pending[sent:]
            return
        handle.pending = None
        self._poller.modify(handle.fd, handle.mask)

    def _end(self, handle: StreamHandle, broken: bool) -> None:
        if self._streams.pop(handle.fd, None) is not None:
            try:
                self._poller.unregister(handle.fd)
            except (KeyError, ValueError, OSError):
                pass
        handle.broken = broken or handle.pending is not None
        handle.done.set()


_writers: dict[int, StreamWriter] = {}
_writers_lock = threading.Lock()


def _writer() -> StreamWriter:
    """This process's writer (a forked child makes its own)."""
    pid = os.getpid()
    writer = _writers.get(pid)
    if writer is None:
        with _writers_lock:
            writer = _writers.get(pid)
            if writer is None:
                writer = _writers[pid] = StreamWriter()
    return writer


def writer_running() -> bool:
    """Whether this process's stream writer thread runs now."""
    writer = _writers.get(os.getpid())
    return writer is not None and writer.running()


def take_over(sock: socket.socket, sub: Subscription, hub: Hub, heartbeat: float,
              linger: float, wakeups: float, stopping: Callable[[], bool] | None,
              chunked: bool) -> None:
    """Hand the stream on ``sock`` to the process's writer and block until it is done;
    then give the socket back to the server as it was (its timeout; shut down when the
    writer left it in the middle of a chunk or the client is gone)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    handle = StreamHandle(sock, sub, hub, heartbeat, linger, wakeups, stopping, chunked,
                          send_timeout=timeout or None)
    writer = _writer()
    try:
        writer.adopt(handle)
        handle.wait(writer)
    finally:
        try:
            sock.settimeout(timeout)
            if handle.broken or not handle.done.is_set():
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

