"""Web security with real Flask apps (test client; a real server where bodies are chunked):
same-origin only for state-changing requests (``protect=True``), ``Host`` checks,
private-by-default API, security headers, strict parameters, the demo's body limit."""

from __future__ import annotations

import logging
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

import otel_runs
from otel_runs.demo import create_demo_app
from otel_runs.flask import RunTracking
from otel_runs.web_security import CSRF_HEADER

RUN_ID = "20261127T101500123Z-3fa9c2d1e5"
API_PATHS = ["/api/runs/recent", "/api/runs/search?q=a", f"/api/runs/{RUN_ID}", "/runs",
             "/runs/assets/runs.js", "/api/events"]


def make_app(root: Path, **tracking: Any) -> Flask:
    """An app whose tracked POST route writes a file: the side effect a CSRF would cause."""
    app = Flask(f"sec-{root.name}")
    app.config["PROJECT_ROOT"] = str(root)
    marker = root / "deployed"

    @app.route("/deploy", methods=["POST", "PUT", "PATCH", "DELETE"])
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def deploy() -> Any:
        marker.write_text("deployed\n")
        return {"ok": True, "summary": "deployed"}

    @app.get("/status")
    def status() -> Any:
        return {"ok": True}

    RunTracking(app, **tracking)
    return app


@pytest.fixture
def protected(git_repo: Path, collector: Any) -> Flask:
    """``protect=True`` with the collector (runs are seen) and the git ledger."""
    return make_app(git_repo, protect=True)


@pytest.fixture
def guarded(git_repo: Path) -> Flask:
    """``protect=True``, no collector."""
    return make_app(git_repo, protect=True)


def _get(client: Any, path: str, **kwargs: Any) -> Any:
    """GET that never blocks on the endless event stream (its headers are enough)."""
    resp = client.get(path, buffered=False, **kwargs)
    resp.close()
    return resp


# -- same origin for state-changing requests ------------------------------------------------

