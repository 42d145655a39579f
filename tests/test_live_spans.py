"""A long run's child spans are journaled while it runs: another process reads its
timeline so far (the ledger and ``/api/runs/<id>``), before the run ends; at the end
each span is there once; a short run journals nothing more. Real child process, real
git repository, real Flask app."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import wait_until
from flask import Flask

import otel_runs
from otel_runs import api
from otel_runs.flask import RunTracking
from otel_runs.ledger import Ledger, ledger_for

LONG_RUN = """
import sys, time
from opentelemetry import trace
import otel_runs
root = sys.argv[1]
otel_runs.configure(root)
tracer = trace.get_tracer("steps")
with otel_runs.tracked_run(root, "deploy", "deploy:k8s", summary="rolling out") as run:
    print(run.run_id, flush=True)
    for i in range(4):
        with tracer.start_as_current_span(f"step {i}"):
            time.sleep(0.3)
        run.add_event("step done", step=i, password="hunter2")
    sys.stdin.readline()  # until the test has looked
    with tracer.start_as_current_span("last step"):
        pass
otel_runs.shutdown()
"""


def span_names(spans: list[dict]) -> list[str]:
    return [s["name"] for s in spans]


@contextmanager
def writer(code: str, root: Path) -> Iterator[tuple[str, Ledger]]:
    """A child process running ``code`` (it prints its run id, then waits for a line on
    stdin before its run ends) and a reader of the ledger in this process: yields (run
    id, reader); afterwards lets the run end and checks the child exited cleanly."""
    child = subprocess.Popen([sys.executable, "-c", code, str(root)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    reader = Ledger(root)
    try:
        assert child.stdin is not None and child.stdout is not None
        yield child.stdout.readline().strip(), reader
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.wait(60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        reader.close()


def test_another_process_sees_a_running_runs_child_spans_before_it_ends(git_repo: Path) -> None:
    app = Flask("live-spans")
    app.config["PROJECT_ROOT"] = str(git_repo)
    RunTracking(app)
    api.register(app, app.extensions["otel_runs"])
    client = app.test_client()
    with writer(LONG_RUN, git_repo) as (run_id, reader):
        # The spans that ended so far, within a look (every 0.5 s) of the run's thread.
        spans = wait_until(lambda: (lambda got: got if len(got) == 4 else None)(
            reader.spans(run_id)), timeout=30)
        assert sorted(span_names(spans)) == [f"step {i}" for i in range(4)]
        run = wait_until(lambda: (lambda r: r if r is not None and len(r.events) == 4 else None)(
            reader.get(run_id)), timeout=30)  # and its events so far (scrubbed)
        assert run.status == "running"
        assert [e["attributes"]["step"] for e in run.events] == [0, 1, 2, 3]
        assert all(e["attributes"]["password"] == "***" for e in run.events)
        body = client.get(f"/api/runs/{run_id}").get_json()
        assert body["run"]["status"] == "running" and len(body["run"]["events"]) == 4
        assert sorted(span_names(body["spans"])) == [f"step {i}" for i in range(4)]
        journal = b"".join(p.read_bytes() for p in Path(reader.journal_dir).glob("*.jsonl"))
        assert b"hunter2" not in journal
    ledger = ledger_for(git_repo)
    assert ledger.flush(60)
    done = ledger.spans(run_id)
    assert sorted(span_names(done)) == sorted([f"step {i}" for i in range(4)] + ["last step"])
    assert client.get(f"/api/runs/{run_id}").get_json()["run"]["status"] == "ok"


EARLY_SPAN = """
import sys, time
from opentelemetry import trace
import otel_runs
root = sys.argv[1]
otel_runs.configure(root)
with otel_runs.tracked_run(root, "deploy", "deploy:k8s") as run:
    with trace.get_tracer("early").start_as_current_span("resolve"):
        pass
    print(run.run_id, flush=True)  # nothing more ends until the test has looked
    sys.stdin.readline()
otel_runs.shutdown()
"""


def test_a_span_that_ended_early_in_a_long_run_shows_while_it_runs(git_repo: Path) -> None:
    with writer(EARLY_SPAN, git_repo) as (run_id, reader):
        spans = wait_until(lambda: reader.spans(run_id) or None, timeout=30)
        assert span_names(spans) == ["resolve"]
        run = reader.get(run_id)
        assert run is not None and run.status == "running" and run.events == []


def test_a_short_run_journals_no_spans_while_it_runs(git_repo: Path) -> None:
    from opentelemetry import trace

    otel_runs.configure(git_repo)
    tracer = trace.get_tracer("short")
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
        for i in range(3):
            with tracer.start_as_current_span(f"quick {i}"):
                pass
    ledger = ledger_for(git_repo)
    journal = b"".join(p.read_bytes() for p in Path(ledger.journal_dir).glob("*.jsonl"))
    assert b'"lines":[],"spans"' not in journal
    assert ledger.flush(30)
    assert sorted(span_names(ledger.spans(run.run_id))) == ["quick 0", "quick 1", "quick 2"]


FORKED = """
import os, sys, time
from opentelemetry import trace
import otel_runs
root = sys.argv[1]
otel_runs.configure(root)
with otel_runs.tracked_run(root, "deploy", "deploy:k8s"):  # the parent's thread starts
    time.sleep(0.6)
pid = os.fork()
if pid == 0:
    with otel_runs.tracked_run(root, "deploy", "deploy:k8s") as run:
        with trace.get_tracer("forked").start_as_current_span("in the child"):
            pass
        print(run.run_id, flush=True)
        sys.stdin.readline()
    otel_runs.shutdown()
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_forked_child_journals_its_long_runs_spans_too(git_repo: Path) -> None:
    with writer(FORKED, git_repo) as (run_id, reader):
        spans = wait_until(lambda: reader.spans(run_id) or None, timeout=30)
        assert span_names(spans) == ["in the child"]
