"""Poison records never block the others: bad values are normalised when journaled,
records that can never be committed are quarantined (in this process and in the
journal of a dead one), every good run is committed and ``flush()`` tells the truth."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import git, user_state, wait_until
from flask import Flask
from opentelemetry import context, propagate
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanContext

import otel_runs
from otel_runs import InvalidRunId, Run, api, new_run_id, validate_run_id
from otel_runs._ids import RUN_ID_PATTERN
from otel_runs._model import MAX_NS, iso_from_ns
from otel_runs.exporters.ledger import LedgerSpanExporter
from otel_runs.flask import RunTracking
from otel_runs.ledger import Ledger, ledger_for, quarantined
from otel_runs.ledger._commits import SOLO_FAILURES, commit_all
from otel_runs.ledger._journal_records import id_ns

CHILD = str(Path(__file__).with_name("ledger_child.py"))
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
MAX_ISO = iso_from_ns(MAX_NS)


def on_branch(repo: Path) -> set[str]:
    names = git(repo, "ls-tree", "-r", "--name-only", "scp-ledger", check=False).split()
    return {n.split("/")[-2] for n in names if n.endswith("/run.json")}


def quarantine_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and "quarantined" in r.getMessage()]


def unicode_digits(run_id: str) -> str:
    """``run_id`` with its date written in full-width digits (still ``\\d`` to ``re``)."""
    return run_id[:8].translate(FULLWIDTH) + run_id[8:]


def runs_app(root: Path) -> Flask:
    app = Flask(f"poison-{root.name}")
    app.config["PROJECT_ROOT"] = str(root)
    RunTracking(app)
    api.register(app, app.extensions["otel_runs"])
    return app


def run_attrs(run_id: str) -> dict[str, Any]:
    return {"run.id": run_id, "run.type": "build", "run.subtype": "build:docker",
            "run.status": "ok", "run.summary": "built"}


def test_run_ids_are_ascii_only() -> None:
    good = new_run_id()
    # (an uppercase hex digit: the random part may hold no letter for .upper() to change)
    for bad in (unicode_digits(good), good.replace("2", "\u0662"), good + "\n", good[:-1] + "F"):
        with pytest.raises(InvalidRunId):
            validate_run_id(bad)
        assert not re.compile(RUN_ID_PATTERN).fullmatch(bad)  # every regex built from it
    assert validate_run_id(good) == good


@pytest.mark.parametrize("commit_process", ["never", "always"])
def test_poison_in_process_is_quarantined_next_to_good_runs(
        git_repo: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        commit_process: str) -> None:
    """Committed in this process's thread (``never``) or by the commit helper (``always``)."""
    monkeypatch.setenv("OTEL_RUNS_COMMIT_INTERVAL", "600")  # everything stays pending first
    monkeypatch.setenv("OTEL_RUNS_COMMIT_PROCESS", commit_process)
    before = user_state(git_repo)
    app = runs_app(git_repo)
    ledger = ledger_for(git_repo)
    good = []
    for i in range(3):
        with otel_runs.tracked_run(git_repo, "test", "test:unit", summary=f"good {i}") as run:
            run.metadata["ratio"] = float("nan")
        good.append(run.run_id)
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as far:
        far.span.add_event("far future", timestamp=10**30)
    # A plain SDK pipeline lets spans carry any start time and any run id.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(LedgerSpanExporter(ledger)))
    tracer = provider.get_tracer("poison")
    inf_id, nan_id = new_run_id(), new_run_id()
    tracer.start_span("build:docker", attributes=run_attrs(inf_id), start_time=float("inf")).end()
    tracer.start_span("build:docker", attributes=run_attrs(nan_id), start_time=float("nan")).end()
    bad_id = unicode_digits(new_run_id())
    tracer.start_span("build:docker", attributes=run_attrs(bad_id)).end()
    # A run span record no Run can be built from (no run.type), and a Run the store refuses.
    lacking_id, weird_id = new_run_id(), new_run_id()
    ledger.record_span(ReadableSpan(name="broken", context=SpanContext(1, 2, False),
                                    attributes={"run.id": lacking_id}, start_time=1, end_time=2))
    ledger.record(Run(weird_id, "build", "build:docker", status="weird"))

    # NaN is journaled as "nan" (JSON cannot hold it).
    assert b'"ratio":"nan"' in ledger.pending.get(good[0]).line  # type: ignore[union-attr]
    # Reads never fail because of them, before or after the commit.
    client = app.test_client()
    for _ in range(2):
        listed = {r.run_id for r in ledger.recent(50)}
        assert {*good, far.run_id, inf_id, nan_id} <= listed
        assert not listed & {bad_id, lacking_id, weird_id}
        resp = client.get("/api/runs/recent?limit=50")
        assert resp.status_code == 200, resp.data[:300]
        assert {*good, far.run_id} <= {r["run_id"] for r in resp.get_json()["runs"]}
        assert ledger.flush(60)

    assert {*good, far.run_id, inf_id, nan_id} <= on_branch(git_repo)
    assert not on_branch(git_repo) & {lacking_id, weird_id}
    other = Ledger(git_repo)
    try:
        stored_far = other.get(far.run_id)
        assert stored_far is not None and stored_far.events[0]["timestamp"] == MAX_ISO
        stored_inf = other.get(inf_id)
        assert stored_inf is not None and stored_inf.started_at == MAX_ISO
        stored_nan = other.get(nan_id)
        assert stored_nan is not None and stored_nan.started_at == iso_from_ns(id_ns(nan_id))
    finally:
        other.close()
    held = {q.claimed_id: q for q in quarantined(ledger.journal_dir)}
    assert set(held) == {bad_id, lacking_id, weird_id}
    assert "malformed run id" in held[bad_id].reason and held[bad_id].run_id is None
    assert held[lacking_id].run_id == lacking_id and "run span" in held[lacking_id].reason
    assert held[weird_id].run_id == weird_id and "weird" in held[weird_id].reason
    assert json.loads(held[weird_id].line)["run"]["status"] == "weird"  # the line as journaled
    logs = quarantine_logs(caplog)
    assert len(logs) == 3
    for run_id in (lacking_id, weird_id):
        assert sum(run_id in m for m in logs) == 1
    assert sum(bad_id in m for m in logs) == 1
    provider.shutdown()
    assert user_state(git_repo) == before


