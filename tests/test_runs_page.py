"""The live runs page in a real browser (Playwright + Debian's Chromium) against a
real server process that is restarted mid-test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import free_port, port_open, stop_child, wait_until

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

APP = textwrap.dedent('''
    """A small control plane: /work/<outcome> waits for a release file, then answers."""
    import sys, time
    from pathlib import Path
    from flask import Flask
    from werkzeug.serving import make_server
    import otel_runs
    from otel_runs import api
    from otel_runs.flask import RunTracking

    port, root, control = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    app = Flask("page-test")
    app.config["PROJECT_ROOT"] = root
    app.config["OTEL_RUNS_SSE_HEARTBEAT"] = 1.0

    @app.post("/work/<outcome>")
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def work(outcome):
        run = otel_runs.current_run()
        run.metadata["target"] = "web"
        run.add_event("waiting", outcome=outcome)
        deadline = time.monotonic() + 60
        while not (control / f"release-{outcome}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"ok": outcome == "ok", "summary": f"rollout {outcome}"}

    RunTracking(app)
    api.register(app, app.extensions["otel_runs"])
    make_server("127.0.0.1", port, app, threaded=True).serve_forever()
''')


class ServerProcess:
    """The app in a child process on a fixed port; ``restart()`` kills and starts it."""

    def __init__(self, script: Path, port: int, root: Path, control: Path) -> None:
        self.cmd = [sys.executable, str(script), str(port), str(root), str(control)]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "OTEL_RUNS_TRACE_URL": "http://localhost:16686/trace/{trace_id}",
                    "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until(self._ready, timeout=30, interval=0.05)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}")
        return port_open(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc)


@pytest.fixture
def server(tmp_path: Path, git_repo: Path) -> Iterator[ServerProcess]:
    script = tmp_path / "app.py"
    script.write_text(APP)
    control = tmp_path / "control"
    control.mkdir()
    srv = ServerProcess(script, free_port(), git_repo, control)
    srv.control = control  # type: ignore[attr-defined]
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def page() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium; .ci/run does)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        yield pg
        context.close()
        browser.close()


def _trigger(srv: ServerProcess, outcome: str) -> tuple[threading.Thread, dict[str, str]]:
    """POST /work/<outcome> in the background (it blocks until released)."""
    result: dict[str, str] = {}

    def post() -> None:
        resp = requests.post(f"{srv.url}/work/{outcome}", timeout=90)
        result["run_id"] = resp.headers.get("X-Run-Id", "")

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, result


def _release(srv: ServerProcess, outcome: str) -> None:
    (srv.control / f"release-{outcome}").touch()  # type: ignore[attr-defined]


def test_runs_appear_live_complete_and_survive_a_restart(server: ServerProcess, page, tmp_path: Path) -> None:
    expect = sync_api.expect
    page.goto(server.url + "/runs")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")

    # A started run appears at once as running, with a ticking elapsed time.
    thread, result = _trigger(server, "ok")
    running = page.locator('#runs-body tr[data-status="running"]')
    expect(running).to_have_count(1)
    run_id = running.get_attribute("data-run-id")
    assert run_id
    row = page.locator(f'#runs-body tr[data-run-id="{run_id}"]')
    expect(row.locator(".badge")).to_have_text("running")
    first = row.locator(".elapsed").inner_text()
    expect(row.locator(".elapsed")).not_to_have_text(first, timeout=10_000)

    # Completion: ok, duration and summary, without a reload.
    _release(server, "ok")
    thread.join(60)
    assert result["run_id"] == run_id
    expect(row).to_have_attribute("data-status", "ok")
    expect(row.locator(".badge")).to_have_text("ok")
    expect(row).to_contain_text("rollout ok")
    expect(row.locator(".elapsed")).to_have_text(_duration_re())

    # A failing run shows as failed.
    thread, result = _trigger(server, "fail")
    expect(page.locator('#runs-body tr[data-status="running"]')).to_have_count(1)
    _release(server, "fail")
    thread.join(60)
    failed_row = page.locator(f'#runs-body tr[data-run-id="{result["run_id"]}"]')
    expect(failed_row).to_have_attribute("data-status", "failed")
    expect(failed_row).to_contain_text("rollout fail")

    # Filter by status.
    page.select_option("#filter-status", "failed")
    expect(page.locator("#runs-body tr")).to_have_count(1)
    expect(row).to_have_count(0)
    page.select_option("#filter-status", "")
    expect(page.locator("#runs-body tr")).to_have_count(2)

    # Keyboard: focus the row, Enter shows its detail with events, metadata, trace link.
    row.focus()
    page.keyboard.press("Enter")
    detail = page.locator("#detail-body")
    expect(detail).to_contain_text(run_id)
    expect(detail).to_contain_text("waiting")
    expect(detail).to_contain_text("target")
    link = page.locator("#trace-link")
    expect(link).to_have_attribute("href", _trace_re())
    page.screenshot(path=str(tmp_path / "runs-live.png"), full_page=True)

    # Restart the server on the same port: the page reconnects by itself,
    # reloads (the new process answers the old Last-Event-ID with a reset) and
    # shows new runs live.
    server.stop()
    expect(page.locator("#conn")).to_have_attribute("data-state", "connecting")
    server.start()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=45_000)
    thread, result = _trigger(server, "ok")  # release-ok exists: completes at once
    thread.join(60)
    new_row = page.locator(f'#runs-body tr[data-run-id="{result["run_id"]}"]')
    expect(new_row).to_have_attribute("data-status", "ok", timeout=30_000)
    expect(row).to_have_attribute("data-status", "ok")  # earlier runs still listed
    expect(page.locator("#runs-body tr")).to_have_count(3)
    shot = tmp_path / "runs-after-restart.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("OTEL_RUNS_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["OTEL_RUNS_KEEP_SCREENSHOT"])


def _duration_re():
    import re

    return re.compile(r"^\d+(\.\d+)? (ms|s)$|^\d+ min \d+ s$")


def _trace_re():
    import re

    return re.compile(r"^http://localhost:16686/trace/[0-9a-f]{32}$")
