"""configure()/RunTracking: providers, sampling, processor isolation, idempotence."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from flask import Flask

import otel_runs
from otel_runs import run_tracked, tracked_run
from otel_runs.exporters import RunProcessor
from otel_runs.flask import RunTracking


def _run_python(code: str, tmp_path: Path, **env: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (a TracerProvider can be set once per
    process) and return the JSON object it prints last."""
    full_env = {**os.environ, "OTEL_RUNS_PROJECT_ROOT": str(tmp_path), "OTEL_RUNS_LEDGER": "0", **env}
    for key in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if key not in env:
            full_env.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


COLLECT = """
    import json
    import otel_runs
    from otel_runs.exporters import RunProcessor
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    class Runs(RunProcessor):
        def __init__(self): self.ended = []
        def on_run_end(self, run): self.ended.append(run)
"""


def test_an_existing_tracer_provider_is_kept(tmp_path: Path) -> None:
    out = _run_python(COLLECT + """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.resources import Resource
    app_exporter = InMemorySpanExporter()
    mine = TracerProvider(resource=Resource.create({"service.name": "control-plane"}))
    mine.add_span_processor(SimpleSpanProcessor(app_exporter))
    trace.set_tracer_provider(mine)
    runs = Runs()
    provider = otel_runs.configure(processors=[runs])
    with otel_runs.tracked_run(None, "deploy", "deploy:k8s") as run:
        with trace.get_tracer("app").start_as_current_span("kubectl apply"):
            pass
    print(json.dumps({
        "same": provider is mine and trace.get_tracer_provider() is mine,
        "app_saw": sorted(s.name for s in app_exporter.get_finished_spans()),
        "runs": [r.run_id for r in runs.ended], "run_id": run.run_id,
        "service": runs.ended[0].service,
    }))
    """, tmp_path)
    assert out["same"] is True
    assert out["app_saw"] == ["deploy:k8s", "kubectl apply"]
    assert out["runs"] == [out["run_id"]]
    assert out["service"] == "control-plane"


def test_run_processors_ahead_of_and_behind_otel_runs_own_see_the_same(tmp_path: Path) -> None:
    """A RunProcessor the application added before configure() runs ahead of
    otel-runs' context processor: it must see runs and the spans inside them as
    one added afterwards does (both ways of finding a span's run)."""
    out = _run_python(COLLECT + """
    from opentelemetry.sdk.trace import TracerProvider
    from otel_runs import _open_runs as _run_processor
    from otel_runs.exporters import run_project_root

    class Seeing(RunProcessor):
        def __init__(self): self.seen = []
        def on_run_start(self, run): self.seen.append(["start", run.subtype])
        def on_run_end(self, run): self.seen.append(["end", run.subtype, run.status])
        def on_run_span_end(self, run_id, span):
            self.seen.append(["span", span.name, run_id, run_project_root(span)])

    provider = TracerProvider()
    ahead = Seeing()
    provider.add_span_processor(ahead)
    trace.set_tracer_provider(provider)
    behind = Seeing()
    otel_runs.configure(processors=[behind])
    tracer = trace.get_tracer("app")
    with otel_runs.tracked_run(None, "deploy", "deploy:k8s") as run:
        with tracer.start_as_current_span("kubectl apply"):
            with tracer.start_as_current_span("http get"):
                pass
    with tracer.start_as_current_span("outside"):
        pass
    print(json.dumps({"ahead": ahead.seen, "behind": behind.seen, "run_id": run.run_id,
                      "left": [len(_run_processor._by_run_id), len(_run_processor._by_span_id),
                               len(_run_processor._child_spans)]}))
    """, tmp_path)
    root = str(tmp_path.resolve())
    expected = [["start", "deploy:k8s"], ["span", "http get", out["run_id"], root],
                ["span", "kubectl apply", out["run_id"], root], ["end", "deploy:k8s", "ok"]]
    assert out["ahead"] == expected
    assert out["behind"] == expected
    assert out["left"] == [0, 0, 0]


