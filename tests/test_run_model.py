"""The Run record: ids, dict round trip, building from a span, redaction."""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone

import pytest

from otel_runs import InvalidRunId, Run, new_run_id, tracked_run, validate_run_id
from otel_runs._ids import run_id_time


def test_run_ids_are_unique_sortable_url_safe_and_short() -> None:
    ids = [new_run_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # strictly in creation order within a process, even in a burst
    new_run_id(datetime(2099, 1, 1, tzinfo=timezone.utc))  # an explicit time leaves the order alone
    more = [new_run_id() for _ in range(2000)]
    assert more == sorted(more) and more[0] > ids[-1]
    assert all(re.fullmatch(r"[0-9A-Za-z_-]+", i) for i in ids)
    assert all(len(i) <= 30 for i in ids)
    early = new_run_id(datetime(2026, 1, 1, tzinfo=timezone.utc))
    late = new_run_id(datetime(2026, 1, 1, 0, 0, 0, 1000, tzinfo=timezone.utc))
    assert early < late < ids[0]
    assert run_id_time(late) == datetime(2026, 1, 1, 0, 0, 0, 1000, tzinfo=timezone.utc)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_processes_and_a_seeded_random_never_share_id_sequences() -> None:
    import random

    random.seed(0)  # an application seeding the global generator changes nothing for ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the same ids as the parent would be a collision
        os.close(read)
        os.write(write, " ".join(new_run_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    random.seed(0)
    parent = [new_run_id() for _ in range(50)]
    suffixes = {i.split("-")[1] for i in parent}
    assert len(child) == 50 and not suffixes & {i.split("-")[1] for i in child}


def test_runs_started_in_a_burst_sort_in_start_order(collector) -> None:  # noqa: ANN001
    ids = []
    for _ in range(200):
        with tracked_run(None, "git", "git:commit") as run:
            ids.append(run.run_id)
    assert ids == sorted(ids)
    for run in collector.ended:  # the id's time is the span's start time
        assert run_id_time(run.run_id).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] == run.started_at[:23]


@pytest.mark.parametrize("bad", [
    "", "../../etc/passwd", "20261127T101500123Z-3fa9c2d1e5/../x", "refs/heads/main",
    "20261127T101500123Z-3FA9C2D1E5", "20261127T101500123Z-3fa9c2d1e5\n", None, 42,
    "20261127T101500123Z-3fa9c2d1e5.lock", "x" * 5000,
])
def test_validate_run_id_rejects_anything_else(bad: object) -> None:
    with pytest.raises(InvalidRunId) as err:
        validate_run_id(bad)
    assert isinstance(err.value, ValueError)
    assert len(str(err.value)) < 300


def test_to_dict_from_dict_round_trip_exactly() -> None:
    run = Run(
        run_id=new_run_id(), type="deploy", subtype="deploy:k8s", status="failed",
        summary="nope", started_at="2026-11-27T10:15:00.123456Z",
        ended_at="2026-11-27T10:15:01.000000Z", duration_ms=876.544,
        metadata={"ns": "prod", "n": [1, 2, {"a": None}]}, trace_id="a" * 32,
        span_id="b" * 16, parent_run_id=None, service="svc",
        events=[{"name": "e", "timestamp": "2026-11-27T10:15:00.5Z", "attributes": {"k": 1}}],
    )
    data = run.to_dict()
    assert set(data) == {
        "run_id", "type", "subtype", "status", "summary", "started_at", "ended_at",
        "duration_ms", "metadata", "trace_id", "span_id", "parent_run_id", "service", "events",
    }
    assert Run.from_dict(data) == run
    assert Run.from_dict(data).to_dict() == data


def test_from_dict_rejects_bad_data_and_ignores_unknown_fields(caplog: pytest.LogCaptureFixture) -> None:
    good = Run(run_id=new_run_id(), type="git", subtype="git:push").to_dict()
    assert Run.from_dict({**good, "future_field": 1}).run_id == good["run_id"]
    assert "future_field" in caplog.text
    with pytest.raises(ValueError):
        Run.from_dict({**good, "status": "exploded"})
    with pytest.raises(ValueError):
        Run.from_dict({"type": "git"})
    with pytest.raises(ValueError):
        Run.from_dict([1, 2])  # type: ignore[arg-type]


def test_from_span_fills_every_field(collector) -> None:  # noqa: ANN001
    with tracked_run(None, "deploy", "deploy:k8s", summary="Apply", ns="prod") as run:
        run.add_event("applied", objects=3)
    got = collector.by_id(run.run_id)
    assert got.type == "deploy" and got.subtype == "deploy:k8s"
    assert got.status == "ok" and got.summary == "Apply"
    assert got.metadata == {"ns": "prod"}
    assert re.fullmatch(r"[0-9a-f]{32}", got.trace_id)
    assert re.fullmatch(r"[0-9a-f]{16}", got.span_id)
    assert got.started_at.endswith("Z") and got.ended_at and got.ended_at >= got.started_at
    assert got.duration_ms is not None and got.duration_ms >= 0
    assert got.parent_run_id is None
    assert got.service
    assert [e["name"] for e in got.events] == ["applied"]
    assert got.events[0]["attributes"] == {"objects": 3}
    # the run id's timestamp is the span's start, to the millisecond
    assert run_id_time(got.run_id).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] == got.started_at[:23]
    assert Run.from_dict(got.to_dict()) == got


def test_secrets_never_reach_the_span_and_big_values_are_truncated(collector) -> None:  # noqa: ANN001
    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque>"

    with tracked_run(None, "setup", "setup:vault", vault_passphrase="hunter2",
                     nested={"GitHub-Token": "ghp_x", "ok": 1}, obj=Opaque()) as run:
        run.metadata["api_key"] = "k"
        run.metadata["log"] = "x" * 10_000
        run.add_event("unlocked", password="p", user="me")
        run.summary = "s" * 5000
    got = collector.by_id(run.run_id)
    raw = str(got.to_dict())
    for secret in ("hunter2", "ghp_x", "'k'", "'p'"):
        assert secret not in raw
    assert got.metadata["vault_passphrase"] == "***"
    assert got.metadata["nested"] == {"GitHub-Token": "***", "ok": 1}
    assert got.metadata["api_key"] == "***"
    assert got.metadata["obj"] == "<Opaque>"
    assert got.metadata["log"].endswith("[truncated 5904 chars]")
    assert got.events[0]["attributes"] == {"password": "***", "user": "me"}
    assert len(got.summary) < 1100 and "truncated" in got.summary
    # and not on the raw span attributes either
    for _, span in collector.child_spans:
        assert "hunter2" not in str(span.attributes)


def test_the_run_processors_get_at_end_is_what_the_span_says(tmp_path) -> None:  # noqa: ANN001
    """Processors get the end Run built from the start Run plus what can change (the
    fast path); it must equal a full ``Run.from_span`` of the finished span."""
    import otel_runs
    from otel_runs.exporters import RunProcessor

    class Keeping(RunProcessor):
        def __init__(self) -> None:
            self.pairs: list[tuple[Run, object]] = []
            self.started: dict[str, Run] = {}

        def on_run_start(self, run: Run) -> None:
            self.started[run.run_id] = run

        def on_end(self, span) -> None:  # noqa: ANN001
            self._span = span
            super().on_end(span)

        def on_run_end(self, run: Run) -> None:
            self.pairs.append((run, self._span))

    proc = Keeping()
    otel_runs.configure(tmp_path, ledger=False, processors=[proc])
    with tracked_run(None, "deploy", "deploy:k8s", summary="start", ns="prod", token="x") as outer:
        outer.metadata["replicas"] = 3
        outer.add_event("applied", objects=3)
        with pytest.raises(RuntimeError):
            with tracked_run(None, "test", "test:unit") as inner:
                inner.summary = "unit tests"  # set by the body: kept over the error text
                raise RuntimeError("boom")
        outer.status = "cancelled"
    with tracked_run(None, "git", "git:push"):
        pass
    assert len(proc.pairs) == 3
    for run, span in proc.pairs:
        full = Run.from_span(span)  # type: ignore[arg-type]
        assert run.to_dict() == full.to_dict()
        started = proc.started[run.run_id]
        assert started.status == "running" and started.ended_at is None  # not mutated
    inner_run, outer_run = proc.pairs[0][0], proc.pairs[1][0]
    assert inner_run.status == "failed" and inner_run.parent_run_id == outer_run.run_id
    assert inner_run.summary == "unit tests"
    assert outer_run.metadata == {"ns": "prod", "token": "***", "replicas": 3}
    assert outer_run.status == "cancelled" and [e["name"] for e in outer_run.events] == ["applied"]


def test_to_dict_is_asdict_in_field_order_and_a_deep_copy() -> None:
    import dataclasses

    run = Run(run_id=new_run_id(), type="deploy", subtype="deploy:k8s",
              metadata={"a": {"b": [1, {"c": 2}]}}, events=[{"name": "e", "attributes": {"k": [1]}}])
    data = run.to_dict()
    assert list(data) == [f.name for f in dataclasses.fields(Run)]
    assert data == dataclasses.asdict(run)
    data["metadata"]["a"]["b"].append(3)
    data["events"][0]["attributes"]["k"].append(2)
    assert run.metadata == {"a": {"b": [1, {"c": 2}]}} and run.events[0]["attributes"] == {"k": [1]}


def test_iso_times_and_run_id_stamps_match_the_standard_library() -> None:
    """Both cache the last second formatted; a time in another second (earlier or
    later) must never get the cached text."""
    import random

    from otel_runs._ids import now_run_id
    from otel_runs._model import iso_from_ns

    rng = random.Random(7)
    base = 1_795_785_043 * 10**9
    times = [base + d for d in (0, 999_999_999, 1_000_000_000, -1, 5, 86_400 * 10**9)]
    times += [rng.randrange(0, 4_102_444_800 * 10**9) for _ in range(2_000)]
    for ns in times:
        dt = datetime.fromtimestamp(ns // 10**9, timezone.utc)
        assert iso_from_ns(ns) == f"{dt:%Y-%m-%dT%H:%M:%S}.{ns // 1000 % 10**6:06d}Z"
    run_id, ns = now_run_id()
    at = datetime.fromtimestamp(ns // 10**9, timezone.utc)
    assert run_id_time(run_id) == at.replace(microsecond=ns // 10**6 % 1000 * 1000)
