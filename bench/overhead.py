"""Request-path overhead of a tracked route, measured side by side in one process.

    python bench/overhead.py [--rounds 60] [--requests 100] [--by-request]

Cases, interleaved round by round (shuffled order) through the Flask test client (POST view returning
``jsonify({...})``):
  a  FlaskInstrumentor only (its own plain TracerProvider)
  b  + ``@run_tracked`` and a RunProcessor that does nothing (ledger off)
  c  + the git ledger on (journal write on the request path, commits in the background),
     when ``otel_runs.exporters.ledger`` is available
  d  the default wiring, ``RunTracking(app)``: ledger + live feed (each run encoded once
     for the journal and the feed), the API blueprint, FlaskInstrumentor through otel-runs
  m  d with run metrics on (``OTEL_RUNS_METRICS_ENDPOINT``: the OpenTelemetry metrics SDK
     with a Prometheus reader and the ``/metrics`` route; when the ``prometheus`` extra is
     installed)
  s  for scale: case a plus one plain nested span in the view (no otel-runs at all)
  f  for scale, the floor of this design without otel-runs: case a plus, in the view, one
     span with a run's attributes (five at its start, three at its end) and two appends
     to an O_APPEND file the size of a run's journal records (its start, before the view
     runs; its end, before the span ends): what a run that is a span and is journaled
     before its block continues and before it returns costs at least, with no JSON, no
     scrubbing, no processor, no live feed
  g  for scale, a run written by hand in the view, without otel-runs: what f does plus
     what every run must do at least (a run id, the span current while the view runs,
     the start and end records encoded as JSON from a dict, the summary read from the
     body, ``X-Run-Id`` and ``run_id`` added to the response); no registry, no processor,
     no scrubbing, no live feed, no pending queue
Prints the median per-request time of each case and, as medians of per-round ratios,
b/a (goal <= 1.2), c/a (goal <= 1.25), d/a (goal <= 1.35), m/d (metrics on against the
same wiring without them, goal <= 1.05), s/a (what any extra span costs here), f/a
(the floor above) and g/a, d/g (the run written by hand).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, jsonify
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import set_span_in_context

import otel_runs
from otel_runs.exporters import RunProcessor, run_project_root


class NothingProcessor(RunProcessor):
    """Receives the runs of one project (case b's) and does nothing with them: case c
    shares the process-wide provider and must not pay for this processor."""

    def __init__(self, project_root: Path) -> None:
        self.project_root = str(project_root.resolve())

    def accepts(self, span: Any) -> bool:
        return run_project_root(span) == self.project_root

    def on_run_start(self, run: otel_runs.Run) -> None:
        pass

    def on_run_end(self, run: otel_runs.Run) -> None:
        pass


def _view() -> Any:
    return jsonify(ok=True, summary="applied 3 objects", objects=["a", "b", "c"])


def _instrumented(name: str, view: Callable[[], Any], provider: TracerProvider) -> Flask:
    """An app whose ``POST /k8s/apply`` is ``view``, under FlaskInstrumentor with ``provider``."""
    app = Flask(name)
    app.add_url_rule("/k8s/apply", "apply", view, methods=["POST"])
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    return app


def _journal(path: Path) -> int:
    """An append-only file standing in for the journal (cases f and g)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def instrumented_only() -> Flask:
    return _instrumented("a", _view, TracerProvider())


def nested_span() -> Flask:
    provider = TracerProvider()
    tracer = provider.get_tracer("bench")

    def view() -> Any:
        with tracer.start_as_current_span("deploy:k8s"):
            return _view()

    return _instrumented("s", view, provider)


def floor(journal: Path) -> Flask:
    provider = TracerProvider()
    tracer = provider.get_tracer("bench")
    fd = _journal(journal)
    start_record = b"s" * 400 + b"\n"  # (about the sizes of case d's journal records)
    end_record = b"e" * 480 + b"\n"

    def view() -> Any:
        span = tracer.start_span("deploy:k8s", attributes={
            "otel_runs.run.id": "20261202T120000000Z-0123456789", "otel_runs.run.type": "deploy",
            "otel_runs.run.subtype": "deploy:k8s", "cicd.pipeline.name": "deploy:k8s",
            "cicd.pipeline.run.id": "20261202T120000000Z-0123456789"})
        os.write(fd, start_record)
        try:
            return _view()
        finally:
            span.set_attributes({"otel_runs.run.status": "ok", "cicd.pipeline.result": "success",
                                 "otel_runs.run.summary": "applied 3 objects"})
            os.write(fd, end_record)
            span.end()

    return _instrumented("f", view, provider)


def by_hand(journal: Path) -> Flask:
    provider = TracerProvider()
    tracer = provider.get_tracer("bench")
    fd = _journal(journal)
    encode = json.JSONEncoder(separators=(",", ":")).encode
    scan = json.JSONDecoder().scan_once
    draw = random.Random().getrandbits
    second: list[Any] = [-1, ""]

    def iso(ns: int) -> str:
        sec = ns // 1_000_000_000
        if second[0] != sec:
            second[:] = [sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))]
        return f"{second[1]}.{ns // 1000 % 1_000_000:06d}Z"

    def view() -> Any:
        start = time.time_ns()
        stamp = iso(start)
        run_id = (f"{stamp[:4]}{stamp[5:7]}{stamp[8:10]}T{stamp[11:13]}{stamp[14:16]}"
                  f"{stamp[17:19]}{stamp[20:23]}Z-{draw(40):010x}")
        span = tracer.start_span("deploy:k8s", start_time=start, attributes={
            "otel_runs.run.id": run_id, "otel_runs.run.type": "deploy",
            "otel_runs.run.subtype": "deploy:k8s", "cicd.pipeline.name": "deploy:k8s",
            "cicd.pipeline.run.id": run_id})
        ids = span.get_span_context()
        run = {"run_id": run_id, "type": "deploy", "subtype": "deploy:k8s", "status": "running",
               "summary": "", "started_at": stamp, "ended_at": None, "duration_ms": None,
               "metadata": {}, "trace_id": format(ids.trace_id, "032x"),
               "span_id": format(ids.span_id, "016x"), "parent_run_id": None,
               "service": "bench", "events": []}
        os.write(fd, f'{{"e":"start","run":{encode(run)}}}\n'.encode())
        token = otel_context.attach(set_span_in_context(span))
        try:
            response = _view()
        finally:
            otel_context.detach(token)
        response.headers["X-Run-Id"] = run_id
        raw = response.response[0]
        body, _ = scan(raw.decode(), 0)
        summary = body.get("summary") or ""
        response.set_data(raw[:-2] + b',"run_id":"' + run_id.encode() + b'"}\n')
        span.set_attributes({"otel_runs.run.status": "ok", "cicd.pipeline.result": "success",
                             "otel_runs.run.summary": summary})
        end = time.time_ns()
        run.update(status="ok", summary=summary, ended_at=iso(end),
                   duration_ms=round((end - start) / 1e6, 3))
        os.write(fd, f'{{"e":"end","run":{encode(run)},"spans":[]}}\n'.encode())
        span.end(end)
        return response

    return _instrumented("g", view, provider)


