"""Request-path overhead of a tracked route, measured side by side in one process.

    python bench/overhead.py [--rounds 30] [--requests 200]

Cases, interleaved round by round through the Flask test client (POST view returning
``jsonify({...})``):
  a  FlaskInstrumentor only (its own plain TracerProvider)
  b  + ``@run_tracked`` and a RunProcessor that does nothing (ledger off)
  c  + the git ledger on (journal write on the request path, commits in the background),
     when ``otel_runs.exporters.ledger`` is available
Prints the median per-request time of each case and the ratios b/a (goal <= 1.2) and
c/a (goal <= 1.25).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, jsonify
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import TracerProvider

import otel_runs
from otel_runs.exporters import RunProcessor


class NothingProcessor(RunProcessor):
    """Receives every run and does nothing with it."""

    def on_run_start(self, run: otel_runs.Run) -> None:
        pass

    def on_run_end(self, run: otel_runs.Run) -> None:
        pass


def _view() -> Any:
    return jsonify(ok=True, summary="applied 3 objects", objects=["a", "b", "c"])


def instrumented_only() -> Flask:
    app = Flask("a")
    app.add_url_rule("/k8s/apply", "apply", _view, methods=["POST"])
    FlaskInstrumentor().instrument_app(app, tracer_provider=TracerProvider())
    return app


def tracked(root: Path, name: str) -> Flask:
    app = Flask(name)
    app.config["PROJECT_ROOT"] = str(root)
    FlaskInstrumentor().instrument_app(app, tracer_provider=otel_runs.configure(root))
    app.add_url_rule("/k8s/apply", "apply", otel_runs.run_tracked("deploy", "deploy:k8s")(_view),
                     methods=["POST"])
    return app


def per_request_us(app: Flask, n: int) -> float:
    client = app.test_client()
    start = time.perf_counter()
    for _ in range(n):
        resp = client.post("/k8s/apply")
        assert resp.status_code == 200
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)

    tmp = Path(tempfile.mkdtemp(prefix="otel-runs-overhead-"))
    no_ledger_root = tmp / "not-a-repo"  # no git repository here: case b has no ledger
    no_ledger_root.mkdir()
    otel_runs.configure(no_ledger_root, ledger=False, processors=[NothingProcessor()])
    cases: dict[str, Callable[[], Flask]] = {"a": instrumented_only,
                                             "b": lambda: tracked(no_ledger_root, "b")}
    try:
        importlib.import_module("otel_runs.exporters.ledger")

        repo = tmp / "repo"
        repo.mkdir()
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        otel_runs.configure(repo, ledger=True)
        cases["c"] = lambda: tracked(repo, "c")
    except ImportError:
        print("ledger not available: case c skipped")
    apps = {name: make() for name, make in cases.items()}

    for app in apps.values():  # warm up
        per_request_us(app, 50)
    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(args.rounds):
        for name, app in apps.items():
            samples[name].append(per_request_us(app, args.requests))
    otel_runs.flush()

    med = {name: statistics.median(values) for name, values in samples.items()}
    labels = {"a": "FlaskInstrumentor only", "b": "+ @run_tracked, no-op RunProcessor",
              "c": "+ git ledger (journal on request path)"}
    for name, value in med.items():
        print(f"{name}  {labels[name]:<42} median {value:8.1f} us/request")
    print(f"ratio b/a = {med['b'] / med['a']:.2f}  (goal <= 1.20)")
    if "c" in med:
        print(f"ratio c/a = {med['c'] / med['a']:.2f}  (goal <= 1.25)")
    otel_runs.shutdown()


if __name__ == "__main__":
    sys.exit(main())
