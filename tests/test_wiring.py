"""Inventory-driven wiring: RunTracking(app, actions=...) tracks existing views."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Blueprint, Flask, jsonify, request

from otel_runs import RUN_ID_HEADER, run_tracked
from otel_runs._wiring import ActionNotRouted, register, wire_actions, wire_pending
from otel_runs.flask import RunTracking, _register_app_hook
from otel_runs.inventory import ACTIONS, Action

_register_app_hook(register)  # what otel_runs.flask does once the lead wires it

DEPLOY = Action("K", "/k8s/apply", "POST", "deploy", "deploy:k8s", "Apply manifests")
BUILD = Action("P", "/pages/build/<name>", "POST", "build", "build:pages_segment", "Build")


def _blueprint() -> Blueprint:
    bp = Blueprint("k8s", __name__)

    @bp.route("/k8s/apply", methods=["POST"])
    def k8s_apply() -> Any:
        return jsonify(ok=True, summary="applied 3 manifests")

    @bp.route("/pages/build/<string:name>", methods=["POST"])
    def build(name: str) -> Any:
        return jsonify(ok=name != "bad", summary=f"built {name}")

    @bp.route("/form", methods=["GET", "POST"])
    def form() -> Any:
        return jsonify(ok=True, method=request.method)

    return bp


def _factory(actions: list[Action], **config: Any) -> Flask:
    """An app factory that initialises the extension BEFORE its blueprints."""
    app = Flask(__name__)
    app.config.update(config)
    RunTracking(app, actions=actions, ledger=False)
    app.register_blueprint(_blueprint())
    return app


def test_views_registered_after_init_app_are_tracked_from_the_first_request(collector: Any) -> None:
    app = _factory([DEPLOY, BUILD])
    client = app.test_client()
    resp = client.post("/k8s/apply")
    assert resp.status_code == 200
    run_id = resp.headers[RUN_ID_HEADER]
    assert resp.get_json()["run_id"] == run_id
    assert collector.wait_for(lambda: len(collector.ended) == 1)
    run = collector.by_id(run_id)
    assert (run.type, run.subtype, run.status, run.summary) == (
        "deploy", "deploy:k8s", "ok", "applied 3 manifests")

    resp = client.post("/pages/build/bad")
    assert collector.wait_for(lambda: len(collector.ended) == 2)
    failed = collector.by_id(resp.headers[RUN_ID_HEADER])
    assert (failed.subtype, failed.status) == ("build:pages_segment", "failed")


def test_only_the_action_method_is_tracked_on_a_mixed_view(collector: Any) -> None:
    form = Action("F", "/form", "POST", "setup", "setup:form", "Submit form")
    app = _factory([form])
    client = app.test_client()
    get = client.get("/form")
    assert get.get_json() == {"ok": True, "method": "GET"}
    assert RUN_ID_HEADER not in get.headers
    post = client.post("/form")
    assert post.get_json()["method"] == "POST" and RUN_ID_HEADER in post.headers
    assert collector.wait_for(lambda: len(collector.ended) == 1)
    assert [r.subtype for r in collector.ended] == ["setup:form"]


def test_an_already_decorated_view_is_not_tracked_twice(collector: Any) -> None:
    app = Flask(__name__)

    @app.route("/k8s/apply", methods=["POST"])
    @run_tracked("deploy", "deploy:k8s_custom")
    def k8s_apply() -> Any:
        return jsonify(ok=True)

    report = wire_actions(app, [DEPLOY])
    assert report.already_tracked == [DEPLOY] and report.wired == []
    RunTracking(app, ledger=False)
    app.test_client().post("/k8s/apply")
    assert collector.wait_for(lambda: len(collector.ended) >= 1)
    assert [r.subtype for r in collector.ended] == ["deploy:k8s_custom"]


def test_wiring_twice_is_idempotent(collector: Any) -> None:
    app = _factory([DEPLOY])
    first = wire_pending(app)
    assert first is not None and first.wired == [DEPLOY]
    assert wire_pending(app) is first
    again = wire_actions(app, [DEPLOY])
    assert again.wired == [] and again.already_tracked == [DEPLOY]
    app.test_client().post("/k8s/apply")
    assert collector.wait_for(lambda: len(collector.ended) >= 1)
    assert len(collector.ended) == 1


def test_an_unrouted_row_is_a_warning(collector: Any, caplog: pytest.LogCaptureFixture) -> None:
    ghost = Action("X", "/nowhere", "POST", "deploy", "deploy:ghost", "Ghost")
    app = _factory([DEPLOY, ghost])
    with caplog.at_level(logging.WARNING, logger="otel_runs"):
        resp = app.test_client().post("/k8s/apply")
    assert resp.status_code == 200
    assert any("/nowhere" in r.getMessage() for r in caplog.records)
    report = wire_pending(app)
    assert report is not None and report.unrouted == [ghost]


def test_an_unrouted_row_is_an_error_in_strict_mode(collector: Any) -> None:
    ghost = Action("X", "/nowhere", "POST", "deploy", "deploy:ghost", "Ghost")
    app = _factory([DEPLOY, ghost], OTEL_RUNS_STRICT_ACTIONS=True)
    with pytest.raises(ActionNotRouted, match="/nowhere"):
        wire_pending(app)
    # nothing was half-wired
    assert not hasattr(app.view_functions["k8s.k8s_apply"], "tracked")
    with pytest.raises(ActionNotRouted):
        wire_actions(app, [ghost], strict=True)


def test_the_wrong_method_does_not_match() -> None:
    app = Flask(__name__)
    app.register_blueprint(_blueprint())
    report = wire_actions(app, [Action("K", "/k8s/apply", "PUT", "deploy", "deploy:k8s", "x")])
    assert len(report.unrouted) == 1 and report.wired == []


def test_a_url_prefix_is_honoured(collector: Any) -> None:
    app = Flask(__name__)
    app.config["OTEL_RUNS_ACTIONS_PREFIX"] = "/api"
    RunTracking(app, actions=[DEPLOY], ledger=False)
    app.register_blueprint(_blueprint(), url_prefix="/api")
    resp = app.test_client().post("/api/k8s/apply")
    assert RUN_ID_HEADER in resp.headers


def test_the_whole_inventory_wires_onto_matching_routes() -> None:
    app = Flask(__name__)
    for i, action in enumerate(ACTIONS):
        app.add_url_rule(action.route, f"v{i}", lambda **kw: {"ok": True}, methods=["POST"])
    report = wire_actions(app, ACTIONS, strict=True)
    assert len(report.wired) == len(ACTIONS) == 79
