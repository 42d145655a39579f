"""Where case b of ``bench/overhead.py`` spends its time: the same request built up step by step.

    python bench/overhead_steps.py [--rounds 40] [--requests 100] [--by-request]

A diagnostic, not a goal: it reaches into otel-runs' internals (run ids, the open-run
entry, the JSON helpers), so it may need updating when they change. All apps run in one
process, interleaved round by round, through the Flask test client; ratios are medians
of per-round ratios to case a:
  a            FlaskInstrumentor only (as in overhead.py)
  b            ``@run_tracked`` and a no-op RunProcessor (as in overhead.py)
  sdk          the SDK work of a run done by hand: a span with the run's attributes,
               started and ended through otel-runs' provider (its processors see a
               plain span), the run's context (span, run id, W3C Baggage) made current
  +id          and a real run id
  +id+json     and the JSON body read for ``ok``/summary, ``run_id`` spliced in
  +id+json+run and the open-run entry, so the processors hand ``Run``s to their hooks
b minus the last one is the decorator's and ``RunScope``'s own bookkeeping.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, current_app
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.trace import SpanKind

import otel_runs
from otel_runs._context import STARTING_RUN_KEY, run_context
from otel_runs._decorator import _json_object, _with_run_id
from otel_runs._ids import now_run_id
from otel_runs._open_runs import OpenRun, run_closed, run_opening

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402  (the cases a and b, and the no-op processor)


def _by_hand(tracer: trace.Tracer, root: str, *, run_id: bool, json_body: bool,
             runs: bool) -> Callable[[], Any]:
    def view() -> Any:
        ctx = otel_context.get_current()
        rid, ns = now_run_id() if run_id else ("20261127T101500123Z-3fa9c2d1e5", time.time_ns())
        start_ctx, entry = ctx, None
        if runs:
            entry = OpenRun(root, rid, "deploy", "deploy:k8s", "", ns, "{}", None)
            run_opening(entry)
            start_ctx = otel_context.Context({**ctx, STARTING_RUN_KEY: entry})
        span = tracer.start_span("deploy:k8s", context=start_ctx, kind=SpanKind.INTERNAL,
                                 start_time=ns, attributes={"run.id": rid, "run.type": "deploy",
                                                            "run.subtype": "deploy:k8s"})
        run_ctx = run_context(rid, span, ctx)
        token = otel_context.attach(run_ctx)
        try:
            response = current_app.make_response(overhead._view())
        finally:
            otel_context.detach(token)
        response.headers["X-Run-Id"] = rid
        summary = "applied 3 objects"
        if json_body:
            raw = response.response[0]
            body = _json_object(current_app, raw) or {}
            summary = str(body.get("summary", ""))
            response.set_data(_with_run_id(raw, rid))
        span.set_attributes({"run.status": "ok", "run.summary": summary})
        end = time.time_ns()
        if entry is not None:
            entry.ending("ok", summary, None, end)
        span.end(end)
        if entry is not None:
            run_closed(entry)
        return response

    return view


def main() -> None:
    args = overhead.timing_arguments(__doc__.splitlines()[0], rounds=40)

    root = Path(tempfile.mkdtemp(prefix="otel-runs-steps-")) / "not-a-repo"
    root.mkdir()
    provider = otel_runs.configure(root, ledger=False,
                                   processors=[overhead.NothingProcessor(root)])
    tracer = provider.get_tracer("bench")
    resolved = str(root.resolve())

    def by_hand(name: str, **steps: bool) -> Flask:
        app = Flask(name)
        app.add_url_rule("/k8s/apply", "apply", _by_hand(tracer, resolved, **steps),
                         methods=["POST"])
        FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
        return app

    apps = {
        "a": overhead.instrumented_only(),
        "b": overhead.tracked(root, "b"),
        "sdk": by_hand("sdk", run_id=False, json_body=False, runs=False),
        "+id": by_hand("id", run_id=True, json_body=False, runs=False),
        "+id+json": by_hand("json", run_id=True, json_body=True, runs=False),
        "+id+json+run": by_hand("run", run_id=True, json_body=True, runs=True),
    }
    med, ratio = overhead.interleaved(apps, args.rounds, args.requests, args.by_request)
    for name in apps:
        print(f"{name:<14} median {med[name]:8.1f} us/request   ratio to a {ratio[name]:.3f}")
    otel_runs.shutdown()


if __name__ == "__main__":
    main()
