"""Cross-site attacks in a real browser (Playwright + Debian's Chromium) against real
servers on 127.0.0.1: the demo and a small ``RunTracking(app, protect=True)`` app.

An attacker page from another origin (another port, or another name that Chromium
resolves to 127.0.0.1) auto-submits forms and ``fetch(..., {mode: "no-cors"})``s to
state-changing routes: every request reaches the server and is refused, no run
starts, the demo's world (its git project, remote, teammate, files) is unchanged.
A DNS-rebinding page (its own name, same-origin from the browser's point of view)
is refused by the ``Host`` check. The demo's own page still runs an action.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, wait_until
from flask import Flask, Response, request

import otel_runs
from otel_runs.demo import create_demo_app
from otel_runs.flask import RunTracking
from otel_runs.ledger import ledger_for

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHROMIUM = "/usr/bin/chromium"
#: ``attacker.test`` and ``evil.example`` resolve to 127.0.0.1 in this browser only.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--host-resolver-rules=MAP attacker.test 127.0.0.1, MAP evil.example 127.0.0.1"]
#: Demo routes an attacker wants: change origin, commit, push, pull, write and run tests
#: (code execution), wipe data, destroy infrastructure, create a vault.
DEMO_TARGETS = {"/git/remote/set-url": {"name": "origin", "url": "/tmp/attacker.git"},
                "/git/commit": {"message": "pwned"}, "/git/push": {}, "/git/pull": {},
                "/testing/generate/template": {}, "/testing/run": {}, "/backup/wipe": {},
                "/terraform/destroy": {}, "/vault/create": {"passphrase": "attacker"}}
ENCTYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
#: Per target: one form per enctype, two no-cors fetches, one beacon reach the server.
POSTS_PER_TARGET = len(ENCTYPES) + 3


class Recorder:
    """Every request a Flask app answered (method, path, status, Host), via after_request."""

    def __init__(self, app: Flask) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, int, str]] = []
        app.after_request(self._record)

    def _record(self, resp: Response) -> Response:
        with self.lock:
            self.seen.append((request.method, request.path, resp.status_code, request.host))
        return resp

    def posts(self) -> list[tuple[str, str, int, str]]:
        with self.lock:
            return [s for s in self.seen if s[0] == "POST"]


class AttackerSite:
    """A tiny HTTP server on 127.0.0.1 serving fixed pages (the other origin)."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                body = pages.get(self.path.split("?")[0], "not here").encode()
                self.send_response(200 if self.path.split("?")[0] in pages else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def attack_page(targets: dict[str, dict[str, str]]) -> str:
    """Forms (every enctype) auto-submitted into hidden frames, no-cors fetches (one
    trying JSON headers, which no-cors drops), a beacon, and a CORS fetch with the
    custom header (its preflight is never granted)."""
    forms = []
    for i, (url, fields) in enumerate(targets.items()):
        for j, enctype in enumerate(ENCTYPES):
            name = f"f{i}_{j}"
            inputs = "".join(f'<input name="{k}" value="{v}">' for k, v in fields.items())
            if enctype == "text/plain":  # the classic JSON-shaped text/plain body
                inputs = f"<input name='{json.dumps(fields)[:-1]}, \"x\": \"' value='\"}}'>"
            forms.append(f'<iframe name="{name}" hidden></iframe><form method="POST" '
                         f'action="{url}" enctype="{enctype}" target="{name}">{inputs}</form>')
    script = """
    const targets = __TARGETS__;
    document.querySelectorAll("form").forEach((f) => f.submit());
    const calls = [];
    for (const [url, fields] of Object.entries(targets)) {
      const body = JSON.stringify(fields);
      calls.push(fetch(url, {method: "POST", mode: "no-cors", credentials: "include", body}));
      calls.push(fetch(url, {method: "POST", mode: "no-cors", body, headers:
        {"Content-Type": "application/json", "X-Otel-Runs-CSRF": "1"}}));
      calls.push(fetch(url, {method: "POST", mode: "cors", body, headers:
        {"Content-Type": "application/json", "X-Otel-Runs-CSRF": "1"}}));
      navigator.sendBeacon(url, body);
    }
    Promise.allSettled(calls).then((r) => { window.settled = r.map((x) => x.status); });
    """.replace("__TARGETS__", json.dumps(targets))
    return ("<!doctype html><title>cute cats</title>" + "".join(forms)
            + f"<script>{script}</script>")


def world(demo: Flask) -> dict[str, Any]:
    """What an action would change: git state of project, remote and teammate, files."""
    state = demo.extensions["otel_runs_demo"]

    def git(cwd: Path, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=30).stdout

    files = {str(p.relative_to(state.base)): p.read_bytes() for p in sorted(state.base.rglob("*"))
             if p.is_file() and ".git" not in p.relative_to(state.base).parts
             and "remote.git" not in p.relative_to(state.base).parts}
    return {"remotes": git(state.project, "remote", "-v"),
            "project": git(state.project, "for-each-ref", "refs/heads", "refs/remotes"),
            "remote": git(state.remote, "for-each-ref"),
            "teammate": git(state.teammate, "rev-parse", "HEAD"), "files": files}


def no_runs(root: str | Path) -> bool:
    otel_runs.flush()
    return ledger_for(str(root)).recent(limit=10) == []


#: Chromium's own Local Network Access check blocks a page from a public address
#: (here: a page the test serves through Playwright) from reaching loopback. The
#: rebinding test turns it off, as in browsers without it, to show that the server
#: refuses such requests by itself.
WITHOUT_LNA = ["--disable-features=LocalNetworkAccessChecks"]


@pytest.fixture
def open_page(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``open_page(extra_args=())``: a new page in a fresh headless Chromium."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium; .ci/run does)")
    with sync_api.sync_playwright() as pw:
        browsers: list[Any] = []

        def launch(extra_args: tuple[str, ...] | list[str] = ()) -> Any:
            chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                          args=CHROMIUM_ARGS + list(extra_args))
            browsers.append(chromium)
            pg = chromium.new_context(viewport={"width": 1280, "height": 800}).new_page()
            pg.set_default_timeout(30_000)
            return pg

        yield launch
        for chromium in browsers:
            chromium.close()


