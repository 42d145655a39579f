"""Backfill of run output: ``otel-runs export-otlp`` replays each run's output lines from a
real ledger as OTLP log records, the same records the live export sent."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from otlp_receiver import OTLPHttpReceiver, refused_endpoint

import otel_runs
from otel_runs.backfill import BackfillError, export_otlp_command, export_runs_to_otlp
from otel_runs.ledger import ledger_for


@pytest.fixture(autouse=True)
def _fast_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_BLRP_SCHEDULE_DELAY", "50")
    monkeypatch.delenv("OTEL_LOGS_EXPORTER", raising=False)


def _key(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record["trace_id"], record["span_id"], record["body"], record["severity_number"],
            record["severity_text"], sorted(record["attributes"].items()), record["scope"],
            record["resource"].get("service.name"))


@pytest.fixture
def history(git_repo: Path) -> dict[str, Any]:
    """A real ledger with runs that wrote output, and the records the live export sent."""
    live = OTLPHttpReceiver()
    try:
        otel_runs.configure(git_repo, service_name="backfill-output", otlp_endpoint=live.endpoint)
        run_ids = []
        for n in range(2):
            with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
                run.log(f"applying {n}")
                print(f"rolled out {n}", file=run.output)
                run.log("1 pod pending", stream="err")
                logging.getLogger("lib").warning("slow %d", n)
            run_ids.append(run.run_id)
        assert otel_runs.flush()
        records = live.wait_for_logs(lambda logs: len(logs) >= 8 and logs)
        ledger = ledger_for(git_repo)
        ledger.flush()
        otel_runs.shutdown()
        assert [len(ledger.output(rid) or []) for rid in run_ids] == [4, 4]
        return {"root": git_repo, "run_ids": run_ids, "live": records}
    finally:
        live.stop()


def test_output_is_replayed_as_the_live_log_records(history: dict[str, Any]) -> None:
    recv = OTLPHttpReceiver()
    try:
        assert export_runs_to_otlp(history["root"], endpoint=recv.endpoint) == 2
        replayed = recv.wait_for_logs(lambda logs: len(logs) >= 8 and logs)
        assert sorted(map(_key, replayed)) == sorted(map(_key, history["live"]))
        live_times = {(r["span_id"], r["attributes"]["run.output.line"]): r["time_ns"]
                      for r in history["live"]}
        for r in replayed:  # the ledger keeps the start to the microsecond
            assert abs(r["time_ns"] - live_times[(r["span_id"], r["attributes"]["run.output.line"])]) < 10**6
        spans = recv.wait_for(lambda s: len([x for x in s if "run.type" in x["attributes"]]) == 2 and s)
        run_spans = {(s["trace_id"], s["span_id"]) for s in spans if "run.type" in s["attributes"]}
        assert {(r["trace_id"], r["span_id"]) for r in replayed} == run_spans

        # Idempotent: a re-run sends the same records again (the CLI too).
        result = CliRunner().invoke(export_otlp_command, ["--project", str(history["root"]),
                                                          "--endpoint", recv.endpoint])
        assert result.exit_code == 0, result.output
        again = recv.wait_for_logs(lambda logs: len(logs) >= 16 and logs)
        assert sorted(map(_key, again[8:])) == sorted(map(_key, replayed))
    finally:
        recv.stop()


def test_no_output_with_logs_exporter_none(history: dict[str, Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    recv = OTLPHttpReceiver()
    try:
        monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
        assert export_runs_to_otlp(history["root"], endpoint=recv.endpoint) == 2
        assert export_runs_to_otlp(history["root"], endpoint=recv.endpoint, output=False) == 2
        recv.wait_for(lambda s: len(s) >= 4)
        assert recv.logs == [] and recv.log_requests == 0
    finally:
        recv.stop()


def test_a_failed_log_export_is_one_line(history: dict[str, Any],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    recv = OTLPHttpReceiver()
    try:
        dead = refused_endpoint()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", f"{dead}/v1/logs")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
        with pytest.raises(BackfillError) as info:
            export_runs_to_otlp(history["root"], endpoint=recv.endpoint)
        message = str(info.value)
        assert message.startswith(f"OTLP log export to {dead}/v1/logs failed after 0 output lines: ")
        assert "\n" not in message and len(message) < 400
        recv.wait_for(lambda s: len(s) >= 2)  # the spans went out before
    finally:
        recv.stop()
