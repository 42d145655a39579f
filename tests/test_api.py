"""The runs API and page: real Flask app, real git ledger in a tmp repo."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import user_state
from flask import Flask
from opentelemetry import trace

import otel_runs
from otel_runs import api
from otel_runs.flask import RunTracking


def make_app(root: Path, **tracking: Any) -> Flask:
    app = Flask(f"api-{root.name}")
    app.config["PROJECT_ROOT"] = str(root)

    @app.post("/deploy/<outcome>")
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def deploy(outcome: str) -> Any:
        run = otel_runs.current_run()
        assert run is not None
        run.add_event("image.pulled", image="web:1.2")
        with trace.get_tracer("test").start_as_current_span("kubectl apply"):
            pass
        return {"ok": outcome == "ok", "summary": f"rollout {outcome} for web"}

    @app.post("/build")
    @otel_runs.run_tracked("build", "build:docker")
    def build() -> Any:
        return {"ok": True, "summary": "image built"}

    RunTracking(app, **tracking)
    api.register(app, app.extensions["otel_runs"])  # idempotent once RunTracking wires it
    return app


@pytest.fixture
def app(git_repo: Path) -> Flask:
    return make_app(git_repo)


def _post(client: Any, url: str) -> str:
    return client.post(url).headers["X-Run-Id"]


def _json_error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.data[:300]
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert isinstance(body["error"], str) and body["error"]
    return body


def test_recent_lists_runs_newest_first(app: Flask, git_repo: Path) -> None:
    before = user_state(git_repo)
    client = app.test_client()
    ids = [_post(client, "/deploy/ok"), _post(client, "/deploy/fail"), _post(client, "/build")]
    resp = client.get("/api/runs/recent")
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    runs = resp.get_json()["runs"]
    assert [r["run_id"] for r in runs] == ids[::-1]
    assert [r["status"] for r in runs] == ["ok", "failed", "ok"]
    assert runs[1]["summary"] == "rollout fail for web"
    otel_runs.flush()
    assert user_state(git_repo) == before


def test_recent_limit_type_and_status_filters(app: Flask) -> None:
    client = app.test_client()
    ok, failed, build = _post(client, "/deploy/ok"), _post(client, "/deploy/fail"), _post(client, "/build")
    assert [r["run_id"] for r in client.get("/api/runs/recent?limit=1").get_json()["runs"]] == [build]
    deploys = client.get("/api/runs/recent?type=deploy").get_json()["runs"]
    assert [r["run_id"] for r in deploys] == [failed, ok]
    failures = client.get("/api/runs/recent?status=failed").get_json()["runs"]
    assert [r["run_id"] for r in failures] == [failed]
    empty_filters = client.get("/api/runs/recent?type=&status=&limit=").get_json()
    assert len(empty_filters["runs"]) == 3 and empty_filters["limit"] == 50


@pytest.mark.parametrize("query, word", [
    ("limit=0", "limit"), ("limit=501", "500"), ("limit=abc", "integer"), ("limit=-3", "limit"),
    ("type=nope", "valid"), ("status=done", "valid"),
])
def test_recent_rejects_bad_parameters_with_json_400(app: Flask, query: str, word: str) -> None:
    body = _json_error(app.test_client().get(f"/api/runs/recent?{query}"), 400)
    assert word in body["error"]


def test_recent_accepts_the_documented_maximum(app: Flask) -> None:
    resp = app.test_client().get(f"/api/runs/recent?limit={api.MAX_RECENT_LIMIT}")
    assert resp.status_code == 200


def test_run_detail_has_events_and_child_spans(app: Flask) -> None:
    client = app.test_client()
    run_id = _post(client, "/deploy/ok")
    resp = client.get(f"/api/runs/{run_id}")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["run"]["run_id"] == run_id and body["run"]["status"] == "ok"
    assert [e["name"] for e in body["run"]["events"]] == ["image.pulled"]
    assert body["run"]["events"][0]["attributes"] == {"image": "web:1.2"}
    assert "kubectl apply" in [s["name"] for s in body["spans"]]
    assert body["run"]["trace_url"] is None


def test_run_detail_links_the_trace_when_configured(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_TRACE_URL", "http://localhost:16686/trace/{trace_id}")
    client = app.test_client()
    run_id = _post(client, "/build")
    run = client.get(f"/api/runs/{run_id}").get_json()["run"]
    assert run["trace_url"] == f"http://localhost:16686/trace/{run['trace_id']}"
    assert re.fullmatch(r"[0-9a-f]{32}", run["trace_id"])


def test_unknown_run_is_json_404(app: Flask) -> None:
    body = _json_error(app.test_client().get("/api/runs/20261127T101500123Z-3fa9c2d1e5"), 404)
    assert "20261127T101500123Z-3fa9c2d1e5" in body["error"]


@pytest.mark.parametrize("bad", ["nope", "20261127T101500123Z-3FA9C2D1E5", "..", "20261127T101500123Z-3fa9c2d1e5;x",
                                 "x" * 300])
def test_malformed_run_id_is_json_400(app: Flask, bad: str) -> None:
    body = _json_error(app.test_client().get(f"/api/runs/{bad}"), 400)
    assert "malformed run id" in body["error"]


@pytest.mark.parametrize("path", ["/api/runs/20261127T101500123Z-3fa9c2d1e5/extra",
                                  "/api/runs/..%2F..%2Fetc%2Fpasswd"])
def test_unknown_api_path_is_json_404(app: Flask, path: str) -> None:
    _json_error(app.test_client().get(path), 404)


def test_search_matches_id_prefix_subtype_and_summary_words(app: Flask) -> None:
    client = app.test_client()
    deploy = _post(client, "/deploy/ok")
    build = _post(client, "/build")
    by_summary = client.get("/api/runs/search?q=rollout").get_json()["items"]
    assert [i["run_id"] for i in by_summary] == [deploy]
    assert by_summary[0] == {"run_id": deploy, "label": "deploy:k8s: rollout ok for web",
                             "status": "ok", "started_at": by_summary[0]["started_at"]}
    assert by_summary[0]["started_at"].endswith("Z")
    by_subtype = client.get("/api/runs/search?q=docker").get_json()["items"]
    assert [i["run_id"] for i in by_subtype] == [build]
    by_prefix = client.get(f"/api/runs/search?q={build[:22]}").get_json()["items"]
    assert [i["run_id"] for i in by_prefix] == [build]
    newest_first = client.get("/api/runs/search?q=&limit=10").get_json()["items"]
    assert [i["run_id"] for i in newest_first] == [build, deploy]
    assert client.get("/api/runs/search?q=nothing-matches-this").get_json()["items"] == []


@pytest.mark.parametrize("query", ["q=" + "a" * 201, "q=x&limit=0", "q=x&limit=51", "q=x&limit=z"])
def test_search_rejects_bad_parameters_with_json_400(app: Flask, query: str) -> None:
    _json_error(app.test_client().get(f"/api/runs/search?{query}"), 400)


@pytest.mark.parametrize("path", ["/api/runs/recent", "/api/runs/search?q=a", "/api/events", "/runs",
                                  "/api/runs/20261127T101500123Z-3fa9c2d1e5"])
def test_authorize_guards_api_stream_and_page(git_repo: Path, path: str) -> None:
    app = make_app(git_repo, authorize=lambda request: request.headers.get("X-Token") == "let-me-in")
    client = app.test_client()
    body = _json_error(client.get(path), 403)
    assert body["error"] == "forbidden"
    if path != "/api/events":  # an allowed stream would never end in the test client
        assert client.get(path, headers={"X-Token": "let-me-in"}).status_code in (200, 404)


def test_tracked_routes_are_not_guarded_by_authorize(git_repo: Path) -> None:
    app = make_app(git_repo, authorize=lambda request: False)
    assert app.test_client().post("/build").status_code == 200


def test_ledger_endpoints_answer_503_outside_a_git_repo(tmp_path: Path) -> None:
    root = tmp_path / "not-a-repo"
    root.mkdir()
    app = make_app(root)
    client = app.test_client()
    assert client.post("/build").status_code == 200  # tracking keeps working
    for path in ("/api/runs/recent", "/api/runs/search?q=x", "/api/runs/20261127T101500123Z-3fa9c2d1e5"):
        body = _json_error(client.get(path), 503)
        assert str(root.resolve()) in body["error"] or str(root) in body["error"]
        assert "git init" in body["error"]
    assert client.get("/runs").status_code == 200


def test_runs_page_is_self_contained(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_TRACE_URL", "http://jaeger.local/trace/{trace_id}")
    client = app.test_client()
    resp = client.get("/runs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert '"traceUrl": "http://jaeger.local/trace/{trace_id}"' in html  # a JSON data block
    # No external resource: no script/link/img/@import pointing at another host.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    # Script and style are the page's own files (the CSP allows no inline script).
    assert '<script src="/runs/assets/runs.js">' in html
    assert '<link rel="stylesheet" href="/runs/assets/runs.css">' in html
    for asset in ("runs.js", "runs.css"):
        body = client.get(f"/runs/assets/{asset}").get_data(as_text=True)
        assert "@import" not in body and "http://" not in body and "https://" not in body
    assert 'aria-live="polite"' in html and "<label>" in html


def test_register_is_idempotent(app: Flask) -> None:
    state = app.extensions["otel_runs"]
    hub, proc = state.extra["hub"], state.extra["sse_processor"]
    api.register(app, state)
    assert state.extra["hub"] is hub and state.extra["sse_processor"] is proc


def test_api_can_be_turned_off(git_repo: Path) -> None:
    app = Flask("off")
    app.config.update(PROJECT_ROOT=str(git_repo), OTEL_RUNS_API=False)
    RunTracking(app)
    api.register(app, app.extensions["otel_runs"])
    assert app.test_client().get("/api/runs/recent").status_code == 404
    assert "hub" not in app.extensions["otel_runs"].extra


def test_routing_errors_on_api_paths_are_json_and_others_unchanged(tmp_path: Path) -> None:
    from flask import Flask

    from otel_runs.flask import RunTracking

    app = Flask(__name__)
    app.config["PROJECT_ROOT"] = str(tmp_path)

    @app.errorhandler(404)
    def mine(exc: Exception) -> tuple[str, int]:
        return "my own 404 page", 404

    RunTracking(app, ledger=False)
    client = app.test_client()
    resp = client.post("/api/runs/recent")
    assert resp.status_code == 405 and resp.is_json
    assert resp.get_json()["status"] == 405
    resp = client.get("/api/runs/recent/extra/x")
    assert resp.status_code == 404 and resp.is_json
    assert client.get("/nowhere").get_data() == b"my own 404 page"
    plain = Flask("plain")
    RunTracking(plain, ledger=False)
    resp = plain.test_client().post("/runs")
    assert resp.status_code == 405 and not resp.is_json  # Flask's default for non-API paths