def test_a_run_processor_with_its_own_span_hooks_gets_every_span(tmp_path: Path) -> None:
    """otel-runs hands runs to the RunProcessors it is given through its one
    processor on the provider; one that overrides ``on_start``/``on_end`` itself is
    put on the provider instead, so its hooks see every span as the SDK's would."""
    out = _run_python(COLLECT + """
    class OwnHooks(RunProcessor):
        def __init__(self): self.started, self.ended, self.runs = [], [], []
        def on_start(self, span, parent_context=None):
            self.started.append(span.name)
            super().on_start(span, parent_context)
        def on_end(self, span):
            self.ended.append(span.name)
            super().on_end(span)
        def on_run_end(self, run): self.runs.append(run.subtype)

    own, plain = OwnHooks(), Runs()
    otel_runs.configure(processors=[own, plain])
    tracer = trace.get_tracer("app")
    with otel_runs.tracked_run(None, "deploy", "deploy:k8s"):
        with tracer.start_as_current_span("inside"):
            pass
    with tracer.start_as_current_span("outside"):
        pass
    print(json.dumps({"started": own.started, "ended": own.ended, "own_runs": own.runs,
                      "plain_runs": [r.subtype for r in plain.ended]}))
    """, tmp_path)
    assert out["started"] == ["deploy:k8s", "inside", "outside"]
    assert out["ended"] == ["inside", "deploy:k8s", "outside"]
    assert out["own_runs"] == out["plain_runs"] == ["deploy:k8s"]


def test_the_providers_flush_and_shutdown_reach_the_run_processors(tmp_path: Path) -> None:
    """RunProcessors given to configure() sit behind otel-runs' one processor; the
    provider's force_flush()/shutdown() (e.g. at exit) still reach them."""
    out = _run_python(COLLECT + """
    class Flushing(RunProcessor):
        def __init__(self): self.calls = []
        def force_flush(self, timeout_millis=30000):
            self.calls.append("flush")
            return True
        def shutdown(self): self.calls.append("shutdown")

    proc = Flushing()
    provider = otel_runs.configure(processors=[proc])
    flushed = provider.force_flush()
    provider.shutdown()
    print(json.dumps({"calls": proc.calls, "flushed": flushed}))
    """, tmp_path)
    assert out == {"calls": ["flush", "shutdown"], "flushed": True}


def test_a_run_with_an_explicit_root_before_any_configure(tmp_path: Path) -> None:
    out = _run_python("""
    import json, os, otel_runs
    root = os.environ.pop("OTEL_RUNS_PROJECT_ROOT")  # given explicitly, not as the default
    with otel_runs.tracked_run(root, "deploy", "deploy:k8s") as run:
        pass
    print(json.dumps({"run_id": run.run_id}))
    """, tmp_path)
    assert out["run_id"]


def test_sampled_out_trace_still_yields_its_run(tmp_path: Path) -> None:
    out = _run_python(COLLECT + """
    runs = Runs()
    exported = InMemorySpanExporter()
    provider = otel_runs.configure(processors=[runs])
    provider.add_span_processor(SimpleSpanProcessor(exported))
    with otel_runs.tracked_run(None, "deploy", "deploy:k8s") as run:
        with trace.get_tracer("x").start_as_current_span("child"):
            pass
    print(json.dumps({"runs": [r.run_id for r in runs.ended], "run_id": run.run_id,
                      "exported": len(exported.get_finished_spans()),
                      "sampler": provider.sampler.get_description()}))
    """, tmp_path, OTEL_TRACES_SAMPLER="always_off")
    assert out["runs"] == [out["run_id"]]
    assert out["exported"] == 0  # trace exporters still honour sampling
    assert "AlwaysOffSampler" in out["sampler"]


def test_sampled_out_under_an_application_provider(tmp_path: Path) -> None:
    out = _run_python(COLLECT + """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
    trace.set_tracer_provider(TracerProvider(sampler=ALWAYS_OFF))
    runs = Runs()
    otel_runs.configure(processors=[runs])
    with otel_runs.tracked_run(None, "git", "git:push") as run:
        pass
    print(json.dumps({"runs": [r.run_id for r in runs.ended], "run_id": run.run_id}))
    """, tmp_path)
    assert out["runs"] == [out["run_id"]]


