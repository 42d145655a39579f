"""The runs pages as a new user meets them, in Debian's Chromium at three screen widths:
a run's own page (timeline, output, failure), the list (click, search, load older,
filters in the URL), no console errors, and axe-core finding no serious violations.

Screenshots go to ``OTEL_RUNS_SCREENSHOTS`` (default: ``otel-runs-screenshots`` in the
temp dir, which pytest does not rotate); the folder is printed."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import free_port, port_open, stop_child, wait_until

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
AXE = HERE / "axe" / "axe.min.js"
VIEWPORTS = {"phone": (390, 844), "laptop": (1280, 800), "desktop": (1920, 1080)}
SEEDED = 130  # more than one page (100) of the list


class Site:
    """The test control plane (tests/runs_ui_app.py) in a child process, with runs."""

    def __init__(self, root: Path, control: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.control = control
        env = {**os.environ, "OTEL_RUNS_TRACE_URL": "http://localhost:16686/trace/{trace_id}",
               "PYTHONPATH": str(HERE.parent)}
        self.proc = subprocess.Popen([sys.executable, str(HERE / "runs_ui_app.py"), str(self.port),
                                      str(root), str(control)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.proc.poll() is None and port_open(self.port), timeout=30)
        self.ids: dict[str, str] = {}

    def post(self, path: str) -> str:
        resp = requests.post(self.url + path, timeout=90)
        return resp.headers.get("X-Run-Id", "")

    def released(self, name: str) -> None:
        (self.control / f"release-{name}").touch()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("runs-ui")
    root, control = base / "project", base / "control"
    control.mkdir()
    root.mkdir()
    for args in (["init", "-q", "-b", "main"], ["config", "user.name", "t"],
                 ["config", "user.email", "t@example.com"],
                 ["commit", "-q", "--allow-empty", "-m", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    srv = Site(root, control)
    try:
        srv.post(f"/seed/{SEEDED}")
        srv.post("/seed/1?long=1")
        srv.ids["ci"] = srv.post("/ci")
        srv.ids["fail"] = srv.post("/fail")
        srv.released("docs")
        srv.ids["build"] = srv.post("/work/docs")
        yield srv
    finally:
        stop_child(srv.proc)


@pytest.fixture(scope="module")
def shots(pytestconfig: pytest.Config) -> Path:
    folder = Path(os.environ.get("OTEL_RUNS_SCREENSHOTS")
                  or Path(tempfile.gettempdir()) / "otel-runs-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\nruns page screenshots: {folder}")  # shown also when output is captured
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium; .ci/run does)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Page:
    """A page at one viewport that records console errors (the run output endpoint's
    404, for runs without output or before it exists, is expected and left out)."""

    def __init__(self, browser: Any, size: tuple[int, int], bypass_csp: bool = False) -> None:
        self.context = browser.new_context(viewport={"width": size[0], "height": size[1]},
                                           bypass_csp=bypass_csp)
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, msg: Any) -> None:
        url = (msg.location or {}).get("url", "")
        if msg.type == "error" and not (re.search(r"/api/runs/[^/]+/output", url) and "404" in msg.text):
            self.errors.append(f"{msg.text} ({url})")


@pytest.fixture(params=list(VIEWPORTS), scope="module")
def viewport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def tab(browser: Any, viewport: str) -> Iterator[Page]:
    pg = Page(browser, VIEWPORTS[viewport])
    yield pg
    pg.context.close()
    assert pg.errors == [], pg.errors


def test_a_run_page_opened_directly_shows_its_timeline_output_and_failure(
        site: Site, tab: Page, viewport: str, shots: Path) -> None:
    page = tab.page
    page.goto(f"{site.url}/runs/{site.ids['build']}")
    expect(page).to_have_title(re.compile(r"^build:docs · ok"))
    expect(page.locator("h1")).to_contain_text("build:docs")
    rows = page.locator("#timeline .tl-rows > li")
    expect(rows).to_have_count(5)  # the run and its four spans
    expect(page.locator('#timeline li[data-span="git fetch"]')).to_have_count(1)
    expect(page.locator('#timeline li[data-span="publish"]')).to_have_attribute("data-status", "failed")
    expect(page.locator('#timeline li[data-span="render"] .tl-status')).to_have_text("done")
    page.locator('#timeline li[data-span="checkout"] button').click()
    expect(page.locator('#timeline li[data-span="checkout"] .tl-attrs')).to_contain_text("git.ref")
    output = page.locator("#output")
    expect(output).to_be_visible()
    expect(output.locator(".out-line")).to_have_count(3)
    expect(output.locator(".sgr-bold")).to_have_text("building")
    expect(output.locator(".out-line.err .sgr-fg-yellow")).to_have_text("warning:")
    expect(page.locator("#events")).to_contain_text("queued")
    expect(page.locator("#events td").first).to_have_text(re.compile(r"^\+[\d.]+ (ms|s)$"))
    expect(page.locator("time").first).to_have_attribute("title", re.compile(r"^UTC \d{4}-"))
    expect(page.locator("#trace-link")).to_have_attribute(
        "href", re.compile(r"^http://localhost:16686/trace/[0-9a-f]{32}$"))
    page.screenshot(path=str(shots / f"run-build-{viewport}.png"), full_page=True)

    page.goto(f"{site.url}/runs/{site.ids['fail']}")
    failure = page.locator("#failure")
    expect(failure.locator(".exc-type")).to_have_text("RuntimeError")
    expect(failure.locator(".exc-message")).to_have_text("rollout aborted")
    assert failure.locator(".stack-line").count() > 5  # one element per line
    expect(page.locator("#events")).not_to_contain_text("exception.escaped")
    expect(page.locator("#output")).to_be_hidden()  # no output: the panel stays hidden
    page.screenshot(path=str(shots / f"run-failed-{viewport}.png"), full_page=True)

    page.goto(f"{site.url}/runs/{site.ids['ci']}")
    children = page.locator("#children li")
    expect(children).to_have_count(2)
    children.first.locator("a").click()
    expect(page.locator("#parent-link")).to_have_text(site.ids["ci"])


def test_clicking_a_row_brings_the_run_into_view(site: Site, tab: Page, viewport: str,
                                                 shots: Path) -> None:
    page = tab.page
    page.goto(site.url + "/runs")
    rows = page.locator("#runs-body tr")
    expect(rows.nth(60)).to_be_visible()
    row = rows.nth(60)
    run_id = row.get_attribute("data-run-id")
    row.locator("td.c-summary").click()
    detail = page.locator("#detail-body")
    expect(detail).to_contain_text(str(run_id))
    expect(page.locator("#detail .run-title")).to_be_in_viewport()
    assert f"run={run_id}" in page.url
    page.screenshot(path=str(shots / f"list-detail-{viewport}.png"))
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    # Keyboard: j/k move between rows, Enter opens the detail.
    page.locator("#runs-body tr").first.focus()
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("k")
    second = page.locator("#runs-body tr").nth(1)
    expect(second).to_be_focused()
    page.keyboard.press("Enter")
    expect(detail).to_contain_text(str(second.get_attribute("data-run-id")))


def test_search_autocomplete_and_free_text(site: Site, tab: Page, viewport: str,
                                           shots: Path) -> None:
    page = tab.page
    page.goto(site.url + "/runs")
    expect(page.locator("#runs-body tr").first).to_be_visible()
    box = page.locator("#search")
    box.fill("rollout")
    expect(page.locator("#runs-body tr")).to_have_count(1)
    expect(page.locator("#runs-body tr")).to_contain_text("deploy:k8s")
    expect(page.locator("#suggest li[role=option]").first).to_contain_text("rollout aborted")
    page.screenshot(path=str(shots / f"search-{viewport}.png"))
    box.fill("@run:" + site.ids["fail"][:22])
    option = page.locator("#suggest li[role=option]").first
    expect(page.locator("#suggest li[role=option]")).to_have_count(1)
    expect(option).to_have_attribute("data-run-id", site.ids["fail"])
    box.press("ArrowDown")
    expect(option).to_have_attribute("aria-selected", "true")
    box.press("Enter")
    expect(page).to_have_url(f"{site.url}/runs/{site.ids['fail']}")
    expect(page.locator("h1")).to_contain_text("deploy:k8s")


def test_load_older_counts_and_filters_in_the_url(site: Site, tab: Page, viewport: str,
                                                  shots: Path) -> None:
    page = tab.page
    total = len(requests.get(site.url + "/api/runs/recent?limit=500", timeout=30).json()["runs"])
    assert total >= SEEDED + 1 + 3 + 1 + 1  # the seeded runs, a long summary, ci, fail, build
    page.goto(site.url + "/runs")
    rows = page.locator("#runs-body tr")
    expect(rows).to_have_count(100)
    page.locator("#load-older").click()
    expect(rows).to_have_count(total)
    expect(page.locator("#older-note")).to_contain_text("All runs loaded")
    expect(page.locator("#load-older")).to_be_hidden()
    failed = page.locator('#status-counts button[data-status="failed"]')
    expect(failed).to_contain_text(re.compile(r"failed \d+"))
    n_failed = int(failed.inner_text().split()[-1])
    page.select_option("#filter-type", "scan")
    page.select_option("#filter-status", "failed")
    expect(rows).to_have_count(n_failed - 1)  # every failed run but the deploy
    page.screenshot(path=str(shots / f"list-filtered-{viewport}.png"), full_page=True)
    page.reload()
    expect(page.locator("#filter-type")).to_have_value("scan")
    expect(page.locator("#filter-status")).to_have_value("failed")
    assert "type=scan" in page.url and "status=failed" in page.url
    expect(rows.first).to_have_attribute("data-status", "failed")
    page.fill("#filter-subtype", "no-such-subtype")
    expect(rows).to_have_count(0)
    expect(page.locator("#empty")).to_contain_text("no-such-subtype")
    expect(page.locator("#empty")).to_contain_text("failed")
    page.locator("#empty-clear").click()
    expect(page.locator("#filter-status")).to_have_value("")
    expect(rows.first).to_be_visible()


def test_a_running_run_page_tails_its_output(site: Site, browser: Any, shots: Path) -> None:
    tab = Page(browser, VIEWPORTS["laptop"])
    page = tab.page
    result: dict[str, str] = {}
    thread = threading.Thread(target=lambda: result.update(id=site.post("/work/live")), daemon=True)
    thread.start()
    page.goto(site.url + "/runs")
    running = page.locator('#runs-body tr[data-status="running"]')
    expect(running).to_have_count(1)
    run_id = running.get_attribute("data-run-id")
    page.goto(f"{site.url}/runs/{run_id}")
    expect(page.locator(".run-title .badge")).to_have_text("running")
    lines = page.locator("#output .out-line")
    box = page.locator("#output .out-lines")
    expect(lines.nth(2)).to_be_visible()
    expect(lines.nth(40)).to_be_attached(timeout=30_000)  # more lines arrive while it runs
    assert box.evaluate("b => b.scrollHeight - b.scrollTop - b.clientHeight") < 30  # tailing
    # Child spans that ended show in the timeline while the run runs (journaled as they end).
    expect(page.locator('#timeline li[data-span="prefetch"]')).to_have_count(1, timeout=30_000)
    expect(page.locator('#timeline li[data-span="git fetch"]')).to_have_count(1)
    expect(page.locator("#events")).to_contain_text("queued")  # its events so far too
    expect(page.locator(".run-title .badge")).to_have_text("running")
    page.screenshot(path=str(shots / "run-live-laptop.png"))
    box.evaluate("b => { b.scrollTop = 0; }")  # the reader scrolls up: the tail stops
    expect(page.locator("#output button", has_text="Follow output")).to_be_visible()
    seen = lines.count()
    expect(lines.nth(seen + 3)).to_be_attached(timeout=30_000)
    assert box.evaluate("b => b.scrollTop") == 0
    page.locator("#output button", has_text="Follow output").click()
    assert box.evaluate("b => b.scrollHeight - b.scrollTop - b.clientHeight") < 30
    site.released("live")
    thread.join(60)
    assert result["id"] == run_id
    expect(page.locator(".run-title .badge")).to_have_text("ok", timeout=30_000)
    expect(page.locator("#output .out-status")).not_to_contain_text("live")
    tab.context.close()
    assert tab.errors == []


@pytest.mark.parametrize("which", ["list", "run", "failed"])
def test_no_serious_accessibility_violations(site: Site, browser: Any, viewport: str,
                                             which: str, shots: Path) -> None:
    tab = Page(browser, VIEWPORTS[viewport], bypass_csp=True)  # to inject axe-core
    page = tab.page
    url = {"list": "/runs", "run": f"/runs/{site.ids['build']}",
           "failed": f"/runs/{site.ids['fail']}"}[which]
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.goto(site.url + url)
        page.locator("h1").wait_for()
        expect(page.locator("#runs-body tr, #spans").first).to_be_visible()
        page.add_script_tag(path=str(AXE))
        found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']}))
            .violations.filter(v => ['serious', 'critical'].includes(v.impact))
            .map(v => v.id + ': ' + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', '))""")
        assert found == [], (scheme, found)
        if scheme == "dark":
            page.screenshot(path=str(shots / f"dark-{which}-{viewport}.png"))
    tab.context.close()


