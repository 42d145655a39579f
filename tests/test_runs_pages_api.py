"""The run page, the favicon and ``/api/runs/recent?before=`` (the list's "load older"):
real Flask app, real git ledger in a tmp repo."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from test_api import make_app

import otel_runs
from otel_runs import _page
from otel_runs.ledger import ledger_for


@pytest.fixture
def app(git_repo: Path) -> Flask:
    return make_app(git_repo)


def _ids(client: Any, query: str) -> list[str]:
    resp = client.get(f"/api/runs/recent?{query}")
    assert resp.status_code == 200, resp.data[:300]
    return [r["run_id"] for r in resp.get_json()["runs"]]


@pytest.mark.parametrize("committed", [False, True])
def test_before_pages_through_older_runs(app: Flask, git_repo: Path, committed: bool) -> None:
    client = app.test_client()
    ids = [client.post(p).headers["X-Run-Id"]
           for p in ("/deploy/ok", "/build", "/deploy/fail", "/build", "/deploy/ok")]
    if committed:  # from the branch, not the journals
        otel_runs.flush()
        assert ledger_for(str(git_repo)).flush()
    newest = ids[::-1]
    assert _ids(client, "limit=2") == newest[:2]
    assert _ids(client, f"limit=2&before={newest[1]}") == newest[2:4]
    assert _ids(client, f"limit=2&before={newest[3]}") == newest[4:]
    assert _ids(client, f"before={newest[-1]}") == []
    deploys = [i for i in newest if i in (ids[0], ids[2], ids[4])]
    assert _ids(client, f"type=deploy&before={newest[0]}") == deploys[1:]
    assert _ids(client, f"status=failed&before={newest[0]}") == [ids[2]]
    assert _ids(client, f"status=ok&type=build&before={ids[3]}") == [ids[1]]


@pytest.mark.parametrize("bad", ["nope", "2026", "../etc", "20261127T101500123Z-3FA9C2D1E5"])
def test_a_malformed_before_is_json_400(app: Flask, bad: str) -> None:
    resp = app.test_client().get(f"/api/runs/recent?before={bad}")
    assert resp.status_code == 400 and resp.mimetype == "application/json"
    assert "before" in resp.get_json()["error"]


def test_the_run_page_is_self_contained(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_TRACE_URL", "http://jaeger.local/trace/{trace_id}")
    client = app.test_client()
    run_id = client.post("/build").headers["X-Run-Id"]
    resp = client.get(f"/runs/{run_id}")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    html = resp.get_data(as_text=True)
    assert f"<title>Run {run_id} — otel-runs</title>" in html
    block = re.search(r'<script type="application/json" id="otel-runs-config">(.*?)</script>', html)
    assert block is not None
    config = json.loads(block.group(1))
    assert config["runId"] == run_id and config["api"] == "/api" and config["page"] == "/runs"
    assert config["traceUrl"] == "http://jaeger.local/trace/{trace_id}"
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script>" not in html and " style=" not in html
    for name in re.findall(r'(?:src|href)="/runs/assets/([^"]+)"', html):
        assert name in _page.ASSETS
    for name, mimetype in _page.ASSETS.items():
        asset = client.get(f"/runs/assets/{name}")
        assert asset.status_code == 200 and asset.mimetype == mimetype
        text = asset.get_data(as_text=True).replace("http://www.w3.org/2000/svg", "")
        assert "@import" not in text and "http://" not in text and "https://" not in text, name
        assert "innerHTML" not in text, name


@pytest.mark.parametrize("bad", ["nope", "20261127T101500123Z", "x" * 300])
def test_a_malformed_run_page_id_is_404(app: Flask, bad: str) -> None:
    assert app.test_client().get(f"/runs/{bad}").status_code == 404


def test_an_unknown_run_still_gets_its_page(app: Flask) -> None:
    resp = app.test_client().get("/runs/20261127T101500123Z-3fa9c2d1e5")
    assert resp.status_code == 200  # the page says the run is not there


def test_the_favicon_is_served(app: Flask) -> None:
    resp = app.test_client().get("/favicon.ico")
    assert resp.status_code == 200 and resp.mimetype == "image/svg+xml"
    assert resp.get_data(as_text=True).startswith("<svg")


def test_an_apps_own_favicon_wins(git_repo: Path) -> None:
    app = Flask("own-icon")
    app.config["PROJECT_ROOT"] = str(git_repo)
    app.add_url_rule("/favicon.ico", "icon", lambda: ("mine", 200, {"Content-Type": "image/png"}))
    from otel_runs.flask import RunTracking

    RunTracking(app)
    assert app.test_client().get("/favicon.ico").get_data(as_text=True) == "mine"
