"""How often a stream writes: a pause after each write (``OTEL_RUNS_SSE_WAKEUPS`` shared by
the streams, at least the linger, at most a second), everything queued meanwhile in one
write, and a backlog of several chunks in one write too. Read on a real werkzeug server
with a raw HTTP/1.1 client: the server sends each write of the stream as one chunk of
the chunked transfer encoding, so the client counts the writes exactly."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_until
from test_sse import make_app

from otel_runs.live import get_hub
from otel_runs.live._streams import BATCH_BYTES, MAX_PAUSE, STREAM_WAKEUPS_PER_SECOND, stream_pause

_EVENT_ID = re.compile(rb"^id: (\S+)$", re.MULTILINE)


class ChunkedStream:
    """``GET /api/events`` on a raw socket; :meth:`chunks` gives the response's chunks."""

    def __init__(self, port: int, last_event_id: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        header = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
        self.sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}\r\n".encode())
        self.buf = b""
        head = self._until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head

    def _fill(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise EOFError("the server closed the stream")
        self.buf += data

    def _until(self, sep: bytes) -> bytes:
        for _ in range(100_000):  # bounded: each round reads (the socket has a timeout)
            cut = self.buf.find(sep)
            if cut >= 0:
                out, self.buf = self.buf[:cut], self.buf[cut + len(sep):]
                return out
            self._fill()
        raise AssertionError("no separator")

    def chunk(self) -> bytes:
        """The next chunk of the response body: one write of the stream."""
        size = int(self._until(b"\r\n").split(b";")[0], 16)
        for _ in range(100_000):
            if len(self.buf) >= size + 2:
                break
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size + 2:]
        return data

    def event_chunks(self, events: int, timeout: float) -> list[list[bytes]]:
        """The ids of the next ``events`` events, grouped by the chunk (write) they came in."""
        deadline = time.monotonic() + timeout
        out: list[list[bytes]] = []
        seen = 0
        while seen < events:
            assert time.monotonic() < deadline, f"only {seen}/{events} events in {timeout}s"
            ids = _EVENT_ID.findall(self.chunk())
            if ids:
                out.append(ids)
                seen += len(ids)
        return out

    def close(self) -> None:
        self.sock.close()


def test_pause_is_the_shared_budget_between_the_linger_and_a_second() -> None:
    assert stream_pause(1, 0.05, 500) == 0.05  # few streams: the linger
    assert stream_pause(100, 0.05, 500) == pytest.approx(0.2)  # 100 x 5 writes/s = 500/s
    assert stream_pause(100_000, 0.05, 500) == MAX_PAUSE == 1.0  # then once a second each
    assert stream_pause(100, 0.0, 0) == MAX_PAUSE
    # The default: 100 streams of a host (the benchmark's) wait 0.2 s, not a second.
    assert stream_pause(100, 0.05, STREAM_WAKEUPS_PER_SECOND) <= 0.2


def test_events_published_during_a_pause_go_out_in_one_write(tmp_path: Path, live_server) -> None:  # noqa: ANN001
    """An event every 5 ms for about 1.5 s with a 0.25 s pause: every event arrives, in
    order, in far fewer writes than events (each write carries what the pause queued)."""
    app = make_app(tmp_path, OTEL_RUNS_SSE_LINGER=0.25)
    srv = live_server(app)
    hub = get_hub(app)
    stream = ChunkedStream(srv.port)
    try:
        assert b"connected" in stream.chunk()
        ids: list[str] = []
        done = threading.Event()

        def publish() -> None:
            for n in range(300):
                ids.append(hub.publish("tick", {"n": n}))
                time.sleep(0.005)
            done.set()

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        chunks = stream.event_chunks(300, timeout=60)
        publisher.join(30)
        assert done.is_set()
        assert [i.decode() for c in chunks for i in c] == ids
        print(f"300 events in {len(chunks)} writes")
        # At most one write per pause (plus the first, at once): 300 events over >= 1.5 s
        # with 0.25 s pauses is about 7 writes; 300 / 10 leaves room for a slow machine.
        assert len(chunks) <= 300 // 10, f"{len(chunks)} writes for 300 events"
    finally:
        stream.close()


def test_a_replay_of_several_chunks_is_one_write(tmp_path: Path, live_server) -> None:  # noqa: ANN001
    """A chunk is ``OTEL_RUNS_SSE_CLIENT_QUEUE`` events; what is queued beyond it goes in the
    same write (up to ``BATCH_BYTES``), so a backlog costs one wake-up, not one per chunk."""
    app = make_app(tmp_path, OTEL_RUNS_SSE_CLIENT_QUEUE=4, OTEL_RUNS_SSE_LINGER=30.0)
    srv = live_server(app)
    hub = get_hub(app)
    first = hub.publish("tick", {"n": 0})
    ids = [hub.publish("tick", {"n": n}).encode() for n in range(1, 11)]
    stream = ChunkedStream(srv.port, last_event_id=first)
    try:
        assert b"connected" in stream.chunk()
        assert stream.event_chunks(10, timeout=15) == [ids]
    finally:
        stream.close()


def test_a_backlog_bigger_than_a_batch_comes_in_batches_without_pauses(
        tmp_path: Path, live_server) -> None:  # noqa: ANN001
    """With a 30 s linger, a replay of several ``BATCH_BYTES`` arrives at once, in writes of
    about that size (not one write of everything, not one per chunk)."""
    app = make_app(tmp_path, OTEL_RUNS_SSE_CLIENT_QUEUE=8, OTEL_RUNS_SSE_LINGER=30.0)
    srv = live_server(app)
    hub = get_hub(app)
    first = hub.publish("tick", {"n": 0})
    pad = "x" * 16_000
    count = 3 * BATCH_BYTES // 16_000 + 4
    ids = [hub.publish("tick", {"n": n, "pad": pad}).encode() for n in range(count)]
    stream = ChunkedStream(srv.port, last_event_id=first)
    try:
        assert b"connected" in stream.chunk()
        chunks = stream.event_chunks(count, timeout=20)  # well before one 30 s pause
        assert [i for c in chunks for i in c] == ids
        assert 3 <= len(chunks) <= count // 8, [len(c) for c in chunks]
    finally:
        stream.close()


def test_a_client_that_closes_while_events_flow_is_released(tmp_path: Path, live_server) -> None:  # noqa: ANN001
    """A stream that keeps writing looks at its socket only once a second, but a closed
    client still ends it soon: the second write to the closed socket fails."""
    app = make_app(tmp_path, OTEL_RUNS_SSE_HEARTBEAT=60.0)
    srv = live_server(app)
    hub = get_hub(app)
    stop = threading.Event()

    def publish() -> None:
        for n in range(3000):  # bounded: at most about a minute
            if stop.wait(0.02):
                return
            hub.publish("tick", {"n": n})

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        stream = ChunkedStream(srv.port)
        assert b"connected" in stream.chunk()
        stream.event_chunks(3, timeout=20)
        assert hub.subscriber_count == 1
        stream.close()
        wait_until(lambda: hub.subscriber_count == 0, timeout=15)  # far below the 60 s heartbeat
    finally:
        stop.set()
        publisher.join(10)
