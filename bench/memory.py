"""Server memory with a stalled SSE client: RSS growth over 10,000 runs.

    python bench/memory.py [--runs 10000] [--posters 4] [--seconds 300] [--no-ledger]

Two fresh server processes (threaded werkzeug, ``RunTracking`` with the git ledger
on a temp repository, same app as ``bench/fanout.py``), side by side:

  stalled  one client connects to ``/api/events`` with a 4 KB receive buffer and
           never reads; ``--runs`` tracked requests are posted
  none     the same runs, no stream connected

Prints the server's RSS growth (after a 500-run warm-up) for both, and the
difference (goal: growth with the stalled client <= 20 MB). Loops are bounded by
count and by ``--seconds``.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import Server, post_runs  # noqa: E402


def measure(workdir: Path, runs: int, posters: int, deadline: float, stalled: bool,
            ledger: bool) -> tuple[int, int, float]:
    """(RSS before, RSS after in KB, requests/s) for one fresh server."""
    server = Server(workdir, ledger=ledger)
    sock = None
    try:
        post_runs(server.port, 500, posters, deadline)  # warm-up: imports, caches, ledger
        if stalled:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            time.sleep(0.5)
        before = server.rss_kb()
        rate, _ = post_runs(server.port, runs, posters, deadline)
        time.sleep(1.0)
        after = server.rss_kb()
        return before, after, rate
    finally:
        if sock is not None:
            sock.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--posters", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--no-ledger", action="store_true", help="configure(ledger=False)")
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    results = {}
    with tempfile.TemporaryDirectory(prefix="otel-runs-memory-", ignore_cleanup_errors=True) as tmp:
        for name, stalled in (("stalled", True), ("none", False)):
            workdir = Path(tmp) / name
            workdir.mkdir()
            results[name] = measure(workdir, args.runs, args.posters, deadline, stalled,
                                    ledger=not args.no_ledger)
    print(f"server: werkzeug threaded, ledger={'off' if args.no_ledger else 'on'}; "
          f"{args.runs} runs after a 500-run warm-up")
    for name, (before, after, rate) in results.items():
        print(f"{name:8s} RSS {before / 1024:.1f} MB -> {after / 1024:.1f} MB "
              f"(growth {(after - before) / 1024:+.1f} MB) at {rate:.0f} requests/s")
    growth = (results["stalled"][1] - results["stalled"][0]) / 1024
    baseline = (results["none"][1] - results["none"][0]) / 1024
    print(f"GROWTH with a stalled client: {growth:+.1f} MB (goal <= 20 MB); "
          f"versus no client: {growth - baseline:+.1f} MB")


if __name__ == "__main__":
    main()