def test_a_failing_processor_never_breaks_the_action(collector, caplog) -> None:  # noqa: ANN001
    class Broken(RunProcessor):
        def on_run_start(self, run: Any) -> None:
            raise RuntimeError("disk on fire")

        def on_run_end(self, run: Any) -> None:
            raise RuntimeError("disk on fire")

    otel_runs.configure(processors=[Broken()])
    caplog.set_level(logging.ERROR, logger="otel_runs.exporters")
    for _ in range(50):
        with tracked_run(None, "deploy", "deploy:k8s"):
            pass
    assert len(collector.ended) == 50
    failures = [r for r in caplog.records if "disk on fire" in (r.exc_text or "") or "failed" in r.getMessage()]
    assert 1 <= len(failures) <= 2  # rate-limited: once per hook, not once per run


def test_configure_twice_does_not_duplicate_processors(collector, tmp_path: Path) -> None:  # noqa: ANN001
    otel_runs.configure(tmp_path, ledger=False, processors=[collector])
    otel_runs.configure(tmp_path, ledger=False, processors=[collector])
    with tracked_run(None, "git", "git:commit"):
        pass
    assert len(collector.ended) == 1


def test_flush_and_shutdown_are_idempotent(collector) -> None:  # noqa: ANN001
    assert otel_runs.flush() is True
    assert otel_runs.flush() is True
    otel_runs.shutdown()
    otel_runs.shutdown()
    otel_runs.configure(processors=[collector])  # usable again afterwards
    with tracked_run(None, "git", "git:commit"):
        pass
    assert len(collector.ended) == 1


def test_run_tracking_extension_pattern(collector, tmp_path: Path) -> None:  # noqa: ANN001
    ext = RunTracking(ledger=False)
    apps = []
    for name in ("a", "b"):
        app = Flask(name)
        app.config["PROJECT_ROOT"] = str(tmp_path / name)
        ext.init_app(app)
        apps.append(app)

        @app.post("/go")
        @run_tracked("deploy", "deploy:k8s")
        def go() -> Any:
            return {"ok": True}

    assert apps[0].extensions["otel_runs"] is not apps[1].extensions["otel_runs"]
    assert apps[0].extensions["otel_runs"].project_root == str(tmp_path / "a")
    for app in apps:
        assert app.test_client().post("/go").status_code == 200
    assert len(collector.ended) == 2
    defaults = Flask("c")
    RunTracking(defaults, ledger=False)
    assert defaults.config["PROJECT_ROOT"] == os.environ["OTEL_RUNS_PROJECT_ROOT"]


def test_request_span_is_recorded_by_flask_instrumentation(collector, tmp_path: Path) -> None:  # noqa: ANN001
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exported = InMemorySpanExporter()
    otel_runs.configure(processors=[SimpleSpanProcessor(exported)])
    app = Flask(__name__)
    app.config["PROJECT_ROOT"] = str(tmp_path)
    RunTracking(app, ledger=False)

    @app.post("/k8s/apply")
    @run_tracked("deploy", "deploy:k8s")
    def apply() -> Any:
        return {"ok": True}

    app.test_client().post("/k8s/apply")
    spans = {s.name: s for s in exported.get_finished_spans()}
    assert set(spans) == {"deploy:k8s", "POST /k8s/apply"}
    assert spans["deploy:k8s"].parent.span_id == spans["POST /k8s/apply"].context.span_id


def test_ledger_off_stays_off_until_asked(tmp_path: Path, git_repo: Path) -> None:
    from otel_runs import _setup

    otel_runs.configure(tmp_path, ledger=False)
    otel_runs.configure(git_repo)
    with tracked_run(git_repo, "git", "git:commit"):
        pass
    assert _setup.ledger_processor(git_repo) is None
    otel_runs.configure(git_repo, ledger=True)
    assert _setup.ledger_processor(git_repo) is not None