def test_values_json_cannot_hold_are_normalised_the_documented_way(git_repo: Path) -> None:
    before = user_state(git_repo)
    run_id = new_run_id()
    run = Run(run_id, "build", "build:docker", status="ok", duration_ms=float("nan"),
              parent_run_id=unicode_digits(new_run_id()),
              metadata={"ratio": float("inf"), 7: "seven", "text": "bad \ud800 text",
                        "deep": json.loads("[" * 80 + "]" * 80)})
    child = {"name": "step", "start_time_ns": 10**30, "end_time_ns": float("-inf"),
             "attributes": {"f": float("nan")}, "events": [{"name": "e", "time_ns": "soon"}]}
    ledger = Ledger(git_repo)
    try:
        ledger.record(run, [child])
        assert ledger.flush(60)
        stored = ledger.store.get(run_id)
        assert stored is not None
        assert stored["duration_ms"] is None and stored["parent_run_id"] is None
        meta = stored["metadata"]
        assert meta["ratio"] == "inf" and meta["7"] == "seven" and meta["text"] == "bad \ufffd text"
        depth, node = 0, meta["deep"]
        while isinstance(node, list) and node:
            depth, node = depth + 1, node[0]
        assert depth < 70 and isinstance(node, str)  # cut at 64 levels (as text)
        [span] = ledger.store.spans(run_id)
        assert span["start_time_ns"] == MAX_NS and span["end_time_ns"] == 0
        assert span["attributes"]["f"] == "nan"
        assert span["events"][0]["time_ns"] == MAX_NS  # no number: the span's start
    finally:
        ledger.close()
    assert user_state(git_repo) == before


def test_run_id_from_baggage_is_checked_with_the_same_rule(git_repo: Path) -> None:
    before = user_state(git_repo)
    otel_runs.configure(git_repo)
    parent = new_run_id()
    ids = {}
    for name, carried in (("good", parent), ("bad", unicode_digits(parent))):
        ctx = propagate.extract({"baggage": f"otel_runs.run_id={quote(carried)}"})
        token = context.attach(ctx)
        try:
            with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
                pass
        finally:
            context.detach(token)
        ids[name] = run.run_id
    assert otel_runs.flush()
    ledger = Ledger(git_repo)
    try:
        good, bad = ledger.get(ids["good"]), ledger.get(ids["bad"])
        assert good is not None and good.parent_run_id == parent
        assert bad is not None and bad.parent_run_id is None  # not a run id: not a parent
    finally:
        ledger.close()
    assert user_state(git_repo) == before