@pytest.fixture
def page(open_page: Any) -> Any:
    return open_page()


@pytest.fixture
def attacker() -> Iterator[AttackerSite]:
    site = AttackerSite()
    yield site
    site.stop()


@pytest.fixture
def demo(tmp_path: Path) -> Flask:
    return create_demo_app(tmp_path / "demo", delay=0, failure_rate=0)


def tracked_app(root: Path, *, protect: bool = True) -> Flask:
    """A user's app: one tracked POST route with a side effect, ``protect=True``."""
    app = Flask("victim")
    app.config["PROJECT_ROOT"] = str(root)

    @app.post("/deploy")
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def deploy() -> Any:
        (root / "deployed").write_text("deployed\n")
        return {"ok": True, "summary": "deployed"}

    RunTracking(app, protect=protect)
    return app


@pytest.mark.parametrize("attacker_host", ["attacker.test", "127.0.0.1"],
                         ids=["cross-site", "same-site-other-port"])
def test_a_page_of_another_origin_runs_nothing(demo: Flask, git_repo: Path, live_server: Any,
                                               attacker: AttackerSite, page: Any,
                                               attacker_host: str) -> None:
    victim = tracked_app(git_repo)
    demo_log, victim_log = Recorder(demo), Recorder(victim)
    demo_srv, victim_srv = live_server(demo), live_server(victim)
    before = world(demo)
    targets = {demo_srv.url + path: fields for path, fields in DEMO_TARGETS.items()}
    targets[victim_srv.url + "/deploy"] = {"target": "prod"}
    attacker.pages["/cats.html"] = attack_page(targets)

    page.goto(f"http://{attacker_host}:{attacker.port}/cats.html")
    page.wait_for_function("window.settled && window.settled.length > 0", timeout=30_000)
    expected = POSTS_PER_TARGET * len(DEMO_TARGETS)
    wait_until(lambda: len(demo_log.posts()) >= expected and len(victim_log.posts())
               >= POSTS_PER_TARGET, timeout=30)

    for log, count in ((demo_log, expected), (victim_log, POSTS_PER_TARGET)):
        posts = log.posts()
        assert len(posts) == count  # the CORS fetches never got past their preflight
        assert {status for _, _, status, _ in posts} == {403}, posts
    assert {p for _, p, _, _ in demo_log.posts()} == set(DEMO_TARGETS)
    assert no_runs(demo.config["PROJECT_ROOT"]) and no_runs(git_repo)
    assert world(demo) == before
    assert not (git_repo / "deployed").exists()


