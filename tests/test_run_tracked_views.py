"""``@run_tracked`` on Flask views: every return form, additive responses, errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, Response, abort, jsonify
from werkzeug.exceptions import HTTPException

import otel_runs
from otel_runs import RUN_ID_HEADER, run_tracked
from otel_runs.flask import RunTracking


def _app(tmp_path: Any) -> Flask:
    app = Flask(__name__)
    app.config["PROJECT_ROOT"] = str(tmp_path)
    RunTracking(app, ledger=False)
    return app


def _gen() -> Any:
    yield "line 1\n"
    yield "line 2\n"


RETURN_FORMS: dict[str, Callable[[], Any]] = {
    "response": lambda: Response("hi", 201, {"X-A": "1"}),
    "jsonify": lambda: jsonify(ok=True, summary="applied 3", items=[1, 2]),
    "dict": lambda: {"ok": True, "summary": "done", "z": 1, "a": {"b": 2}},
    "empty_dict": lambda: {},
    "list": lambda: [1, 2, {"ok": False}],
    "str": lambda: "hello",
    "bytes": lambda: b"\x00raw",
    "body_status": lambda: ({"ok": True}, 201),
    "body_status_headers": lambda: ("created", 202, {"X-B": "2"}),
    "body_headers": lambda: ({"ok": 1}, {"X-C": "3"}),
    "response_status": lambda: (Response("r"), 203),
    "generator": lambda: _gen(),
    "streamed_response": lambda: Response(_gen(), mimetype="text/plain"),
    "hand_made_json": lambda: Response(json.dumps({"b": 1, "a": [2]}, indent=2),
                                       mimetype="application/json"),
    "json_with_run_id": lambda: {"run_id": "mine", "ok": True},
    "ok_false": lambda: {"ok": False, "summary": "nope"},
    "server_error": lambda: ({"error": "x"}, 500),
    "not_json_object_error": lambda: ("boom", 503),
    "json_array_str": lambda: Response("[1]", mimetype="application/json"),
}

EXPECTED_STATUS = {"ok_false": "failed", "server_error": "failed", "not_json_object_error": "failed"}


def _without_run_id(body: bytes, run_id: str) -> bytes:
    """The body with the run_id member removed, wherever it was put."""
    member = re.escape(json.dumps(run_id))
    for pattern in (rf',\s*"run_id":\s*{member}', rf'"run_id":\s*{member},', rf'"run_id":\s*{member}'):
        stripped, n = re.subn(pattern.encode(), b"", body, count=1)
        if n:
            return stripped
    return body


@pytest.mark.parametrize("form", sorted(RETURN_FORMS))
def test_response_is_identical_apart_from_run_id(collector, tmp_path, form: str) -> None:  # noqa: ANN001
    app = _app(tmp_path)
    make = RETURN_FORMS[form]
    app.add_url_rule("/plain", "plain", lambda: make(), methods=["POST"])
    app.add_url_rule("/tracked", "tracked",
                     run_tracked("deploy", "deploy:k8s")(lambda: make()), methods=["POST"])
    client = app.test_client()
    plain = client.post("/plain")
    tracked = client.post("/tracked")

    run_id = tracked.headers[RUN_ID_HEADER]
    assert otel_runs.validate_run_id(run_id)
    assert RUN_ID_HEADER not in plain.headers
    assert tracked.status == plain.status
    strip = {RUN_ID_HEADER, "Content-Length"}
    assert [h for h in tracked.headers if h[0] not in strip] == \
        [h for h in plain.headers if h[0] not in strip]

    body = tracked.get_data()
    plain_json = plain.get_json(silent=True) if plain.is_json else None
    if isinstance(plain_json, dict) and "run_id" not in plain_json:
        assert tracked.get_json() == {**plain_json, "run_id": run_id}
        assert _without_run_id(body, run_id) == plain.get_data()
    else:
        assert body == plain.get_data()
    assert int(tracked.headers.get("Content-Length", len(body))) == len(body)

    run = collector.by_id(run_id)
    assert run.status == EXPECTED_STATUS.get(form, "ok")
    assert len(collector.ended) == 1


def test_summary_from_body_key_and_summary_fn(collector, tmp_path) -> None:  # noqa: ANN001
    app = _app(tmp_path)

    @app.post("/a")
    @run_tracked("deploy", "deploy:k8s")
    def a() -> Any:
        return jsonify(ok=True, summary="applied 3 objects")

    @app.post("/b")
    @run_tracked("deploy", "deploy:k8s_scale", summary_key="message", ok_key="success",
                 summary="Scale deployment")
    def b() -> Any:
        return {"success": False, "message": "no such deployment"}

    @app.post("/c")
    @run_tracked("plan", "plan:terraform", summary_fn=lambda r: f"{r['adds']} to add")
    def c() -> Any:
        return {"ok": True, "adds": 4}

    @app.post("/d")
    @run_tracked("plan", "plan:helm_template", summary="Helm template render")
    def d() -> Any:
        return "rendered"

    client = app.test_client()
    runs = {p: collector.by_id(client.post(p).headers[RUN_ID_HEADER]) for p in ("/a", "/b", "/c", "/d")}
    assert (runs["/a"].status, runs["/a"].summary) == ("ok", "applied 3 objects")
    assert (runs["/b"].status, runs["/b"].summary) == ("failed", "no such deployment")
    assert (runs["/c"].status, runs["/c"].summary) == ("ok", "4 to add")
    assert (runs["/d"].status, runs["/d"].summary) == ("ok", "Helm template render")


def _error_app(tmp_path: Any, decorate: bool) -> Flask:
    app = _app(tmp_path)
    wrap = run_tracked("deploy", "deploy:k8s") if decorate else (lambda f: f)

    class Quota(Exception):
        pass

    @app.errorhandler(Quota)
    def quota(e: Quota) -> Any:
        return {"error": "quota", "detail": str(e)}, 429

    @app.errorhandler(404)
    def not_found(e: HTTPException) -> Any:
        return {"error": "not found"}, 404

    @app.post("/quota")
    @wrap
    def v1() -> Any:
        raise Quota("over quota")

    @app.post("/abort")
    @wrap
    def v2() -> Any:
        abort(404)

    @app.post("/crash")
    @wrap
    def v3() -> Any:
        raise RuntimeError("disk full")

    @app.post("/teapot")
    @wrap
    def v4() -> Any:
        abort(418)

    return app


@pytest.mark.parametrize(("path", "summary"), [
    ("/quota", "over quota"), ("/abort", "404 Not Found"), ("/crash", "disk full"),
    ("/teapot", "418 I'm a teapot"),
])
def test_exceptions_go_through_flasks_error_handling_unchanged(collector, tmp_path, path: str,
                                                                summary: str) -> None:  # noqa: ANN001
    plain = _error_app(tmp_path / "p", decorate=False).test_client().post(path)
    tracked = _error_app(tmp_path / "t", decorate=True).test_client().post(path)
    assert tracked.status == plain.status
    assert tracked.get_data() == plain.get_data()
    assert [h for h in tracked.headers if h[0] != RUN_ID_HEADER] == list(plain.headers)
    run = collector.by_id(tracked.headers[RUN_ID_HEADER])
    assert run.status == "failed"
    assert run.summary.startswith(summary)


def test_unhandled_exception_propagates_in_testing_mode(collector, tmp_path) -> None:  # noqa: ANN001
    app = _error_app(tmp_path, decorate=True)
    app.testing = True
    with pytest.raises(RuntimeError, match="disk full"):
        app.test_client().post("/crash")
    assert collector.ended[-1].status == "failed"


def test_wraps_keeps_metadata_and_is_marked(tmp_path) -> None:  # noqa: ANN001
    def k8s_apply() -> str:
        """Apply manifests."""
        return "x"

    wrapped = run_tracked("deploy", "deploy:k8s")(k8s_apply)
    assert wrapped.__name__ == "k8s_apply" and wrapped.__doc__ == "Apply manifests."
    assert wrapped.__wrapped__ is k8s_apply  # type: ignore[attr-defined]
    from otel_runs._decorator import tracked_by

    assert tracked_by(wrapped) == ("deploy", "deploy:k8s")
    assert run_tracked("deploy", "deploy:helm_upgrade")(wrapped) is wrapped  # never twice


def test_blueprint_routes_and_url_params(collector, tmp_path) -> None:  # noqa: ANN001
    from flask import Blueprint

    bp = Blueprint("pages", __name__)

    @bp.route("/pages/build/<name>", methods=["POST"])
    @run_tracked("build", "build:pages_segment")
    def build(name: str) -> Any:
        return {"ok": True, "summary": f"built {name}"}

    app = _app(tmp_path)
    app.register_blueprint(bp)
    resp = app.test_client().post("/pages/build/docs")
    assert resp.get_json()["summary"] == "built docs"
    assert collector.by_id(resp.get_json()["run_id"]).summary == "built docs"


def test_request_context_code_sees_the_current_run(collector, tmp_path) -> None:  # noqa: ANN001
    app = _app(tmp_path)

    @app.post("/x")
    @run_tracked("deploy", "deploy:k8s")
    def x() -> Any:
        run = otel_runs.current_run()
        assert run is not None
        run.add_event("applied", objects=2)
        run.metadata["namespace"] = "prod"
        return {"ok": True, "seen": run.run_id}

    body = app.test_client().post("/x").get_json()
    assert body["seen"] == body["run_id"]
    run = collector.by_id(body["run_id"])
    assert run.metadata == {"namespace": "prod"} and run.events[0]["name"] == "applied"


def test_async_views(collector, tmp_path) -> None:  # noqa: ANN001
    import asyncio

    app = _app(tmp_path)

    @app.post("/async")
    @run_tracked("test", "test:run")
    async def run_tests() -> Any:
        await asyncio.sleep(0)
        return {"ok": False, "summary": "2 failed"}

    @app.post("/async-crash")
    @run_tracked("test", "test:coverage")
    async def crash() -> Any:
        await asyncio.sleep(0)
        raise RuntimeError("pytest not found")

    client = app.test_client()
    resp = client.post("/async")
    assert resp.get_json()["ok"] is False
    run = collector.by_id(resp.headers[RUN_ID_HEADER])
    assert (run.status, run.summary) == ("failed", "2 failed")
    resp = client.post("/async-crash")
    assert resp.status_code == 500
    run = collector.by_id(resp.headers[RUN_ID_HEADER])
    assert (run.status, run.summary) == ("failed", "pytest not found")


@pytest.mark.parametrize("raw", [
    b'{"a":1,"b":{"c":[1,2]}}\n',
    b'{"ok":true,"s":"a\\", \\"b"}\n', b'{"ok":false}\n', b'{"a": 1, "b": true}\n',
    b'{"a": 1, "b": "}"}',
    b'{\n  "a": 1,\n  "b": {\n    "c": 2\n  }\n}\n',
    b'{}',
    b'{ }\n',
    '{"naïve":"ü"}'.encode(),
])
def test_run_id_splice_changes_nothing_else(raw: bytes) -> None:
    from otel_runs._decorator import _with_run_id

    run_id = otel_runs.new_run_id()
    out = _with_run_id(raw, run_id)
    assert json.loads(out) == {**json.loads(raw), "run_id": run_id}
    assert _without_run_id(out, run_id).replace(b" ", b"") == raw.replace(b" ", b"")
    assert out.endswith(raw[raw.rindex(b"}"):])


@pytest.mark.parametrize("raw", [
    b'{"ok":true,"summary":"s"}\n', b'{"a": [1, {"b": null}]}', b'  {"ok": false}\n', b'{}',
    b'[1, 2]\n', b'"text"', b'42', b'{"a":1} trailing', b'{"a":', b'not json', b'',
    '{"naïve":"ü"}'.encode(), '{"x":"ü"}'.encode("utf-16"), b'{"a":NaN}',
])
def test_json_bodies_are_read_as_flask_reads_them(raw: bytes) -> None:
    from otel_runs._decorator import _json_object

    app = Flask(__name__)
    try:
        expected = app.json.loads(raw)
    except ValueError:
        expected = None
    got = _json_object(app, raw)
    if isinstance(expected, dict):
        assert got == expected or (got is not None and json.dumps(got) == json.dumps(expected))
    else:
        assert got is None