def tracked(root: Path, name: str) -> Flask:
    app = Flask(name)
    app.config["PROJECT_ROOT"] = str(root)
    FlaskInstrumentor().instrument_app(app, tracer_provider=otel_runs.configure(root))
    app.add_url_rule("/k8s/apply", "apply", otel_runs.run_tracked("deploy", "deploy:k8s")(_view),
                     methods=["POST"])
    return app


def default_wiring(root: Path) -> Flask:
    from otel_runs.flask import RunTracking

    app = Flask("d")
    app.config["PROJECT_ROOT"] = str(root)
    app.add_url_rule("/k8s/apply", "apply", otel_runs.run_tracked("deploy", "deploy:k8s")(_view),
                     methods=["POST"])
    RunTracking(app)
    return app


def with_metrics(root: Path) -> Flask:
    from otel_runs.flask import RunTracking

    app = Flask("m")
    app.config["PROJECT_ROOT"] = str(root)
    app.config["OTEL_RUNS_METRICS_ENDPOINT"] = "/metrics"
    app.add_url_rule("/k8s/apply", "apply", otel_runs.run_tracked("deploy", "deploy:k8s")(_view),
                     methods=["POST"])
    RunTracking(app)
    return app


def per_request_us(app: Flask, n: int) -> float:
    client = app.test_client()
    start = time.perf_counter()
    for _ in range(n):
        resp = client.post("/k8s/apply")
        assert resp.status_code == 200
    return (time.perf_counter() - start) / n * 1e6


def interleaved(apps: dict[str, Flask], rounds: int, requests: int,
                by_request: bool = False, pairs: tuple[tuple[str, str], ...] = (),
                ) -> tuple[dict[str, float], dict[str, float]]:
    """Warm up, then time every app ``rounds`` times in a shuffled order each round.
    Returns each app's median us/request and its ratio to app ``"a"`` (and, for each
    ``(x, y)`` of ``pairs``, ``ratio["x/y"]``): the median of
    per-round ratios (the apps of one round run within a second, so load changes on
    a shared machine mostly cancel out). ``by_request``: within a round, take turns
    request by request (each request timed alone, a round's figure is the median)
    instead of ``requests`` in a row per app: steadier on a noisy machine, and no
    app runs with caches warmed by a long run of its own requests."""
    for app in apps.values():
        per_request_us(app, 50)
    samples: dict[str, list[float]] = {name: [] for name in apps}
    order = list(apps)
    shuffle = random.Random(0).shuffle
    clients = {name: app.test_client() for name, app in apps.items()}
    clock = time.perf_counter
    for _ in range(rounds):
        shuffle(order)  # no case always runs first or right after another one
        if not by_request:
            for name in order:
                samples[name].append(per_request_us(apps[name], requests))
            continue
        times: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(requests):
            shuffle(order)
            for name in order:
                start = clock()
                resp = clients[name].post("/k8s/apply")
                times[name].append((clock() - start) * 1e6)
                assert resp.status_code == 200
        for name in apps:
            samples[name].append(statistics.median(times[name]))
    med = {name: statistics.median(values) for name, values in samples.items()}
    ratio = {name: statistics.median(x / a for x, a in zip(values, samples["a"], strict=True))
             for name, values in samples.items()}
    for x, y in pairs:  # "x/y": the median of per-round ratios of two other cases
        if x in samples and y in samples:
            ratio[f"{x}/{y}"] = statistics.median(
                p / q for p, q in zip(samples[x], samples[y], strict=True))
    return med, ratio