def test_without_protect_the_same_page_would_run_the_action(
        git_repo: Path, live_server: Any, attacker: AttackerSite, page: Any) -> None:
    """The control: the attack above is real (what ``protect=True`` prevents)."""
    victim = tracked_app(git_repo, protect=False)
    log = Recorder(victim)
    srv = live_server(victim)
    attacker.pages["/cats.html"] = attack_page({srv.url + "/deploy": {"target": "prod"}})
    page.goto(f"http://attacker.test:{attacker.port}/cats.html")
    wait_until(lambda: len(log.posts()) >= POSTS_PER_TARGET, timeout=30)
    assert {status for _, _, status, _ in log.posts()} == {200}
    assert (git_repo / "deployed").exists()
    otel_runs.flush()
    assert len(ledger_for(str(git_repo)).recent(limit=50)) == POSTS_PER_TARGET


def test_a_dns_rebinding_page_is_refused(demo: Flask, live_server: Any, open_page: Any) -> None:
    """``evil.example`` resolves to the demo: the page's requests are same-origin to the
    browser, but they name evil.example in ``Host``."""
    page = open_page(WITHOUT_LNA)
    log = Recorder(demo)
    srv = live_server(demo)
    before = world(demo)
    origin = f"http://evil.example:{srv.port}"
    direct = page.goto(origin + "/")
    assert direct is not None and direct.status == 400
    rebind = """<!doctype html><script>
      const status = (r) => r.status, failed = (e) => String(e);
      const post = fetch("/git/push", {method: "POST", body: "{}", headers:
        {"Content-Type": "application/json", "X-Otel-Runs-CSRF": "1"}}).then(status, failed);
      const read = fetch("/api/runs/recent").then(status, failed);
      Promise.all([post, read]).then((s) => { window.statuses = s; });
    </script>"""
    page.route(origin + "/rebind", lambda route: route.fulfill(
        status=200, content_type="text/html", body=rebind))
    page.goto(origin + "/rebind")
    page.wait_for_function("window.statuses !== undefined")
    assert page.evaluate("window.statuses") == [400, 400]
    hosts = {(m, p, s, h) for m, p, s, h in log.seen}
    assert ("POST", "/git/push", 400, f"evil.example:{srv.port}") in hosts
    assert ("GET", "/api/runs/recent", 400, f"evil.example:{srv.port}") in hosts
    assert no_runs(demo.config["PROJECT_ROOT"]) and world(demo) == before


def test_the_demo_page_still_runs_an_action(demo: Flask, live_server: Any, page: Any,
                                            tmp_path: Path) -> None:
    srv = live_server(demo)
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    before = world(demo)["project"]
    page.goto(srv.url + "/")
    runs = page.frame_locator("iframe").locator("#conn")
    sync_api.expect(runs).to_have_attribute("data-state", "live")
    page.locator('button[data-subtype="git:commit"]').click()
    sync_api.expect(page.locator("#log li").first).to_contain_text("Committed")
    sync_api.expect(page.locator("#log li .st").first).to_have_text("ok")
    row = page.frame_locator("iframe").locator('#runs-body tr[data-status="ok"]')
    sync_api.expect(row).to_have_count(1)
    sync_api.expect(row).to_contain_text("git:commit")
    otel_runs.flush()
    (run,) = ledger_for(demo.config["PROJECT_ROOT"]).recent(limit=10)
    assert (run.subtype, run.status) == ("git:commit", "ok")
    assert world(demo)["project"] != before  # the commit really happened
    assert problems == []  # no CSP violation, no script error
    if os.environ.get("OTEL_RUNS_KEEP_SCREENSHOT"):
        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
