"""A control plane for the runs page tests: runs with child spans, failures, parent and
child runs, many quick runs, and run output (run.log and logging, through the real endpoint).

``python tests/runs_ui_app.py <port> <project root> <control dir>``; a run of
``/work/<name>`` waits for ``<control dir>/release-<name>``."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from opentelemetry import trace
from werkzeug.serving import make_server

import otel_runs
from otel_runs import api
from otel_runs.flask import RunTracking

port, root, control = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
app = Flask("runs-ui-test")
app.config["PROJECT_ROOT"] = root
app.config["OTEL_RUNS_SSE_HEARTBEAT"] = 1.0
tracer = trace.get_tracer("runs-ui-test")
logging.getLogger("pages").setLevel(logging.INFO)


def _say(text: str, stream: str = "out", **extra: Any) -> None:
    """A line of the current run's output (the real capture: run.log, or logging)."""
    if stream == "log":
        logging.getLogger(extra.get("logger", "pages")).info(text)
    else:
        otel_runs.current_run().log(text, stream=stream)


@app.post("/work/<name>")
@otel_runs.run_tracked("build", "build:docs")
def work(name: str) -> Any:
    """A build with nested child spans and output; waits for its release file."""
    run = otel_runs.current_run()
    run.metadata["segment"] = name
    run.add_event("queued", segment=name)
    _say("\x1b[1mbuilding\x1b[0m " + name)
    with tracer.start_as_current_span("checkout") as span:
        span.set_attribute("git.ref", "main")
        with tracer.start_as_current_span("git fetch"):
            time.sleep(0.02)
    deadline = time.monotonic() + 60
    i = 0
    with tracer.start_as_current_span("render") as span:
        span.set_attribute("pages", 12)
        while not (control / f"release-{name}").exists() and time.monotonic() < deadline:
            i += 1
            if i % 10 == 0:
                _say(f"\x1b[32mrendered\x1b[0m page {i // 10}")
            if name == "live" and i == 40:  # a span ending while the run runs on
                with tracer.start_as_current_span("prefetch"):
                    time.sleep(0.01)
            time.sleep(0.02)
    with tracer.start_as_current_span("publish") as span:
        _say("\x1b[33mwarning:\x1b[0m 1 broken link", "err")
        _say("published", "log", level="INFO", logger="pages")
        span.set_status(trace.Status(trace.StatusCode.ERROR, "cdn slow"))
    run.add_event("published")
    return {"ok": True, "summary": f"Built {name}: 12 pages"}


@otel_runs.run_tracked("test", "test:unit")
def _child_run(i: int) -> dict[str, Any]:
    time.sleep(0.01)
    return {"ok": True, "summary": f"shard {i} passed"}


@app.post("/ci")
@otel_runs.run_tracked("ci", "ci:pipeline")
def ci() -> Any:
    """A parent run with two child runs."""
    for i in range(2):
        _child_run(i)
    return {"ok": True, "summary": "pipeline green"}


@app.post("/fail")
@otel_runs.run_tracked("deploy", "deploy:k8s")
def fail() -> Any:
    """Fails with a re-raised exception (a stack trace)."""
    def connect() -> None:
        raise ConnectionError("cluster unreachable: dial tcp 10.0.0.1:6443")
    try:
        connect()
    except ConnectionError as exc:
        raise RuntimeError("rollout aborted") from exc


@otel_runs.run_tracked("scan", "scan:deps")
def _quick(i: int, summary: str) -> dict[str, Any]:
    time.sleep((i % 5) * 0.002)
    return {"ok": i % 7 != 3, "summary": summary}


@app.post("/seed/<int:count>")
def seed(count: int) -> Any:
    """``count`` quick runs (untracked itself), the oldest first."""
    long = request.args.get("long") == "1"
    for i in range(min(count, 500)):
        text = f"scanned {i} packages" if not long else ("very long summary " * 60).strip()
        _quick(i, text)
    return jsonify({"ok": True})


RunTracking(app)
api.register(app, app.extensions["otel_runs"])
make_server("127.0.0.1", port, app, threaded=True).serve_forever()