def test_counts_come_from_the_server_and_filters_survive_reload_and_load_older(
        site: Site, browser: Any, shots: Path) -> None:
    """The counts per status are the server's for the filter (not of the loaded runs), a
    subtype and time range filter is sent with every page asked (load older too), kept
    in the URL, and the counts follow live runs."""
    tab = Page(browser, VIEWPORTS["laptop"])
    page = tab.page
    asked: list[str] = []
    page.on("request", lambda req: asked.append(req.url) if "/api/runs/" in req.url else None)
    page.goto(site.url + "/runs?subtype=scan:deps&range=24h")
    rows = page.locator("#runs-body tr")
    expect(rows).to_have_count(100)
    server = requests.get(site.url + "/api/runs/counts?subtype=scan:deps", timeout=30).json()
    assert server["total"] == SEEDED + 1 and server["exact"] is True  # more than a page

    def shows(counts: dict[str, int]) -> None:
        for status, n in counts.items():
            chip = page.locator(f'#status-counts button[data-status="{status}"]')
            if n:
                expect(chip).to_have_attribute("data-count", str(n))
                expect(chip).to_contain_text(f"{status} {n}")
            else:
                expect(chip).to_have_count(0)

    shows(server["counts"])
    expect(page.locator("#count")).to_contain_text(f"100 shown of {server['total']}")
    # The runs-over-time chart draws the server's histogram of the whole filter.
    chart = page.locator("#chart-runs")
    expect(chart).to_have_attribute("data-source", "server")
    expect(chart).to_have_attribute("data-total", str(server["total"]))
    page.reload()
    expect(page.locator("#filter-subtype")).to_have_value("scan:deps")
    expect(page.locator("#filter-range")).to_have_value("24h")
    expect(rows).to_have_count(100)
    shows(server["counts"])
    page.locator("#load-older").click()
    expect(rows).to_have_count(SEEDED + 1)
    expect(page.locator("#older-note")).to_contain_text("All runs loaded")
    assert set(page.locator("#runs-body .subtype").all_inner_texts()) == {"scan:deps"}
    listed = [u for u in asked if "/api/runs/recent" in u and "status=running" not in u]
    assert any("before=" in u for u in listed)
    assert all("subtype=scan%3Adeps" in u and "since=" in u for u in listed), listed
    assert all("subtype=scan%3Adeps" in u for u in asked if "/api/runs/counts" in u)
    page.locator('#status-counts button[data-status="failed"]').click()
    expect(rows).to_have_count(server["counts"]["failed"])
    expect(page.locator("#filter-status")).to_have_value("failed")
    shows(server["counts"])  # still every status of the filter
    expect(chart).to_have_attribute("data-total", str(server["counts"]["failed"]))
    page.screenshot(path=str(shots / "list-server-counts-laptop.png"), full_page=True)
    # Live: a new run of the filter is counted (the counts are asked again, throttled).
    page.locator('#status-counts button[data-status="failed"]').click()
    page.fill("#filter-subtype", "ci:pipeline")
    ci = requests.get(site.url + "/api/runs/counts?subtype=ci:pipeline", timeout=30).json()
    shows(ci["counts"])
    site.post("/ci")
    shows({**ci["counts"], "ok": ci["counts"]["ok"] + 1})
    page.fill("#filter-subtype", "no-such-subtype")
    expect(rows).to_have_count(0)
    expect(page.locator("#empty")).to_contain_text("No runs")
    expect(page.locator("#empty")).to_contain_text("no-such-subtype")
    expect(page.locator("#empty")).to_contain_text("last 24 hours")
    expect(page.locator("#status-counts button")).to_have_count(0)
    tab.context.close()
    assert tab.errors == []
