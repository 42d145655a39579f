"""Everything bounded: each oversize input is stored within the limits (read back from
the ledger branch and the API) with a marker saying what was dropped; the live feed's
replay buffer is bounded by bytes; big runs through a real app do not grow the server."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import git
from flask import Flask
from opentelemetry import trace

import otel_runs
from otel_runs import redaction as R
from otel_runs.flask import RunTracking
from otel_runs.ledger import ledger_for
from otel_runs.live import RESET_EVENT, EventHub, get_hub

#: Slack for a run's fixed fields (ids, times, keys) and JSON punctuation.
RUN_SLACK = 16_384
MB = 1024 * 1024


def _app(root: Path) -> Flask:
    app = Flask(f"limits-{root.name}")
    app.config["PROJECT_ROOT"] = str(root)
    RunTracking(app)
    return app


def _stored_sizes(repo: Path, run_id: str) -> dict[str, int]:
    """Bytes of each file the ledger branch holds for the run (``run.json``, ``spans.jsonl``)."""
    out = git(repo, "ls-tree", "-r", "-l", "scp-ledger")
    sizes = {}
    for line in out.splitlines():
        meta, path = line.split("\t", 1)
        if f"/{run_id}/" in path:
            sizes[path.rsplit("/", 1)[1]] = int(meta.split()[3])
    return sizes


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        value = {"down": value}
    return value


def _child_span(attributes: dict[str, Any], name: str = "child") -> None:
    with trace.get_tracer("test.limits").start_as_current_span(name, attributes=attributes):
        pass


def _check_metadata_key(run: dict[str, Any], spans: list[Any]) -> None:
    (key,) = run["metadata"]
    assert len(key) < R.MAX_KEY_CHARS + 64 and key.endswith("[truncated 9999744 chars]")


def _check_event_name(run: dict[str, Any], spans: list[Any]) -> None:
    (event,) = run["events"]
    assert len(event["name"]) < R.MAX_NAME_CHARS + 64 and "[truncated 9999744 chars]" in event["name"]


def _check_event_key(run: dict[str, Any], spans: list[Any]) -> None:
    (key,) = run["events"][0]["attributes"]
    assert len(key) < R.MAX_KEY_CHARS + 64 and key.endswith("[truncated 4999744 chars]")


def _check_list(run: dict[str, Any], spans: list[Any]) -> None:
    items = run["metadata"]["items"]
    assert len(items) == R.MAX_ITEMS + 1 and items[-1] == (
        "…[999000 more items dropped (limit 1000 items)]")


def _check_dict(run: dict[str, Any], spans: list[Any]) -> None:
    keys = run["metadata"]["map"]
    assert len(keys) == R.MAX_ITEMS + 1
    assert keys[R.TRUNCATED_KEY] == "199000 more keys dropped (limit 1000 keys)"


def _check_value(run: dict[str, Any], spans: list[Any]) -> None:
    assert run["metadata"]["log"].endswith("[truncated 9995904 chars]")


def _check_deep(run: dict[str, Any], spans: list[Any]) -> None:
    assert _depth(run["metadata"]) <= R.MAX_DEPTH + 1
    assert "{...}" in json.dumps(run["metadata"])  # the rest as a short repr


def _check_total(run: dict[str, Any], spans: list[Any]) -> None:
    meta = run["metadata"]
    assert 40 < len(meta) < 500 and "over the" not in json.dumps(meta)[:100]
    assert "-byte limit" in meta[R.TRUNCATED_KEY] and "more keys dropped" in meta[R.TRUNCATED_KEY]


def _check_events(run: dict[str, Any], spans: list[Any]) -> None:
    events = run["events"]
    assert len(events) == R.MAX_EVENTS - 2  # kept + the marker (no spans dropped, no exception)
    marker = events[-1]
    assert marker["name"] == R.EVENTS_DROPPED
    assert marker["attributes"]["dropped"] == 100_000 - (R.MAX_EVENTS - 3)
    assert marker["attributes"]["message"].startswith(f"{100_000 - (R.MAX_EVENTS - 3)} events dropped")


def _check_raw_events(run: dict[str, Any], spans: list[Any]) -> None:
    events = run["events"]
    assert 10 < len(events) < 100
    assert all(len(e["attributes"]["blob"]) < R.MAX_VALUE_CHARS + 64 for e in events[:-1])
    assert events[-1]["name"] == R.EVENTS_DROPPED
    assert events[-1]["attributes"]["dropped"] == 100 - (len(events) - 1)


def _check_span_attribute(run: dict[str, Any], spans: list[Any]) -> None:
    (span,) = spans
    assert span["attributes"]["blob"].endswith("[truncated 9995904 chars]")


def _check_span_count(run: dict[str, Any], spans: list[Any]) -> None:
    assert len(spans[0]["attributes"]) == R.MAX_SPAN_ATTRIBUTES + 1  # + the dropped count
    assert spans[0]["attributes"]["otel_runs.attributes_dropped"] >= 72


def _check_span_bytes(run: dict[str, Any], spans: list[Any]) -> None:
    assert 1 <= len(spans) < 40
    (marker,) = [e for e in run["events"] if e["name"] == R.SPANS_DROPPED]
    assert marker["attributes"]["dropped"] == 40 - len(spans)


CASES: dict[str, tuple[Callable[[Any], None], Callable[[dict[str, Any], list[Any]], None]]] = {
    "10 MB metadata key": (lambda run: run.metadata.update({"k" * 10_000_000: 1}),
                           _check_metadata_key),
    "10 MB event name": (lambda run: run.add_event("e" * 10_000_000), _check_event_name),
    "5 MB event attribute key": (lambda run: run.add_event("e", **{"a" * 5_000_000: 1}),
                                 _check_event_key),
    "a list of 1M strings": (lambda run: run.metadata.update(items=["x"] * 1_000_000), _check_list),
    "a dict of 200k keys": (lambda run: run.metadata.update(map={f"k{i}": i for i in range(200_000)}),
                            _check_dict),
    "10 MB metadata value": (lambda run: run.metadata.update(log="x" * 10_000_000), _check_value),
    "nested 50 deep": (lambda run: run.metadata.update(deep=_nested(50)), _check_deep),
    "2 MB of metadata": (lambda run: run.metadata.update({f"k{i}": "y" * 4000 for i in range(500)}),
                         _check_total),
    "100k events": (lambda run: [run.add_event("tick", i=i) for i in range(100_000)], _check_events),
    "100 span events of 100 KB, past add_event": (
        lambda run: [run.span.add_event("raw", {"blob": "r" * 100_000}) for _ in range(100)],
        _check_raw_events),
    "10 MB child span attribute": (lambda run: _child_span({"blob": "x" * 10_000_000}),
                                   _check_span_attribute),
    "200 child span attributes": (lambda run: _child_span({f"a{i}": i for i in range(200)}),
                                  _check_span_count),
    "40 child spans of 256 KB": (lambda run: [_child_span({f"a{i}": "z" * 4000 for i in range(64)})
                                              for _ in range(40)], _check_span_bytes),
}


@pytest.mark.parametrize("case", list(CASES))
def test_oversize_input_is_stored_within_the_limits(git_repo: Path, case: str) -> None:
    body, check = CASES[case]
    app = _app(git_repo)
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
        body(run)
    assert otel_runs.flush()
    resp = app.test_client().get(f"/api/runs/{run.run_id}")
    assert resp.status_code == 200, resp.data[:300]
    got = resp.get_json()
    assert len(json.dumps(got["run"])) <= R.MAX_RUN_BYTES + RUN_SLACK
    assert len(json.dumps(got["spans"])) <= R.MAX_SPANS_BYTES + RUN_SLACK
    check(got["run"], got["spans"])
    sizes = _stored_sizes(git_repo, run.run_id)
    assert sizes["run.json"] <= R.MAX_RUN_BYTES + RUN_SLACK
    assert sizes.get("spans.jsonl", 0) <= R.MAX_SPANS_BYTES * 1.25
    stored = ledger_for(git_repo).get(run.run_id)
    assert stored is not None and stored.to_dict()["metadata"] == got["run"]["metadata"]


def test_a_huge_summary_exception_and_stack_trace_are_bounded(git_repo: Path) -> None:
    """... and kept when the run's events are over their limits."""
    app = _app(git_repo)

    def recurse(n: int) -> None:
        if n == 0:
            raise ValueError("m" * 10_000_000)
        recurse(n - 1)

    with pytest.raises(ValueError):
        with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
            for _ in range(200):
                run.add_event("log", line="l" * 4_000)
            recurse(400)
    assert otel_runs.flush()
    got = app.test_client().get(f"/api/runs/{run.run_id}").get_json()["run"]
    assert len(got["summary"]) < R.MAX_SUMMARY_CHARS + 64 and "truncated" in got["summary"]
    assert [e["name"] for e in got["events"][-2:]] == [R.EVENTS_DROPPED, "exception"]
    exc = got["events"][-1]
    assert len(exc["attributes"]["exception.message"]) < R.MAX_VALUE_CHARS + 64
    stack = exc["attributes"]["exception.stacktrace"]
    assert stack.startswith("…[truncated ") and len(stack) < R.MAX_STACKTRACE_CHARS + 64
    assert _stored_sizes(git_repo, run.run_id)["run.json"] <= R.MAX_RUN_BYTES + RUN_SLACK