@pytest.mark.parametrize("headers, body", [
    ({"Sec-Fetch-Site": "same-origin"}, {"data": "a=b"}),
    ({"Sec-Fetch-Site": "none"}, {}),
    ({"Origin": "http://localhost"}, {"data": "a=b",
                                      "content_type": "application/x-www-form-urlencoded"}),
    ({CSRF_HEADER: "1"}, {"json": {"x": 1}}),
    ({"X-Requested-With": "XMLHttpRequest"}, {"json": {}}),
    ({CSRF_HEADER: "1"}, {}),  # an empty body with the header
])
def test_same_origin_requests_run(protected: Flask, collector: Any, headers: dict[str, str],
                                  body: dict[str, Any]) -> None:
    resp = protected.test_client().post("/deploy", headers=headers, **body)
    assert resp.status_code == 200, resp.get_json()
    assert [r.run_id for r in collector.ended] == [resp.headers["X-Run-Id"]]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("headers, body", [
    ({"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}, {"data": "a=b"}),
    ({"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:9999"}, {"json": {}}),
    ({"Sec-Fetch-Site": "cross-site", CSRF_HEADER: "1"}, {"json": {}}),
    ({"Sec-Fetch-Site": "bogus"}, {}),
    ({"Origin": "http://evil.example"}, {"json": {}}),
    ({"Origin": "null"}, {"data": "a=b"}),
    ({"Origin": "http://localhost:9999"}, {}),
    ({"Origin": "https://localhost"}, {}),
    ({}, {}),  # no header at all, empty body
    ({}, {"data": "a=b", "content_type": "application/x-www-form-urlencoded"}),
    ({}, {"data": '{"a": "="}', "content_type": "text/plain"}),
    ({}, {"data": {"a": "b"}}),  # multipart
    ({}, {"json": {"a": 1}}),  # JSON without the header
    ({CSRF_HEADER: "1"}, {"data": "a=b", "content_type": "application/x-www-form-urlencoded"}),
])
def test_cross_site_and_unproven_requests_are_refused_before_any_run(
        protected: Flask, collector: Any, git_repo: Path, method: str, headers: dict[str, str],
        body: dict[str, Any]) -> None:
    resp = protected.test_client().open("/deploy", method=method, headers=headers, **body)
    assert resp.status_code == 403 and resp.is_json
    assert resp.get_json()["status"] == 403 and resp.get_json()["error"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert collector.started == [] and not (git_repo / "deployed").exists()


def test_get_routes_are_not_origin_checked(protected: Flask) -> None:
    resp = protected.test_client().get("/status", headers={"Sec-Fetch-Site": "cross-site"})
    assert resp.status_code == 200


def test_allowed_origins_may_post(git_repo: Path, collector: Any,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_ALLOWED_ORIGINS", "https://ops.example.com, https://b.example/")
    client = make_app(git_repo, protect=True).test_client()
    cross = {"Sec-Fetch-Site": "cross-site"}
    assert client.post("/deploy", headers={**cross, "Origin": "https://ops.example.com"}
                       ).status_code == 200
    assert client.post("/deploy", headers={**cross, "Origin": "https://b.example"}).status_code == 200
    assert client.post("/deploy", headers={**cross, "Origin": "https://c.example"}).status_code == 403


def test_without_protect_the_app_routes_are_untouched(git_repo: Path, collector: Any) -> None:
    client = make_app(git_repo).test_client()  # protect defaults to False: opt-in
    resp = client.post("/deploy", headers={"Sec-Fetch-Site": "cross-site", "Host": "evil.example"})
    assert resp.status_code == 200


# -- Host (DNS rebinding) ------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["localhost", "localhost:5050", "LOCALHOST:80", "localhost.",
                                  "127.0.0.1", "127.0.0.1:8080", "[::1]", "[::1]:5050"])
def test_local_host_names_are_accepted(protected: Flask, host: str) -> None:
    client = protected.test_client()
    assert client.get("/status", headers={"Host": host}).status_code == 200
    assert client.post("/deploy", headers={"Host": host, CSRF_HEADER: "1"}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:5050", "localhost.evil.example",
                                  "127.0.0.1.nip.io", "0.0.0.0", "localhost:abc", "[::1",
                                  "a:b:c", "10.1.2.3"])
def test_other_hosts_are_refused_on_every_method(protected: Flask, collector: Any,
                                                 host: str) -> None:
    client = protected.test_client()
    for resp in (client.get("/status", headers={"Host": host}),
                 client.post("/deploy", headers={"Host": host, "Sec-Fetch-Site": "same-origin"})):
        assert resp.status_code == 400 and resp.is_json
        assert "not allowed" in resp.get_json()["error"]
    assert collector.started == []


def test_the_bound_address_and_configured_names_are_accepted(
        git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_app(git_repo, protect=True).test_client()
    bound = {"SERVER_NAME": "192.168.7.7"}
    assert client.get("/status", headers={"Host": "192.168.7.7:5050"},
                      environ_overrides=bound).status_code == 200
    assert client.get("/status", headers={"Host": "192.168.7.8"},
                      environ_overrides=bound).status_code == 400
    assert client.get("/status", headers={"Host": "0.0.0.0"},
                      environ_overrides={"SERVER_NAME": "0.0.0.0"}).status_code == 400
    monkeypatch.setenv("OTEL_RUNS_ALLOWED_HOSTS", "ops.example.com, ops")
    assert client.get("/status", headers={"Host": "ops.example.com:443"}).status_code == 200
    assert client.get("/status", headers={"Host": "ops"}).status_code == 200
    assert client.get("/status", headers={"Host": "evil.example"}).status_code == 400
    app = make_app(git_repo, protect=True)
    app.config["OTEL_RUNS_ALLOWED_HOSTS"] = ["*"]
    assert app.test_client().get("/status", headers={"Host": "any.example"}).status_code == 200


# -- private by default ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", API_PATHS)
def test_api_stream_and_page_refuse_non_loopback_clients(git_repo: Path, path: str) -> None:
    client = make_app(git_repo).test_client()
    resp = _get(client, path, environ_overrides={"REMOTE_ADDR": "10.1.2.3"})
    assert resp.status_code == 403 and resp.is_json
    assert "loopback" in resp.get_json()["error"]
    for local in ("127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"):
        assert _get(client, path, environ_overrides={"REMOTE_ADDR": local}).status_code in (200, 404)


@pytest.mark.parametrize("path", API_PATHS)
def test_authorize_or_public_opens_the_api(git_repo: Path, path: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    remote = {"environ_overrides": {"REMOTE_ADDR": "10.1.2.3"}}
    authorized = make_app(git_repo, authorize=lambda request: True).test_client()
    assert _get(authorized, path, **remote).status_code in (200, 404)
    monkeypatch.setenv("OTEL_RUNS_API_PUBLIC", "1")
    public = make_app(git_repo).test_client()
    assert _get(public, path, **remote).status_code in (200, 404)
    assert _get(public, path, headers={"Host": "runs.example.com"}, **remote).status_code in (200, 404)


def test_api_refuses_a_rebinding_host_even_from_loopback(git_repo: Path) -> None:
    client = make_app(git_repo).test_client()
    resp = client.get("/api/runs/recent", headers={"Host": "evil.example"})
    assert resp.status_code == 400 and resp.is_json


def test_app_config_can_make_the_api_public(git_repo: Path) -> None:
    app = Flask("public")
    app.config.update(PROJECT_ROOT=str(git_repo), OTEL_RUNS_API_PUBLIC=True)
    RunTracking(app)
    assert app.test_client().get("/api/runs/recent", environ_overrides={
        "REMOTE_ADDR": "10.1.2.3"}).status_code == 200


def test_the_app_routes_are_not_made_private(git_repo: Path, collector: Any) -> None:
    resp = make_app(git_repo).test_client().post(
        "/deploy", environ_overrides={"REMOTE_ADDR": "10.1.2.3"})
    assert resp.status_code == 200


def test_one_line_at_start_up_says_who_the_api_answers(
        git_repo: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="otel_runs")
    make_app(git_repo)
    make_app(git_repo, authorize=lambda request: True)
    monkeypatch.setenv("OTEL_RUNS_API_PUBLIC", "1")
    make_app(git_repo)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if "/api/events" in r.getMessage()]
    assert len(lines) == 3 and all("\n" not in text for _, text in lines)
    assert lines[0][0] == "INFO" and "loopback clients only" in lines[0][1]
    assert lines[1][0] == "INFO" and "authorize=" in lines[1][1]
    assert lines[2][0] == "WARNING" and "every client" in lines[2][1]


# -- security headers -------------------------------------------------------------------------------

def _assert_secure(resp: Any, ancestors: str = "'none'") -> None:
    csp = resp.headers.get("Content-Security-Policy", "")
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert "unsafe" not in csp and directives["frame-ancestors"] == ancestors
    assert resp.headers["X-Frame-Options"] == {"'none'": "DENY", "'self'": "SAMEORIGIN"}[ancestors]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("method, path, env", [
    ("GET", "/runs", {}), ("GET", "/runs/assets/runs.js", {}), ("GET", "/runs/assets/runs.css", {}),
    ("GET", "/runs/assets/nope.js", {}), ("GET", "/api/runs/recent", {}),
    ("GET", "/api/runs/search?q=x", {}), ("GET", f"/api/runs/{RUN_ID}", {}),
    ("GET", "/api/runs/bad-id", {}), ("GET", "/api/runs/recent?limit=0", {}),
    ("GET", "/api/nope", {}), ("GET", "/api/events/x", {}), ("POST", "/api/runs/recent", {}),
    ("GET", "/api/events", {}), ("GET", "/runs", {"REMOTE_ADDR": "10.1.2.3"}),
])
def test_every_otel_runs_response_has_the_security_headers(guarded: Any, method: str,
                                                           path: str, env: dict[str, str]) -> None:
    resp = guarded.test_client().open(path, method=method, environ_overrides=env,
                                           buffered=False)
    resp.close()
    _assert_secure(resp)


def test_protect_refusals_have_the_security_headers(protected: Flask) -> None:
    client = protected.test_client()
    _assert_secure(client.post("/deploy", headers={"Sec-Fetch-Site": "cross-site"}))
    _assert_secure(client.get("/status", headers={"Host": "evil.example"}))


class _Markup(HTMLParser):
    """Inline scripts, styles and event-handler attributes of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and "src" not in names and names.get("type") != "application/json":
            self.inline.append("inline <script>")
        if tag == "style" or "style" in names:
            self.inline.append(f"inline style on <{tag}>")
        self.inline += [f"{k}= on <{tag}>" for k in names if k.startswith("on")]


def _inline_parts(html: str) -> list[str]:
    parser = _Markup()
    parser.feed(html)
    return parser.inline


def test_pages_have_no_inline_script_or_style(tmp_path: Path, git_repo: Path) -> None:
    page = make_app(git_repo).test_client().get("/runs").get_data(as_text=True)
    assert _inline_parts(page) == []
    demo = create_demo_app(tmp_path / "demo", delay=0, failure_rate=0).test_client()
    assert _inline_parts(demo.get("/").get_data(as_text=True)) == []


def test_every_demo_response_has_the_demo_headers(tmp_path: Path, collector: Any) -> None:
    client = create_demo_app(tmp_path / "demo", delay=0, failure_rate=0).test_client()
    same = {CSRF_HEADER: "1"}
    responses = [client.get("/"), client.get("/demo/actions"), client.get("/demo/static/demo.js"),
                 client.get("/demo/static/demo.css"), client.get("/runs"),
                 client.get("/runs/assets/runs.js"), client.get("/api/runs/recent"),
                 client.post("/k8s/apply", json={}, headers=same),
                 client.post("/k8s/apply", json={}), client.get("/api/nope"),
                 client.post("/k8s/apply", json={"pad": "x" * 70_000}, headers=same)]
    assert [r.status_code for r in responses] == [200] * 8 + [403, 404, 413]
    for resp in responses[:8]:
        _assert_secure(resp, "'self'")  # the demo frames its runs page
    home = responses[0].headers["Content-Security-Policy"]
    assert "frame-src 'self'" in home


# -- strict parameters and JSON 404s ---------------------------------------------------------------

@pytest.mark.parametrize("value", ["\uff15", "\u0663", "1_0", "+5", " 5", "5 ", "0x5", "1e2",
                                   "\u00b2", "-0", "5.0", "9" * 20, "\u0665\u0660"])
@pytest.mark.parametrize("endpoint, query", [("/api/runs/recent", {}),
                                             ("/api/runs/search", {"q": "a"})])
def test_limits_take_ascii_digits_only(guarded: Flask, endpoint: str, query: dict[str, str],
                                       value: str) -> None:
    resp = guarded.test_client().get(endpoint, query_string={**query, "limit": value})
    assert resp.status_code == 400 and resp.is_json and "limit" in resp.get_json()["error"]


def test_recent_limit_is_capped_with_a_message_naming_the_maximum(guarded: Flask) -> None:
    from otel_runs.api import MAX_RECENT_LIMIT

    client = guarded.test_client()
    assert client.get(f"/api/runs/recent?limit={MAX_RECENT_LIMIT}").status_code == 200
    assert client.get("/api/runs/recent?limit=007").get_json()["limit"] == 7
    resp = client.get(f"/api/runs/recent?limit={MAX_RECENT_LIMIT + 1}")
    assert resp.status_code == 400 and str(MAX_RECENT_LIMIT) in resp.get_json()["error"]


@pytest.mark.parametrize("run_id", ["20261127T101500123Z-3fa9c2d1e\u0665",
                                    "2026112\uff17T101500123Z-3fa9c2d1e5",
                                    "20261127T101500123Z-3fa9c2d1e5\n", RUN_ID.upper()])
def test_run_ids_take_ascii_only(guarded: Flask, run_id: str) -> None:
    resp = guarded.test_client().get("/api/runs/" + requests.utils.quote(run_id))
    assert resp.status_code == 400 and resp.is_json


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/nope", "/api/events/", "/api/events/x",
                                  "/api/events/x/y", "/api/runs", "/api/runs/", "/api/runs/recent/"])
def test_unknown_api_paths_are_json_404(guarded: Flask, path: str) -> None:
    resp = guarded.test_client().get(path)
    assert resp.status_code == 404 and resp.is_json, (path, resp.status_code)


def test_an_app_keeps_its_own_404_for_its_own_api_paths(git_repo: Path) -> None:
    app = Flask("own404")
    app.config["PROJECT_ROOT"] = str(git_repo)

    @app.errorhandler(404)
    def mine(exc: Exception) -> tuple[str, int]:
        return "my own 404 page", 404

    RunTracking(app)
    client = app.test_client()
    assert client.get("/api/mine").get_data() == b"my own 404 page"
    assert client.get("/api/events/x").is_json and client.get("/api/runs/x/y").is_json


# -- the demo's bodies -----------------------------------------------------------------------------

def test_demo_bodies_are_bounded_before_any_run(tmp_path: Path, collector: Any,
                                                live_server: Any) -> None:
    from otel_runs.demo._web import MAX_BODY

    server = live_server(create_demo_app(tmp_path / "demo", delay=0, failure_rate=0))
    same = {CSRF_HEADER: "1", "Content-Type": "application/json"}
    big = b'{"pad": "' + b"x" * MAX_BODY + b'"}'
    declared = requests.post(server.url + "/k8s/apply", data=big, headers=same, timeout=30)
    chunked = requests.post(server.url + "/k8s/apply", data=iter([big[:1000], big[1000:]]),
                            headers=same, timeout=30)
    for resp in (declared, chunked):
        assert resp.status_code == 413 and resp.json()["status"] == 413
    assert collector.started == []
    small = requests.post(server.url + "/k8s/apply", data=b'{"pad": "x"}', headers=same, timeout=30)
    assert small.status_code == 200 and small.json()["ok"]


@pytest.mark.parametrize("value", ["'self'; script-src *", "'none' 'self'", "javascript:x", ""])
def test_a_bad_frame_ancestors_setting_fails_at_start_up(git_repo: Path, value: str) -> None:
    app = Flask("frames")
    app.config.update(PROJECT_ROOT=str(git_repo), OTEL_RUNS_FRAME_ANCESTORS=value or " ")
    with pytest.raises(ValueError, match="OTEL_RUNS_FRAME_ANCESTORS"):
        RunTracking(app)


def test_frame_ancestors_can_name_the_apps_own_ui(git_repo: Path) -> None:
    app = Flask("frames")
    app.config.update(PROJECT_ROOT=str(git_repo),
                      OTEL_RUNS_FRAME_ANCESTORS="'self' https://ops.example.com")
    RunTracking(app)
    resp = app.test_client().get("/runs")
    assert "frame-ancestors 'self' https://ops.example.com" in resp.headers["Content-Security-Policy"]
    assert "X-Frame-Options" not in resp.headers  # it cannot say "these origins"
