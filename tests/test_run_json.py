"""The Run JSON every consumer shares (journal and live feed) is ``run_json`` of the Run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, Span

import otel_runs
from otel_runs._open_runs import OpenRun, run_json
from otel_runs.exporters import RunProcessor


class _Texts(RunProcessor):
    """Notes, for each run, the shared JSON texts and what ``run_json`` makes of its Runs."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, str, str | None, str]] = []
        self._start: dict[str, tuple[str | None, str]] = {}

    def _run_started(self, entry: OpenRun, span: Span) -> None:
        self._start[entry.run_id] = (entry.start_json(), run_json(entry.start))

    def _run_ended(self, entry: OpenRun, span: ReadableSpan) -> None:
        text = entry.end_json(span)
        assert entry.end_json(span) is text  # encoded once
        start, start_run = self._start.pop(entry.run_id)
        self.seen.append((start, start_run, text, run_json(entry.end_run(span))))


@pytest.fixture
def texts(tmp_path: Path) -> _Texts:
    proc = _Texts()
    otel_runs.configure(tmp_path, ledger=False, processors=[proc])
    return proc


def _check(texts: _Texts) -> list[dict[str, Any]]:
    out = []
    for start, start_run, end, end_run in texts.seen:
        assert start == start_run
        assert end == end_run
        assert start is not None and end is not None
        out.append(json.loads(end))
    return out


def test_start_and_end_json_are_the_runs_json(tmp_path: Path, texts: _Texts) -> None:
    with otel_runs.tracked_run(tmp_path, "deploy", "deploy:k8s"):
        pass
    with otel_runs.tracked_run(tmp_path, "deploy", "deploy:k8s", summary="déjà \"vu\"\n",
                               env="prod", n=3, ratio=0.5, tags=["a", "é"]) as run:
        run.add_event("step", detail="x" * 10, count=2)
        with otel_runs.tracked_run(tmp_path, "build", "build:image") as child:
            child.summary = "built ✓"
            child.metadata["token"] = "ghp_" + "a" * 36  # scrubbed
        run.metadata["later"] = {"nested": [1, 2.5, None, True]}
    with pytest.raises(RuntimeError), otel_runs.tracked_run(tmp_path, "deploy", "deploy:k8s"):
        raise RuntimeError("boom")
    runs = _check(texts)
    assert len(runs) == 4
    assert runs[1]["summary"] == "built ✓" and runs[1]["parent_run_id"] == runs[2]["run_id"]
    assert "ghp_" not in json.dumps(runs[1])
    assert runs[2]["metadata"]["later"] == {"nested": [1, 2.5, None, True]}
    assert runs[2]["events"][0]["name"] == "step"
    assert runs[3]["status"] == "failed" and runs[3]["events"]


def test_a_lone_surrogate_is_refused_by_both(tmp_path: Path, texts: _Texts) -> None:
    with otel_runs.tracked_run(tmp_path, "deploy", "deploy:k8s") as run:
        run.summary = "bad \ud800 text"
    [(start, start_run, end, end_run)] = texts.seen
    assert start == start_run
    assert end is None and end_run == ""  # (the consumers then take the normalising path)
