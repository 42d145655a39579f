"""What keeps ``/api/events`` streams from starving the server.

- :class:`StreamGate`: at most ``limit`` open streams per process (default from the
  server's thread count, :func:`default_max_streams`); beyond it ``503`` + ``Retry-After``.
- :func:`sync_worker_error`: gunicorn ``sync`` workers serve one request at a time; a
  stream would hang the worker, so it is refused with a message.
- :func:`stream_socket`: the client's socket (werkzeug ``environ["werkzeug.socket"]``,
  gunicorn ``environ["gunicorn.socket"]``) with a timeout, so a write to a client that
  does not read fails after that long instead of blocking the thread.
- :func:`peer_gone`: a closed client is seen before the next write (the first write to a
  closed TCP socket succeeds; only the second fails), so within one heartbeat.
- :func:`server_stopping`: under gunicorn, whether the worker is shutting down, so that
  open streams end within about a second instead of holding the worker for its whole
  graceful timeout.
- :func:`event_stream`: the SSE generator itself.
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
#: All streams of a hub (of the host, on a feed file) together write at most about this
#: often per second (the default of ``OTEL_RUNS_SSE_WAKEUPS``) while each waits less than
#: :data:`MAX_PAUSE` (``streams / wakeups`` s after a write): 100 streams write every
#: 0.2 s. One write costs about 0.15 ms of CPU (measured: ``bench/fanout.py``).
STREAM_WAKEUPS_PER_SECOND = 500.0
#: The longest a stream waits after a write (then each stream writes once a second).
MAX_PAUSE = 1.0
#: What one write of a stream carries at most when more is queued (bytes): the rest
#: follows at once, without a pause.
BATCH_BYTES = 256 * 1024
#: How often (s) a stream that keeps writing looks at its socket for a closed client.
PEER_CHECK_INTERVAL = 1.0
#: How often (s) a stream that can tell its server is stopping looks.
STOP_CHECK_INTERVAL = 1.0

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


def _paced(hub: Hub) -> int:
    """The streams sharing the wake-ups: the host's on one feed file, else the process's."""
    paced = getattr(hub, "paced_streams", None)
    return int(paced()) if paced is not None else hub.subscriber_count


def stream_pause(streams: int, linger: float, wakeups: float) -> float:
    """Seconds a stream waits after a write: ``streams / wakeups`` (so all ``streams``
    together wake about ``wakeups`` times a second), at least ``linger``, at most
    :data:`MAX_PAUSE`."""
    return max(linger, min(MAX_PAUSE, streams / wakeups if wakeups > 0 else MAX_PAUSE))


def _more_frames(sub: Subscription, count: int, data: bytes, chunk: int) -> tuple[int, bytes]:
    """Add the chunks already queued after a full one, up to :data:`BATCH_BYTES`: the
    whole backlog of a pause goes out in one write."""
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


def event_stream(hub: Hub, sub: Subscription, heartbeat: float, retry_ms: int, linger: float,
                 wakeups: float = STREAM_WAKEUPS_PER_SECOND,
                 sock: socket.socket | None = None,
                 release: Callable[[], None] | None = None,
                 stopping: Callable[[], bool] | None = None) -> Iterator[bytes]:
    """Yield SSE frames until the client goes (seen on its socket before a write, or
    the server's write fails and closes this generator), the reader is dropped, the
    hub closes, or ``stopping()`` (looked at every :data:`STOP_CHECK_INTERVAL` s at
    least) says the server is shutting down.

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
    try:
        yield f"retry: {retry_ms}\n: connected\n\n".encode()
        quiet_since = peer_checked = time.monotonic()
        while True:
            if stopping is not None and stopping():
                return
            try:
                count, data = sub.next_frames(look)
                if count >= chunk:
                    count, data = _more_frames(sub, count, data, chunk)
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
                pause = stream_pause(_paced(hub), linger, wakeups)
                if pause > 0:
                    # To a multiple of pause (at least linger away): streams wake together.
                    wait = pause - time.monotonic() % pause
                    time.sleep(wait + pause if wait < linger else wait)
            else:
                yield b": heartbeat\n\n"
    finally:
        sub.close()
        if release is not None:
            release()
