"""Run output live: lines reach ``/api/runs/<id>/output/stream`` and ``/api/events`` while
the command still runs (a real child process that waits for the test before it exits), and
a SIGKILLed process's output up to the kill is kept with its interrupted run."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from flask import Flask

import otel_runs
from otel_runs import api
from otel_runs.flask import RunTracking
from otel_runs.ledger import Ledger, ledger_for

#: The child prints, then waits (bounded) for the file the test creates once it has seen
#: the first lines: they cannot have come from a finished run.
CHILD = """
import os, sys, time
print("first line", flush=True)
print("to stderr", file=sys.stderr, flush=True)
deadline = time.monotonic() + 30
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.02)
print("after the go", flush=True)
"""


def make_app(root: Path, go: Path) -> Flask:
    app = Flask(f"live-output-{root.name}")
    app.config["PROJECT_ROOT"] = str(root)

    @app.post("/build")
    @otel_runs.run_tracked("build", "build:docker")
    def build() -> Any:
        result = otel_runs.run_command([sys.executable, "-c", CHILD, str(go)], timeout=60)
        return {"ok": result.returncode == 0, "summary": "built"}

    RunTracking(app)
    api.register(app, app.extensions["otel_runs"])
    return app


def sse(port: int, path: str, headers: dict[str, str] | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()[:300]
    return resp


def events(resp: Any, until: Any, limit: int = 2000) -> list[tuple[str, str | None, Any]]:
    """SSE events (type, id, data) until ``until(events)`` is true (bounded)."""
    got: list[tuple[str, str | None, Any]] = []
    kind, eid, data = None, None, []
    for _ in range(limit * 4):
        raw = resp.readline()
        if not raw:
            break
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("id: "):
            eid = line[4:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and kind is not None:
            got.append((kind, eid, json.loads("\n".join(data))))
            kind, eid, data = None, None, []
            if until(got) or len(got) >= limit:
                break
    return got


def test_lines_stream_live_before_the_command_exits(git_repo: Path, tmp_path: Path,
                                                    live_server: Any) -> None:
    go = tmp_path / "go"
    server = live_server(make_app(git_repo, go))
    feed = sse(server.port, "/api/events")
    responses: list[Any] = []

    def post() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/build")
        responses.append(conn.getresponse())

    poster = threading.Thread(target=post, daemon=True)
    poster.start()

    def running() -> str | None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/api/runs/recent?status=running")
        runs = json.loads(conn.getresponse().read())["runs"]
        return runs[0]["run_id"] if runs else None

    run_id = wait_until(running, timeout=30)
    stream = sse(server.port, f"/api/runs/{run_id}/output/stream")
    first = events(stream, lambda got: sum(len(d.get("lines", [])) for k, _, d in got
                                           if k == "output") >= 2)
    texts = [line["text"] for k, _, d in first if k == "output" for line in d["lines"]]
    assert sorted(texts) == ["first line", "to stderr"]
    assert not go.exists() and poster.is_alive()  # the child is still waiting: live
    go.write_text("go")
    rest = events(stream, lambda got: got[-1][0] == "end")
    assert [line["text"] for k, _, d in rest if k == "output" for line in d["lines"]] == [
        "after the go"]
    assert rest[-1] == ("end", None, {"status": "ok"})
    poster.join(30)
    assert responses and responses[0].status == 200
    # the page's feed carried the same lines as run:output events
    seen = events(feed, lambda got: any(k == "run:completed" for k, _, _ in got))
    fed = [line["text"] for k, _, d in seen if k == "run:output" and d["run_id"] == run_id
           for line in d["lines"]]
    assert sorted(fed) == ["after the go", "first line", "to stderr"]
    # a reconnect after line 1 gets only what came after it
    again = sse(server.port, f"/api/runs/{run_id}/output/stream",
                {"Last-Event-ID": "1"})
    tail = events(again, lambda got: got[-1][0] == "end")
    assert [(line["n"], line["text"]) for k, _, d in tail if k == "output"
            for line in d["lines"]] == [(2, "after the go")]


KILLED_CHILD = """
import sys, time
import otel_runs
root = sys.argv[1]
otel_runs.configure(root)
with otel_runs.tracked_run(root, "deploy", "deploy:k8s", summary="long one") as run:
    print(run.run_id, flush=True)
    for i in range(200):
        run.log(f"progress {i}")
    time.sleep(120)
"""


def test_a_killed_processs_output_is_kept_with_its_interrupted_run(git_repo: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(git_repo)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        run_id = child.stdout.readline().strip()
        reader = Ledger(git_repo)  # another process's running run, from its journal
        try:
            lines = wait_until(lambda: (lambda got: got if got and len(got) == 200 else None)(
                reader.output(run_id)), timeout=30)
            assert [line["text"] for line in lines] == [f"progress {i}" for i in range(200)]
            run = reader.get(run_id)
            assert run is not None and run.status == "running"
        finally:
            reader.close()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    ledger = ledger_for(git_repo)
    assert ledger.flush(60)
    run = ledger.get(run_id)
    assert run is not None and run.status == "interrupted"
    kept = ledger.output(run_id)
    assert [line["text"] for line in kept or []] == [f"progress {i}" for i in range(200)]


@pytest.mark.parametrize("rate_lines", [50_000])
def test_many_lines_are_journaled_in_chunks_not_one_write_per_line(
        git_repo: Path, rate_lines: int) -> None:
    otel_runs.configure(git_repo)
    with otel_runs.tracked_run(git_repo, "test", "test:pytest") as run:
        for i in range(rate_lines):
            run.log(f"line {i}")
        time.sleep(0.3)  # (the flusher's interval: chunks written meanwhile)
        ledger = ledger_for(git_repo)
        journal = b"".join(p.read_bytes() for p in Path(ledger.journal_dir).glob("*.jsonl"))
        chunks = journal.count(b'{"e":"out"')
        assert 0 < chunks <= rate_lines // 100  # (512 lines or 64 KiB a chunk)
    assert ledger.flush(60)
    assert len(ledger.output(run.run_id) or []) > 0


def test_the_journal_views_chunk_index_is_bounded_per_open_run(
        git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tested full: past MAX_OUTPUT_CHUNKS chunks of one open run the view indexes no
    more of them (a running run shows its first chunks); once the run ends, its end record
    holds every line."""
    from otel_runs.ledger import _journal_view

    monkeypatch.setattr(_journal_view, "MAX_OUTPUT_CHUNKS", 3)
    otel_runs.configure(git_repo)
    with otel_runs.tracked_run(git_repo, "test", "test:pytest") as run:
        out = run.output_buffer()
        assert out is not None
        for chunk in range(6):
            run.log(f"chunk {chunk}")
            out.flush()  # one journal record each
        reader = Ledger(git_repo)
        try:
            assert [line["text"] for line in reader.output(run.run_id) or []] == [
                "chunk 0", "chunk 1", "chunk 2"]
        finally:
            reader.close()
    assert [line["text"] for line in ledger_for(git_repo).output(run.run_id) or []] == [
        f"chunk {i}" for i in range(6)]