class Child:
    """``ledger_child.py loop``: records runs until killed (its lines are collected)."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, CHILD, "loop", str(root)], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "OTEL_RUNS_COMMIT_INTERVAL": "30"})
        self.lines: list[list[str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.split())

    def ids(self, kind: str) -> list[str]:
        return [p[1] for p in list(self.lines) if p and p[0] == kind]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)


def dead_journal(root: Path) -> tuple[list[str], Path]:
    """A journal left by a SIGKILLed process: (its finished runs, its last segment)."""
    child = Child(root)
    wait_until(lambda: len(child.ids("done")) >= 5 and child.ids("inflight"), timeout=60)
    child.kill()
    segments = sorted((root / ".git" / "otel-runs").glob("journal-*/*.jsonl"))
    assert segments, "the child wrote no journal"
    return child.ids("done") + child.ids("inflight"), segments[-1]


def poison_lines(segment: Path) -> tuple[dict[str, str], list[str], bytes]:
    """Lines to add to a dead journal: ({kind: run id} to be committed normalised, run ids
    to be quarantined, the bytes)."""
    end = next(json.loads(line) for line in segment.read_text().splitlines()
               if line.startswith('{"e":"end"'))
    # A run span's raw-data record (what ``Ledger.record_span`` journals), to vary.
    run = end["run"]
    start_ns = 1_700_000_000_000_000_000
    template = {"e": "end", "spans": [], "span": {
        "name": run["subtype"], "trace_id": 1, "span_id": 2, "start": start_ns,
        "end": start_ns + 1_000_000, "events": [], "service": run["service"],
        "attrs": {"run.id": run["run_id"], "run.type": run["type"],
                  "run.subtype": run["subtype"], "run.status": run["status"]}}}

    def variant(**span: Any) -> tuple[str, bytes]:
        rec = json.loads(json.dumps(template))
        run_id = span.pop("run_id", None) or new_run_id()
        rec["span"]["attrs"]["run.id"] = run_id
        rec["span"].update(span)
        return run_id, json.dumps(rec).encode() + b"\n"  # (Python writes Infinity and NaN)

    far_id, far = variant(events=[["far future", 10**30, {}]])
    inf_id, inf = variant(start=float("inf"))
    nan_id, nan = variant(start=float("nan"))
    bad_id, bad = variant(run_id=unicode_digits(new_run_id()))
    lacking_id, weird_id, start_id = new_run_id(), new_run_id(), new_run_id()
    data = b"".join([
        far, inf, nan, bad,
        b"not json at all\n",
        json.dumps({"e": "end", "span": {"attrs": {"run.id": lacking_id}}}).encode() + b"\n",
        json.dumps({"e": "end", "run": {"run_id": weird_id, "type": "build",
                                        "subtype": "build:docker", "status": "weird"}}).encode()
        + b"\n",
        json.dumps({"e": "start", "span": {"attrs": {"run.id": start_id}}}).encode() + b"\n",
        b'{"e": "end", "span": {"attrs": {"run.id": "2026',  # torn: its block never returned
    ])
    return ({"far": far_id, "inf": inf_id, "nan": nan_id},
            [bad_id, lacking_id, weird_id, start_id], data)


def test_poison_in_a_dead_journal_is_quarantined_and_every_good_run_committed(
        git_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = user_state(git_repo)
    done, segment = dead_journal(git_repo)
    normalised, poison, data = poison_lines(segment)
    with open(segment, "ab") as fh:
        fh.write(data)
    writer = segment.name.split(".", 1)[0]
    ledger = Ledger(git_repo)  # the next process to open the ledger recovers the journal
    try:
        assert ledger.flush(60)
        branch = on_branch(git_repo)
        assert set(done) <= branch and set(normalised.values()) <= branch
        assert not branch & set(poison)
        assert ledger.get(normalised["far"]).events[0]["timestamp"] == MAX_ISO  # type: ignore[union-attr]
        assert ledger.get(normalised["inf"]).started_at == MAX_ISO  # type: ignore[union-attr]
        nan_run = ledger.get(normalised["nan"])
        assert nan_run is not None and nan_run.started_at == iso_from_ns(id_ns(normalised["nan"]))
        held = quarantined(ledger.journal_dir)
        assert len(held) == 5  # the four bad records and the line that is not JSON
        assert {q.claimed_id for q in held} == {*poison, None}
        assert any(q.line == b"not json at all" and "not JSON" in q.reason for q in held)
        assert all(q.source.startswith(f"{writer}.") for q in held)
        logs = quarantine_logs(caplog)
        assert len(logs) == 5 and all("bad journal line" in m for m in logs)
        assert not list(ledger.journal_dir.glob(f"{writer}.*"))  # the journal is gone
        app = runs_app(git_repo)
        listed: set[str] = set()
        query = "/api/runs/recent?limit=500"
        while True:  # (every page: the child may have finished hundreds of runs)
            resp = app.test_client().get(query)
            assert resp.status_code == 200
            page = [r["run_id"] for r in resp.get_json()["runs"]]
            listed.update(page)
            if len(page) < 500:
                break
            query = f"/api/runs/recent?limit=500&before={page[-1]}"
        assert set(done) <= listed
        assert ledger.recover() == 0
    finally:
        ledger.close()
    again = Ledger(git_repo)  # quarantining is done once: nothing new, nothing logged
    again.close()
    assert len(quarantined(ledger.journal_dir)) == 5 and len(quarantine_logs(caplog)) == 5
    from otel_runs.ledger._verify import verify_ledger

    report = verify_ledger(git_repo)
    assert report.quarantined == 5 and report.problems == []
    assert user_state(git_repo) == before


def test_flush_is_false_while_a_dead_journal_cannot_be_recovered(git_repo: Path) -> None:
    before = user_state(git_repo)
    ledger = Ledger(git_repo)
    ledger.record(Run(new_run_id(), "build", "build:docker", status="ok"))
    assert ledger.flush(60)
    ledger.close()
    tip = git(git_repo, "rev-parse", "scp-ledger").strip()
    done, _segment = dead_journal(git_repo)
    # Someone moves the branch away: the store refuses to write until it is put back.
    git(git_repo, "update-ref", "refs/heads/scp-ledger", git(git_repo, "rev-parse", "main").strip())
    ledger = Ledger(git_repo)
    try:
        assert not ledger.flush(3)
        assert list(ledger.journal_dir.glob("*.jsonl"))  # kept for the next attempt
        git(git_repo, "update-ref", "refs/heads/scp-ledger", tip)
        assert ledger.flush(60)
        assert set(done) <= on_branch(git_repo)
        assert not list(ledger.journal_dir.glob("*.jsonl"))
        assert quarantined(ledger.journal_dir) == []
    finally:
        ledger.close()
    assert user_state(git_repo) == before


class Item:
    """A record as ``commit_all`` sees it (with the counts it keeps)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failures = self.solo_failures = 0
        self.failed_mark = -1


