"""``@run_tracked`` on plain functions, sync and async, inside and outside requests."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from flask import Flask

from otel_runs import run_tracked
from otel_runs.flask import RunTracking


@run_tracked("backup", "backup:vault")
def export_vault(ok: bool) -> dict[str, Any]:
    return {"ok": ok, "summary": "exported 3 keys" if ok else "locked"}


@run_tracked("git", "git:push")
def push() -> str:
    return "pushed"


@run_tracked("test", "test:run")
async def run_suite(fail: bool) -> dict[str, Any]:
    await asyncio.sleep(0)
    if fail:
        raise RuntimeError("no tests collected")
    return {"ok": True, "summary": "12 passed"}


def test_status_from_returned_dict(collector) -> None:  # noqa: ANN001
    assert export_vault(True) == {"ok": True, "summary": "exported 3 keys"}
    assert export_vault(False)["ok"] is False
    ok_run, failed_run = collector.ended
    assert (ok_run.status, ok_run.summary) == ("ok", "exported 3 keys")
    assert (failed_run.status, failed_run.summary) == ("failed", "locked")


def test_non_dict_result_is_ok_and_returned_unchanged(collector) -> None:  # noqa: ANN001
    assert push() == "pushed"
    assert collector.ended[0].status == "ok"


def test_exception_fails_and_is_reraised(collector) -> None:  # noqa: ANN001
    @run_tracked("git", "git:pull")
    def pull() -> None:
        raise ConnectionError("remote hung up")

    with pytest.raises(ConnectionError, match="remote hung up"):
        pull()
    assert (collector.ended[0].status, collector.ended[0].summary) == ("failed", "remote hung up")


def test_async_function(collector) -> None:  # noqa: ANN001
    assert asyncio.run(run_suite(False)) == {"ok": True, "summary": "12 passed"}
    with pytest.raises(RuntimeError):
        asyncio.run(run_suite(True))
    assert [r.status for r in collector.ended] == ["ok", "failed"]
    assert asyncio.iscoroutinefunction(run_suite)


def test_a_plain_function_called_inside_a_view_is_not_treated_as_the_view(collector, tmp_path) -> None:  # noqa: ANN001
    app = Flask(__name__)
    app.config["PROJECT_ROOT"] = str(tmp_path)
    RunTracking(app, ledger=False)

    @app.post("/vault/export")
    @run_tracked("backup", "backup:vault")
    def view() -> Any:
        result = export_vault(True)
        assert isinstance(result, dict)  # not turned into a Response
        return result

    body = app.test_client().post("/vault/export").get_json()
    inner, outer = collector.ended
    assert outer.run_id == body["run_id"]
    assert inner.parent_run_id == outer.run_id
    assert "run_id" not in export_vault(True)
