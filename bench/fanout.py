"""Live-feed fan-out: 100 SSE clients, 1,000 runs, against a real server process.

    python bench/fanout.py [--clients 100] [--runs 1000] [--rounds 10] [--posters 4] [--seconds 120]
                           [--no-ledger] [--linger S] [--wakeups N] [--buffer N]
                           [--server werkzeug|gunicorn] [--workers N]

A threaded werkzeug server (``make_server(threaded=True)``, one new thread per
connection: it can hold 100 streams) or, with ``--server gunicorn``, gunicorn with
``--workers`` ``gthread`` workers (default one; a pool of threads each: the server the
README recommends for production) runs in a child process with ``RunTracking`` and the
git ledger on a fresh temp repository. With several workers and no Redis they share the
project's live feed file: each run is published by the worker that ran it and reaches
the streams of the others through the file, so the latency is also given for deliveries
on ANOTHER worker than the run's (each response says which worker answered). The clients run in
another child process (all streams in one selector loop, raw sockets, reconnecting
with ``Last-Event-ID`` like a browser if the server drops them). Phases, side by side:

  none  POST ``--runs`` tracked requests with no stream connected
  fan   the same with ``--clients`` streams connected; every client must receive
        ``run:started`` and ``run:completed`` of every run exactly once
  none  again (the baseline is the mean of both ``none`` phases)

The none/fan pair is repeated ``--rounds`` times (then a last none): each fan
phase is compared with the none phases around it and the ratio printed is the
median over rounds (the machine is shared: one pair alone is too noisy).
Prints tracked requests/s of each phase, the ratio fan/none (goal >= 0.9),
p50/p99 delivery latency (publish time in the event -> received by a client;
sampled: one event in ten per client), the CPU the server's streams used while
posting (per-thread ``schedstat``, Linux): their own threads (each stream's response
names its thread, ``X-Worker-Tid``, so gunicorn's reused pool threads count too) and
each worker's stream writer thread (``otel-runs-sse-writer``, which writes the streams
after their first frame; the workers write their live feed threads' ids to a file);
the feed followers' CPU apart: the fan-out's own cost, which the machine's noise does
not blur as it blurs the throughput ratio; and how many reads with data the clients
made (about the server's writes: what the pacing bounds). ``--wakeups`` sets
``OTEL_RUNS_SSE_WAKEUPS`` (the pacing) for a run.
Loops are bounded by count and by ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fanout_servers import (  # noqa: E402  (memory.py imports Server, post_runs from here)
    GUNICORN_THREADS,
    Server,
    post_runs,
    process_cpu_seconds,
    thread_cpu_ns,
)

# -- the clients (a child process) ------------------------------------------------

def _iso_to_epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class _Stream:
    """One SSE connection read without blocking; reconnects with Last-Event-ID.

    While runs are posted a client only stores what it receives (with the time)
    and counts ``data:`` lines: the clients share the server's cores, so reading
    must cost little. :meth:`parse` turns the stored bytes into events afterwards
    (and before a reconnect, which needs the last event id)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.pid = 0  # the worker serving the stream (its X-Worker-Pid header)
        self.tid = 0  # and its thread (X-Worker-Tid): whose CPU is the stream's
        self.seen: list[tuple[str, str]] = []
        self.latencies: list[tuple[str, float]] = []  # (run id, seconds), sampled
        self.last_id: str | None = None
        self.reconnects = -1
        self.connected = False
        self.sock: socket.socket | None = None
        self.received = 0  # data lines so far (a cheap count, checked by parse())
        self.chunks = 0  # reads that got data (about the server's writes: TCP may merge some)
        self._chunks: list[tuple[float, bytes]] = []
        self._tail = b""
        self._buf = b""

    def connect(self) -> socket.socket:
        self.parse()
        self.reconnects += 1
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        header = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
        sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}\r\n".encode())
        sock.setblocking(False)
        self.sock, self._buf, self._tail = sock, b"", b""
        return sock

    def feed(self, chunk: bytes, now: float) -> None:
        self._chunks.append((now, chunk))
        self.chunks += 1
        joined = self._tail + chunk
        self.received += joined.count(b"data: ") - self._tail.count(b"data: ")
        self._tail = chunk[-5:]
        if not self.connected and b": connected" in chunk:
            self.connected = True
            head = b"".join(c for _, c in self._chunks)
            pid, tid = _PID_RE.search(head), _TID_RE.search(head)
            self.pid = int(pid.group(1)) if pid else 0
            self.tid = int(tid.group(1)) if tid else 0

    def parse(self) -> None:
        """Turn the stored chunks into (type, run_id) events, latencies, last id."""
        for now, chunk in self._chunks:
            self._buf += chunk
            cut = self._buf.rfind(b"\n\n")
            if cut < 0:
                continue
            complete, self._buf = self._buf[:cut + 2], self._buf[cut + 2:]
            for match in _EVENT_RE.finditer(complete):
                etype, eid, data = match.group(1, 2, 3)
                run_id = _RUN_ID_RE.match(data)
                if run_id is None:
                    continue
                self.seen.append((etype.decode(), run_id.group(1).decode()))
                if len(self.seen) % 10 == 1:  # latency: one event in ten per client
                    run = json.loads(data)
                    stamp = run["started_at"] if etype == b"run:started" else run["ended_at"]
                    self.latencies.append((run_id.group(1).decode(), now - _iso_to_epoch(stamp)))
                self.last_id = eid.decode()
        self._chunks.clear()