def test_a_record_failing_alone_while_others_commit_is_quarantined() -> None:
    items = [Item(f"r{i}") for i in range(40)]
    items.insert(17, Item("bad"))
    written: list[str] = []
    rejected: list[tuple[str, str]] = []

    def write(batch: list[Item]) -> int:
        if any(i.name == "bad" for i in batch):
            raise OSError("the store failed")
        written.extend(i.name for i in batch)
        return len(batch)

    count, complete, _ = commit_all(items, write, lambda i, why: rejected.append((i.name, why)), 16)
    assert complete and count == 40 and sorted(written) == sorted(f"r{i}" for i in range(40))
    assert [name for name, _ in rejected] == ["bad"]
    assert f"failed {SOLO_FAILURES} times on its own while other runs were committed" in \
        rejected[0][1]


def test_nothing_is_quarantined_when_nothing_commits() -> None:
    items = [Item(f"r{i}") for i in range(10)]
    attempts = []

    def write(batch: list[Item]) -> int:
        attempts.append(len(batch))
        raise OSError("No space left on device")

    rejected: list[Item] = []
    count, complete, error = commit_all(items, write, lambda i, why: rejected.append(i), 16)
    assert (count, complete, rejected) == (0, False, [])
    assert isinstance(error, OSError) and attempts[:4] == [10, 5, 2, 1]  # halved each time
    assert len(attempts) <= 16