# -- the live feed's replay buffer ------------------------------------------------------------

def test_the_replay_buffer_is_bounded_by_bytes() -> None:
    hub = EventHub(buffer_size=1000, client_queue=10, max_bytes=100_000)
    first = hub.publish("run:started", {"blob": "a" * 10_000})
    ids = [hub.publish("run:started", {"blob": "b" * 10_000}) for _ in range(99)]
    assert hub.buffered_bytes <= hub.max_bytes and 3 <= len(hub._buffer) < 10
    (reset,) = hub.subscribe(first).next_batch(0.1)  # evicted: the client must reload
    assert reset.type == RESET_EVENT
    recent = hub.subscribe(ids[-3])
    assert [e.id for e in recent.next_batch(0.1)] == ids[-2:]
    big = hub.publish("run:completed", {"blob": "c" * 500_000})  # alone over the bound: kept
    assert [e.id for e in hub.subscribe(ids[-1]).next_batch(0.1)] == [big]
    assert len(hub._buffer) == 1


def test_the_buffer_bound_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert EventHub().max_bytes == 8 * MB
    monkeypatch.setenv("OTEL_RUNS_SSE_BUFFER_BYTES", "1048576")
    assert EventHub().max_bytes == MB


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_big_runs_through_a_real_app_do_not_grow_the_server(git_repo: Path) -> None:
    """40 runs of 2,500 x 4 KB metadata strings (10 MB each) through a real Flask app with
    RunTracking: ledger, live feed and API all on. Before the limits: +1 GB of RSS."""
    blobs = {f"part{i:04d}": f"{i:05d}" + "x" * 4091 for i in range(2_500)}
    app = Flask("big-runs")
    app.config["PROJECT_ROOT"] = str(git_repo)

    @app.post("/deploy")
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def deploy() -> Any:
        run = otel_runs.current_run()
        assert run is not None
        run.metadata.update(blobs)
        return {"ok": True, "summary": "deployed"}

    RunTracking(app)
    client = app.test_client()
    for _ in range(3):  # warm: first-run work is not what is measured
        assert client.post("/deploy").status_code == 200
    assert otel_runs.flush()
    gc.collect()
    before = _rss()
    ids = [client.post("/deploy").headers["X-Run-Id"] for _ in range(40)]
    assert otel_runs.flush()
    gc.collect()
    growth = _rss() - before
    assert growth <= 100 * MB, f"RSS grew by {growth / MB:.0f} MB"
    hub = get_hub(app)
    assert hub.buffered_bytes <= hub.max_bytes  # type: ignore[attr-defined]
    run = client.get(f"/api/runs/{ids[-1]}").get_json()["run"]
    assert len(json.dumps(run)) <= R.MAX_RUN_BYTES + RUN_SLACK
    assert "more keys dropped" in run["metadata"][R.TRUNCATED_KEY]


def test_a_page_of_big_runs_is_bounded_in_bytes(git_repo: Path) -> None:
    """Each run is within its own bound; the answer of /api/runs/recent is too (4 MiB), and
    says when it stopped early."""
    from otel_runs import api

    otel_runs.configure(git_repo)
    big = {f"k{i}": "x" * 4000 for i in range(60)}  # ~240 KB of metadata, under the run bound
    for _ in range(24):
        with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s", **big):
            pass
    app = Flask("bounded")
    app.config["PROJECT_ROOT"] = str(git_repo)
    RunTracking(app)
    resp = app.test_client().get("/api/runs/recent?limit=24")
    assert resp.status_code == 200
    body = resp.get_json()
    assert len(resp.data) <= api.MAX_RECENT_BYTES + 300_000
    assert body["truncated"] is True and 0 < len(body["runs"]) < 24
    small = app.test_client().get("/api/runs/recent?limit=3").get_json()
    assert small["truncated"] is False and len(small["runs"]) == 3
