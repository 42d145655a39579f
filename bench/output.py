"""Run output: capture throughput, request-path cost and memory, measured side by side.

    python bench/output.py [--lines 100000] [--requests 2000] [--rounds 5]

On a fresh git repository in a temp dir, with ``configure()`` and the git ledger:

* capture: one run printing ``--lines`` lines, timed from the first line to the end of
  the ``tracked_run`` block (every line scrubbed, numbered, chunked into the journal; the
  end record holds the kept output): through ``run.log`` in a loop (one terraform line
  whose numbers change, and varied lines whose digests and names change too), and through
  ``run_command`` of a child printing the lines (goal >= 200,000 lines/s into the journal;
  judged per CPU second of this process, as the machine may be shared);
* request path: a Flask view tracked with ``@run_tracked`` that logs 10 lines vs the same
  view logging none, taking turns request by request with the Flask test client; the
  ratio of medians over ``--rounds`` rounds (goal <= 1.1x);
* memory: RSS after the 100,000-line run vs before it (the run keeps at most
  ``OTEL_RUNS_OUTPUT_MAX_BYTES``, 1 MiB, of output);
* a flood: a child printing 100 MB (a million 100-byte lines) as fast as it can, through
  ``run_command`` in a run vs ``subprocess.run`` capturing the same child's output, taking
  turns (the ratio is what the capture's bookkeeping adds), and the peak RSS of the
  process around it (``VmHWM``; goal: growth <= 20 MB).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _repo(path: Path) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "-c", "user.name=b", "-c", "user.email=b@b",
                    "commit", "-q", "--allow-empty", "-m", "init"], check=True)
    return path


_WORDS = ("web", "api", "worker", "db", "cache", "queue", "auth-proxy", "billing", "search")


def varied_lines(count: int, seed: int = 1) -> list[str]:
    """Tool output whose lines differ in more than their numbers: image digests, pod and
    file names, durations (terraform, docker build, kubectl, pytest, git)."""
    rng = random.Random(seed)

    def hexid(n: int) -> str:
        return "".join(rng.choice("0123456789abcdef") for _ in range(n))

    shapes = [
        lambda: f"aws_instance.{rng.choice(_WORDS)}[{rng.randrange(50)}]: Still creating... "
                f"[{rng.randrange(300)}s elapsed]",
        lambda: f" ---> Running in {hexid(12)}",
        lambda: f"#{rng.randrange(30)} sha256:{hexid(64)} {rng.randrange(9)}.{rng.randrange(9)}MB"
                f" / {rng.randrange(90)}.{rng.randrange(9)}MB {rng.random():.1f}s",
        lambda: f"pod/{rng.choice(_WORDS)}-{hexid(10)}-{hexid(5)} condition met",
        lambda: f"tests/test_{rng.choice(_WORDS).replace('-', '_')}.py::test_{hexid(6)} PASSED "
                f"[{rng.randrange(100)}%]",
        lambda: f"remote: Counting objects: {rng.randrange(100)}% ({rng.randrange(999)}/999), done.",
        lambda: f"{rng.choice(_WORDS)} | {hexid(8)}: GET /v1/{rng.choice(_WORDS)} 200 "
                f"{rng.random() * 90:.2f}ms",
    ]
    return [rng.choice(shapes)() for _ in range(count)]


def _capture_rate(root: Path, texts: list[str]) -> tuple[float, float, str]:
    """(lines/s wall, lines/s per CPU second, run id) of one run logging ``texts``."""
    import otel_runs

    start, cpu = time.perf_counter(), time.process_time()
    with otel_runs.tracked_run(root, "deploy", "deploy:terraform") as run:
        for text in texts:
            run.log(text)
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    return len(texts) / wall, len(texts) / used, run.run_id


def capture(root: Path, lines: int) -> None:
    import otel_runs
    from otel_runs.ledger import ledger_for

    text = "Creating aws_instance.web[%d]: Still creating... [10s elapsed]"
    varied = varied_lines(lines)
    rate_v, cpu_rate_v, _ = _capture_rate(root, varied)
    before = _rss_kb()
    start, cpu = time.perf_counter(), time.process_time()
    with otel_runs.tracked_run(root, "deploy", "deploy:terraform") as run:
        for i in range(lines):
            run.log(text % i)
    loop, loop_cpu = time.perf_counter() - start, time.process_time() - cpu
    after = _rss_kb()
    child = f"import sys\nfor i in range({lines}): sys.stdout.write({text!r} % i + '\\n')\n"
    start = time.perf_counter()
    with otel_runs.tracked_run(root, "deploy", "deploy:terraform") as run2:
        otel_runs.run_command([sys.executable, "-c", child])
    command = time.perf_counter() - start
    ledger = ledger_for(root)
    kept = len(ledger.output(run.run_id) or [])
    kept2 = len(ledger.output(run2.run_id) or [])
    print(f"capture via run.log:      {lines:,} lines in {loop:.2f} s = {lines / loop:,.0f} lines/s "
          f"({kept:,} kept); per CPU second of this process (the machine may be shared): "
          f"{lines / loop_cpu:,.0f} lines/s  goal >= 200,000 lines/s: "
          f"{'met' if lines / loop_cpu >= 200_000 else 'NOT met'}")
    print(f"capture via run.log, varied lines (digests, names; see varied_lines): "
          f"{rate_v:,.0f} lines/s; per CPU second {cpu_rate_v:,.0f} lines/s  goal >= 200,000: "
          f"{'met' if cpu_rate_v >= 200_000 else 'NOT met'}")
    print(f"capture via run_command:  {lines:,} lines in {command:.2f} s = "
          f"{lines / command:,.0f} lines/s ({kept2:,} kept; includes the child's own time)")
    print(f"RSS around the {lines:,}-line run: {before / 1024:.1f} -> {after / 1024:.1f} MB "
          f"(+{(after - before) / 1024:.1f} MB)")
    ledger.flush(120)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def flood(root: Path, rounds: int = 3) -> None:
    import otel_runs

    child = [sys.executable, "-c", "import sys\nblock = (b'x' * 99 + b'\\n') * 10_000\n"
             "for _ in range(100): sys.stdout.buffer.write(block)\n"]
    with open("/proc/self/clear_refs", "w") as fh:  # (the peak so far reset to the RSS now)
        fh.write("5")
    before = _rss_kb()
    with otel_runs.tracked_run(root, "test", "test:pytest"):  # (first: the peak is its own)
        otel_runs.run_command(child, check=True)
    peak = _status_kb("VmHWM:")
    plain, tracked = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(child, capture_output=True, check=True)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        with otel_runs.tracked_run(root, "test", "test:pytest"):
            otel_runs.run_command(child, check=True)
        tracked.append(time.perf_counter() - start)
    ratio = statistics.median(tracked) / statistics.median(plain)
    print(f"flood, 100 MB from a child: run_command in a run {statistics.median(tracked):.2f} s "
          f"vs subprocess.run capturing it {statistics.median(plain):.2f} s = {ratio:.2f}x "
          f"(median of {rounds}); peak RSS around the first flood {(peak - before) / 1024:+.1f} MB "
          f"over the RSS before it (goal <= 20 MB)")


def request_path(root: Path, requests: int, rounds: int) -> None:
    from flask import Flask

    import otel_runs
    from otel_runs.flask import RunTracking

    app = Flask("bench-output")
    app.config["PROJECT_ROOT"] = str(root)

    @app.post("/quiet")
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def quiet() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/talks")
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def talks() -> dict[str, bool]:
        run = otel_runs.current_run()
        assert run is not None
        for i in range(10):
            run.log(f"step {i}: applied deployment/web")
        return {"ok": True}

    RunTracking(app)
    client = app.test_client()
    for _ in range(200):
        client.post("/quiet")
        client.post("/talks")
    ratios = []
    for _ in range(rounds):
        times: dict[str, list[float]] = {"/quiet": [], "/talks": []}
        for _ in range(requests):
            for url in ("/quiet", "/talks"):
                start = time.perf_counter()
                client.post(url)
                times[url].append(time.perf_counter() - start)
        ratio = statistics.median(times["/talks"]) / statistics.median(times["/quiet"])
        ratios.append(ratio)
        print(f"  round: none {statistics.median(times['/quiet']) * 1e6:.0f} us, "
              f"10 lines {statistics.median(times['/talks']) * 1e6:.0f} us, ratio {ratio:.3f}")
    median = statistics.median(ratios)
    print(f"request path, 10 lines vs none: {median:.3f}x (median of {rounds} rounds)  "
          f"goal <= 1.1x: {'met' if median <= 1.1 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="otel-runs-bench-output-") as tmp:
        root = _repo(Path(tmp) / "repo")
        import otel_runs

        otel_runs.configure(root)
        capture(root, args.lines)
        request_path(root, args.requests, args.rounds)
        flood(root)
        otel_runs.shutdown()


if __name__ == "__main__":
    main()
