"""What keeps ``/api/events`` streams from starving the server.

- :class:`StreamGate`: at most ``limit`` open streams per process (default from the
  server's thread count, :func:`default_max_streams`); beyond it ``503`` + ``Retry-After``.
- :func:`sync_worker_error`: gunicorn ``sync`` workers serve one request at a time; a
  stream would hang the worker, so it is refused with a message.
- :func:`stream_socket`: the client's socket (werkzeug ``environ["werkzeug.socket"]``,
  gunicorn ``environ["gunicorn.socket"]``) with a timeout, so a write to a client that
  does not read fails after that long instead of blocking the thread (the stream writer
  ends a stream whose write is not done after that long).
- :func:`peer_gone`: on the generator path, a closed client is seen before the next
  write (the first write to a closed TCP socket succeeds; only the second fails), so
  within one heartbeat (the stream writer sees the hang-up in its ``poll`` at once).
- :func:`server_stopping`: under gunicorn, whether the worker is shutting down, so that
  open streams end within about a second instead of holding the worker for its whole
  graceful timeout.
- :func:`event_stream`: the SSE response body. Its first frame goes through the server;
  then, under gunicorn (``gthread``) and werkzeug on a plain socket, the stream is handed
  to the process's single stream writer thread (:mod:`._stream_writer`), which writes
  every stream of the process straight to its socket with non-blocking sends, in the
  server's own framing (HTTP/1.1 chunks), while the stream's server thread sleeps until
  the stream ends; the server then ends the response as usual. Without such a socket
  (TLS, another server, a body-rewriting middleware) the generator writes each frame
  itself, paced the same way (:mod:`._stream_pacing`).
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ._hub import Hub, SubscriberDroppedError, Subscription
from ._stream_pacing import (
    BATCH_BYTES,
    MAX_PAUSE,
    PEER_CHECK_INTERVAL,
    STOP_CHECK_INTERVAL,
    STREAM_WAKEUPS_PER_SECOND,
    next_write_at,
    paced_streams,
    read_batch,
    sleep_until,
    stream_pause,
)
from ._stream_writer import server_framing, take_over

__all__ = [
    "DEFAULT_MAX_STREAMS",
    "BATCH_BYTES",
    "DEFAULT_SEND_TIMEOUT",
    "MAX_PAUSE",
    "PEER_CHECK_INTERVAL",
    "STREAM_WAKEUPS_PER_SECOND",
    "StreamGate",
    "default_max_streams",
    "event_stream",
    "gunicorn_worker",
    "peer_gone",
    "server_stopping",
    "stream_socket",
    "stream_pause",
    "sync_worker_error",
]

#: Streams per process when the server's thread count is not known.
DEFAULT_MAX_STREAMS = 16
#: Streams per process under a server with a thread per connection (werkzeug threaded):
#: nothing to starve, the bound is for memory and CPU.
THREAD_PER_CONNECTION_MAX_STREAMS = 256
#: Seconds a write to the client may block before the stream is ended.
DEFAULT_SEND_TIMEOUT = 2.0
_worker_cache: dict[int, Any] = {}


def gunicorn_worker() -> Any:
    """The gunicorn worker object serving this request (found once per process on the
    calling thread's stack: its ``handle_request`` frame's ``self``), or None."""
    pid = os.getpid()
    if pid in _worker_cache:
        return _worker_cache[pid]
    if "gunicorn.workers.base" not in sys.modules:
        return None
    frame = sys._getframe(1)
    for _ in range(200):  # bounded walk up the stack
        if frame is None:
            break
        candidate = frame.f_locals.get("self")
        module = type(candidate).__module__ if candidate is not None else ""
        if module.startswith("gunicorn.workers.") and hasattr(candidate, "cfg"):
            _worker_cache[pid] = candidate
            return candidate
        frame = frame.f_back
    return None


def _is_gunicorn(environ: dict[str, Any]) -> bool:
    return "gunicorn.socket" in environ or str(environ.get("SERVER_SOFTWARE", "")).startswith(
        "gunicorn")


def sync_worker_error(environ: dict[str, Any]) -> str | None:
    """A message when this is a gunicorn worker that serves one request at a time."""
    if not _is_gunicorn(environ):
        return None
    worker = gunicorn_worker()
    name = type(worker).__name__ if worker is not None else ""
    if name == "SyncWorker" or (worker is None and not environ.get("wsgi.multithread")):
        return ("the live feed needs a server with a thread per stream: this gunicorn worker "
                "is 'sync' (one request at a time), so a stream would hang it; run gunicorn "
                "with '-k gthread --threads N' (or gevent/eventlet)")
    return None


def default_max_streams(environ: dict[str, Any]) -> int:
    """Streams per process: gunicorn gthread: ``threads`` minus a reserve of a quarter of
    them (at least 4) for other requests, at least 1; werkzeug threaded: 256; else 16."""
    if _is_gunicorn(environ):
        worker = gunicorn_worker()
        threads = getattr(getattr(worker, "cfg", None), "threads", None)
        if type(worker).__name__ == "ThreadWorker" and isinstance(threads, int):
            return max(1, threads - max(4, threads // 4))
        return DEFAULT_MAX_STREAMS
    if "werkzeug.socket" in environ and environ.get("wsgi.multithread"):
        return THREAD_PER_CONNECTION_MAX_STREAMS
    return DEFAULT_MAX_STREAMS


class StreamGate:
    """Counts the open streams of a process and refuses those beyond ``limit``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0

    def acquire(self, limit: int) -> Callable[[], None] | None:
        """A one-shot release function if a stream may open now, else None."""
        with self._lock:
            if self.open >= limit:
                return None
            self.open += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if not released.is_set():
                    released.set()
                    self.open -= 1

        return release