def timing_arguments(description: str, rounds: int) -> argparse.Namespace:
    """The command line of a timing bench: ``--rounds``, ``--requests``, ``--by-request``
    (the arguments of :func:`interleaved`); also quiets logging."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--by-request", action="store_true",
                        help="take turns request by request within a round (see interleaved())")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    return args


def main() -> None:
    args = timing_arguments(__doc__.splitlines()[0], rounds=60)

    tmp = Path(tempfile.mkdtemp(prefix="otel-runs-overhead-"))
    no_ledger_root = tmp / "not-a-repo"  # no git repository here: case b has no ledger
    no_ledger_root.mkdir()
    otel_runs.configure(no_ledger_root, ledger=False, processors=[NothingProcessor(no_ledger_root)])
    cases: dict[str, Callable[[], Flask]] = {"a": instrumented_only,
                                             "b": lambda: tracked(no_ledger_root, "b")}
    try:
        importlib.import_module("otel_runs.exporters.ledger")

        repo = tmp / "repo"
        repo.mkdir()
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        otel_runs.configure(repo, ledger=True)
        cases["c"] = lambda: tracked(repo, "c")
        wired = tmp / "wired"
        wired.mkdir()
        subprocess.run(["git", "init", "-q", str(wired)], check=True)
        cases["d"] = lambda: default_wiring(wired)
        try:
            importlib.import_module("opentelemetry.exporter.prometheus")
            metered = tmp / "metered"
            metered.mkdir()
            subprocess.run(["git", "init", "-q", str(metered)], check=True)
            cases["m"] = lambda: with_metrics(metered)
        except ImportError:
            print("the 'prometheus' extra is not installed: case m skipped")
    except ImportError:
        print("ledger not available: case c skipped")
    cases["s"] = nested_span
    cases["f"] = lambda: floor(tmp / "floor.journal")
    cases["g"] = lambda: by_hand(tmp / "by-hand.journal")
    apps = {name: make() for name, make in cases.items()}

    med, ratio = interleaved(apps, args.rounds, args.requests, args.by_request,
                             pairs=(("m", "d"), ("d", "f"), ("d", "g")))
    otel_runs.flush()
    labels = {"a": "FlaskInstrumentor only", "b": "+ @run_tracked, no-op RunProcessor",
              "c": "+ git ledger (journal on request path)",
              "d": "RunTracking(app): ledger + live feed",
              "m": "d + run metrics (Prometheus reader)",
              "s": "a + one plain nested span (for scale)",
              "f": "a + a run's span and two appends (floor)",
              "g": "a + a run written by hand in the view"}
    for name, value in med.items():
        print(f"{name}  {labels[name]:<42} median {value:8.1f} us/request")
    print(f"ratio b/a = {ratio['b']:.2f}  (goal <= 1.20)")
    if "c" in ratio:
        print(f"ratio c/a = {ratio['c']:.2f}  (goal <= 1.25)")
    if "d" in ratio:
        print(f"ratio d/a = {ratio['d']:.2f}  (goal <= 1.35)")
    if "m" in ratio:
        print(f"ratio m/d = {ratio['m/d']:.3f}  (goal <= 1.05; m/a = {ratio['m']:.2f})")
    print(f"ratio s/a = {ratio['s']:.2f}  (for scale: one plain span, no otel-runs)")
    print(f"ratio f/a = {ratio['f']:.2f}  (for scale: the floor of a journaled span, no otel-runs;"
          f" d/f = {ratio['d/f']:.2f})" if "d/f" in ratio else
          f"ratio f/a = {ratio['f']:.2f}  (for scale: the floor of a journaled span, no otel-runs)")
    if "d/g" in ratio:
        print(f"ratio g/a = {ratio['g']:.2f}  (for scale: a run written by hand, no otel-runs;"
              f" d/g = {ratio['d/g']:.2f})")
    otel_runs.shutdown()


if __name__ == "__main__":
    sys.exit(main())