_EVENT_RE = re.compile(rb"event: (run:started|run:completed)\nid: ([^\n]*)\ndata: ([^\n]*)\n")
_RUN_ID_RE = re.compile(rb'\{"run_id":"([^"]+)"')
_PID_RE = re.compile(rb"X-Worker-Pid: (\d+)", re.IGNORECASE)
_TID_RE = re.compile(rb"X-Worker-Tid: (\d+)", re.IGNORECASE)


def clients_main(port: int, clients: int, expected: int, seconds: float, conn: Any) -> None:
    """Child process: ``clients`` streams in one selector loop; sends back what each saw."""
    import selectors

    deadline = time.monotonic() + seconds
    sel = selectors.DefaultSelector()
    streams = [_Stream(port) for _ in range(clients)]
    for st in streams:
        sel.register(st.connect(), selectors.EVENT_READ, st)
    told_ready = False
    while time.monotonic() < deadline:
        if not told_ready and all(st.connected for st in streams):
            conn.send("ready")
            told_ready = True
        if all(st.received >= expected for st in streams):
            break
        for key, _ in sel.select(timeout=0.5):
            st = key.data
            try:
                chunk = key.fileobj.recv(1 << 18)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                st.feed(chunk, time.time())
            else:  # dropped by the server: reconnect like a browser
                sel.unregister(key.fileobj)
                key.fileobj.close()
                if st.received < expected:
                    sel.register(st.connect(), selectors.EVENT_READ, st)
    if not told_ready:
        conn.send("not ready")
    for st in streams:
        st.parse()
    conn.send([(st.seen, st.latencies, st.reconnects, st.pid, st.chunks, f"{st.pid}/{st.tid}")
               for st in streams])
    for st in streams:
        if st.sock is not None:
            st.sock.close()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def fan_phase(server: Server, clients: int, runs: int, posters: int,
              seconds: float, deadline: float, origins: dict[str, int],
              ) -> tuple[float, float, dict[str, float] | None, list[str], list[Any]]:
    """Connect ``clients`` streams, POST ``runs`` requests, collect what each client saw.
    Returns (requests/s, client CPU seconds while posting, CPU seconds of the server
    (its worker processes), of its stream threads, stream writer threads and feed
    followers while posting (None where /proc has no schedstat), run ids, per-client
    results)."""
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(
        target=clients_main, args=(server.port, clients, 2 * runs, seconds, child))
    proc.start()
    if not parent.poll(60) or parent.recv() != "ready":
        raise SystemExit("clients did not connect")
    time.sleep(0.6)  # the workers write their live feed threads down every 0.25 s
    live = server.live_threads()
    client_cpu0 = process_cpu_seconds(proc.pid)
    server_cpu0 = server.cpu_seconds()
    threads0 = thread_cpu_ns(server.pids)
    rate, run_ids = post_runs(server.port, runs, posters, deadline, origins)
    threads1 = thread_cpu_ns(server.pids)
    server_cpu = server.cpu_seconds() - server_cpu0
    client_cpu = process_cpu_seconds(proc.pid) - client_cpu0
    if not parent.poll(seconds + 30):
        raise SystemExit("clients did not finish")
    results = parent.recv()
    proc.join(30)

    def used(tids: set[str]) -> float:
        return sum(threads1[t] - threads0[t] for t in tids if t in threads0 and t in threads1) / 1e9

    # The stream threads: each stream's response names its thread (X-Worker-Tid).
    streams = {r[5] for r in results if r[5] in threads0 and r[5] in threads1}
    cpu = None
    if len(streams) >= clients:
        cpu = {"server": server_cpu, "streams": used(streams),
               "writer": used({t for t, name in live.items() if name == "otel-runs-sse-writer"}),
               "follower": used({t for t, name in live.items()
                                 if name == "otel-runs-feed-follower"})}
    return rate, client_cpu, cpu, run_ids, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10,
                        help="none/fan alternations (the ratio is the median over rounds)")
    parser.add_argument("--posters", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--no-ledger", action="store_true", help="configure(ledger=False)")
    parser.add_argument("--server", choices=("werkzeug", "gunicorn"), default="werkzeug",
                        help="werkzeug threaded (a thread per connection) or gunicorn with "
                             f"gthread workers ({GUNICORN_THREADS} threads each)")
    parser.add_argument("--workers", type=int, default=1,
                        help="gunicorn worker processes (sharing the project's feed file)")
    parser.add_argument("--linger", type=float, default=None,
                        help="OTEL_RUNS_SSE_LINGER for the server (default: the shipped default)")
    parser.add_argument("--wakeups", type=float, default=None,
                        help="OTEL_RUNS_SSE_WAKEUPS for the server (default: the shipped default)")
    parser.add_argument("--buffer", type=int, default=None,
                        help="OTEL_RUNS_SSE_BUFFER for the server (default: the shipped default)")
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds * (2 * args.rounds + 1)

    nones: list[float] = []
    fans: list[float] = []
    cpu_none: list[float] = []
    cpu_fan: list[float] = []
    client_cpu: list[float] = []
    stream_cpu: list[dict[str, float]] = []
    exact: list[int] = []
    latencies: list[float] = []
    other: list[float] = []  # deliveries on another worker than the run's
    per_worker: list[dict[int, int]] = []
    origins: dict[str, int] = {}
    reconnects = 0
    writes: list[int] = []  # reads with data by all clients during a fan phase
    with tempfile.TemporaryDirectory(prefix="otel-runs-fanout-", ignore_cleanup_errors=True) as tmp:
        server = Server(Path(tmp), ledger=not args.no_ledger, linger=args.linger,
                        kind=args.server, workers=args.workers, wakeups=args.wakeups,
                        buffer=args.buffer)
        try:
            post_runs(server.port, 100, args.posters, deadline)  # warm-up
            for _ in range(args.rounds):
                cpu0 = server.cpu_seconds()
                nones.append(post_runs(server.port, args.runs, args.posters, deadline)[0])
                cpu_none.append(server.cpu_seconds() - cpu0)
                cpu0 = server.cpu_seconds()
                rate, ccpu, scpu, run_ids, results = fan_phase(
                    server, args.clients, args.runs, args.posters, args.seconds, deadline,
                    origins)
                if scpu is not None:
                    stream_cpu.append(scpu)
                cpu_fan.append(server.cpu_seconds() - cpu0)  # with connecting and closing
                fans.append(rate)
                client_cpu.append(ccpu)
                expected = {(t, r) for r in run_ids for t in ("run:started", "run:completed")}
                exact.append(sum(1 for seen, *_ in results
                                 if len(seen) == len(expected) and set(seen) == expected))
                latencies += [lat for _, lats, *_ in results for _, lat in lats]
                other += [lat for _, lats, _, pid, *_ in results for run_id, lat in lats
                          if origins.get(run_id, pid) != pid]
                reconnects += sum(r for _, _, r, *_ in results)
                writes.append(sum(r[4] for r in results))
                counts: dict[int, int] = {}
                for _, _, _, pid, *_ in results:
                    counts[pid] = counts.get(pid, 0) + 1
                per_worker.append(counts)
            cpu0 = server.cpu_seconds()
            nones.append(post_runs(server.port, args.runs, args.posters, deadline)[0])
            cpu_none.append(server.cpu_seconds() - cpu0)
        finally:
            server.stop()

    # Each fan phase against the mean of the no-stream phases just before and after it.
    ratios = [fan / ((nones[i] + nones[i + 1]) / 2) for i, fan in enumerate(fans)]
    server_name = ("werkzeug threaded" if args.server == "werkzeug"
                   else f"gunicorn gthread ({args.workers} worker(s), {GUNICORN_THREADS} "
                        "threads each" + (", one feed file" if args.workers > 1 else "") + ")")
    print(f"server: {server_name}, ledger={'off' if args.no_ledger else 'on'}; "
          f"{args.clients} clients, {args.runs} runs per phase, {args.rounds} rounds, "
          f"{args.posters} posting threads")
    print(f"clients receiving every event exactly once, per round: "
          f"{', '.join(f'{n}/{args.clients}' for n in exact)} (reconnects after a drop: {reconnects})")
    if latencies:
        print(f"delivery latency: p50 {pct(latencies, 50) * 1000:.1f} ms, "
              f"p99 {pct(latencies, 99) * 1000:.1f} ms over {len(latencies)} deliveries")
    if args.workers > 1:
        spread = sorted(per_worker[-1].values(), reverse=True) if per_worker else []
        print(f"streams per worker (last round): {spread}")
        if other:
            print(f"delivery latency on ANOTHER worker than the run's: p50 "
                  f"{pct(other, 50) * 1000:.1f} ms, p99 {pct(other, 99) * 1000:.1f} ms over "
                  f"{len(other)} deliveries")
    print("tracked requests/s: none " + " / ".join(f"{n:.0f}" for n in nones)
          + f"; with {args.clients} streams " + " / ".join(f"{f:.0f}" for f in fans))
    print(f"server CPU per run: none {sum(cpu_none) / len(cpu_none) / args.runs * 1000:.2f} ms, "
          f"with streams {sum(cpu_fan) / len(cpu_fan) / args.runs * 1000:.2f} ms (with their "
          f"connecting and closing); client process "
          f"CPU while posting: {sum(client_cpu) / len(client_cpu):.1f} s a round (the clients "
          f"share this {os.cpu_count()}-core machine)")
    if stream_cpu:  # the fan-out's own cost, apart from what the machine's noise does to the rest
        per_run = statistics.median(c["streams"] + c["writer"] for c in stream_cpu) / args.runs
        parts = {k: statistics.median(c[k] for c in stream_cpu) / args.runs * 1000
                 for k in ("streams", "writer", "follower")}
        print(f"CPU of the server's {args.clients} streams (their threads + the stream writers): "
              f"{per_run * 1000:.2f} ms per run ({per_run / (2 * args.clients) * 1e6:.1f} us per "
              f"delivered event; median of rounds; stream threads {parts['streams']:.2f}, "
              f"writers {parts['writer']:.2f}; feed followers {parts['follower']:.2f} ms per run)")
        posting = statistics.median(c["server"] for c in stream_cpu) / args.runs * 1000
        rest = posting - parts["streams"] - parts["writer"] - parts["follower"]
        print(f"server CPU per run while posting: {posting:.2f} ms with streams, of which "
              f"{rest:.2f} ms besides streams, writers and followers (the requests' own work, "
              f"with the feed read on publish while streams are open) vs "
              f"{statistics.median(cpu_none) / args.runs * 1000:.2f} ms with none (medians)")
    if writes:
        per_run_writes = statistics.median(writes) / args.runs
        print(f"writes received per run: {per_run_writes:.1f} (all clients, median of rounds; "
              f"{per_run_writes / args.clients:.2f} per client)")
    print("ratio per round: " + ", ".join(f"{r:.2f}" for r in ratios))
    print(f"RATIO with-streams/none = {statistics.median(ratios):.2f} (median of rounds; goal >= 0.9)")
    if min(exact) < args.clients:
        raise SystemExit("some clients did not receive every event exactly once")


if __name__ == "__main__":
    main()