def server_stopping(environ: dict[str, Any]) -> Callable[[], bool] | None:
    """Under gunicorn: a check that is true once the worker serving this request stops
    (``worker.alive`` false: SIGTERM, SIGINT, max requests; or its master is gone).
    None elsewhere (werkzeug's threads are daemons: nothing waits for a stream)."""
    if not _is_gunicorn(environ):
        return None
    worker = gunicorn_worker()
    if worker is None or not hasattr(worker, "alive"):
        return None
    ppid = getattr(worker, "ppid", None)

    def stopping() -> bool:
        return not worker.alive or (ppid is not None and os.getppid() != ppid)

    return stopping


def stream_socket(environ: dict[str, Any],
                  send_timeout: float) -> tuple[socket.socket | None, Callable[[], None]]:
    """The client's socket with its writes bounded by ``send_timeout`` s, and a function
    restoring its previous timeout (for the server's keep-alive); ``(None, no-op)`` when
    the server does not expose the socket, or for ``send_timeout`` 0.

    Python's socket timeout bounds a whole ``sendall`` (not each ``send`` as
    ``SO_SNDTIMEO`` does: a write that keeps making a little progress could block for
    many multiples of it), so a write to a client that does not read raises
    ``TimeoutError`` after ``send_timeout`` s and the server ends the stream.
    """
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if not isinstance(sock, socket.socket):
        return None, _noop
    if send_timeout <= 0:
        return sock, _noop
    try:
        previous = sock.gettimeout()
        sock.settimeout(send_timeout)
    except OSError:
        return sock, _noop

    def restore() -> None:
        try:
            sock.settimeout(previous)
        except OSError:
            pass

    return sock, restore


def _noop() -> None:
    pass


def peer_gone(sock: socket.socket | None) -> bool:
    """True when the client closed (or reset) its connection: the socket reads EOF."""
    if sock is None:
        return False
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
            if not poller.poll(0):
                return False
        elif not select.select([sock], [], [], 0)[0]:
            return False
    except (OSError, ValueError):
        return True  # the socket is closed already
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except ValueError:
        return False  # TLS sockets take no flags: leave it to the write
    except OSError:
        return True


def event_stream(hub: Hub, sub: Subscription, heartbeat: float, retry_ms: int, linger: float,
                 wakeups: float = STREAM_WAKEUPS_PER_SECOND,
                 sock: socket.socket | None = None,
                 release: Callable[[], None] | None = None,
                 stopping: Callable[[], bool] | None = None) -> Iterator[bytes]:
    """Yield SSE frames until the client goes, the reader is dropped, the hub closes,
    or ``stopping()`` (looked at every :data:`STOP_CHECK_INTERVAL` s at least) says the
    server is shutting down.

    The first frame goes through the server. Then, where the server allows it
    (:func:`._stream_writer.server_framing`), the process's stream writer writes the
    rest straight to ``sock`` and this generator only waits for it to finish
    (:func:`._stream_writer.take_over`); else this generator writes every frame
    (:func:`_generator_frames`). Both pace the writes the same way
    (:mod:`._stream_pacing`).
    """
    try:
        yield f"retry: {retry_ms}\n: connected\n\n".encode()
        chunked = server_framing(sock, sys._getframe(1))
        if sock is not None and chunked is not None:
            take_over(sock, sub, hub, heartbeat, linger, wakeups, stopping, chunked)
            return
        yield from _generator_frames(hub, sub, heartbeat, linger, wakeups, sock, stopping)
    finally:
        sub.close()
        if release is not None:
            release()


def _generator_frames(hub: Hub, sub: Subscription, heartbeat: float, linger: float,
                      wakeups: float, sock: socket.socket | None,
                      stopping: Callable[[], bool] | None) -> Iterator[bytes]:
    """The stream written by its own generator (no socket to hand to the writer).

    After each write the reader sleeps :func:`stream_pause` (``streams / wakeups``,
    the streams of every process of the host on a feed file hub, of this process
    else; at least ``linger``, at most :data:`MAX_PAUSE`; aligned to multiples of
    the pause, so streams wake together), so the events published meanwhile go out
    in one write (up to :data:`BATCH_BYTES`). A backlog bigger than that follows at
    once. A heartbeat comment goes out after ``heartbeat`` s idle. The socket is
    looked at after every idle look, and before a write at most every
    :data:`PEER_CHECK_INTERVAL` s (a second write to a closed socket fails anyway).
    """
    look = heartbeat if stopping is None else min(heartbeat, STOP_CHECK_INTERVAL)
    chunk = max(1, hub.client_queue)
    quiet_since = peer_checked = time.monotonic()
    while True:
        if stopping is not None and stopping():
            return
        try:
            count, data = read_batch(sub, look, chunk)
        except SubscriberDroppedError:
            return
        now = time.monotonic()
        if not count or now - peer_checked >= PEER_CHECK_INTERVAL:
            if peer_gone(sock):  # idle: at every look; writing: once a second
                return
            peer_checked = now
        if not count and now - quiet_since < heartbeat - 1e-3:
            continue  # only a look at the server: no heartbeat due yet
        quiet_since = now
        if count:
            yield data
            if len(data) >= BATCH_BYTES:
                continue  # a backlog handed out in batches: no pause until it is drained
            pause = stream_pause(paced_streams(hub), linger, wakeups)
            sleep_until(next_write_at(time.monotonic(), pause, linger))
        else:
            yield b": heartbeat\n\n"
