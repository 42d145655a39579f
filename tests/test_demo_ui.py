"""The demo index at phone, laptop and desktop widths (Debian's Chromium): nothing cut
off or broken mid-word, an action's run shows in the embedded runs page, and clicking
it there brings its detail into view."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_runs_ui import CHROMIUM, CHROMIUM_ARGS, VIEWPORTS, Page, shots  # noqa: F401 - fixture

from otel_runs.demo import create_demo_app

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium; .ci/run does)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_the_demo_index_fits_every_width(tmp_path: Path, live_server: Any, chromium: Any,
                                         viewport: str, shots: Path) -> None:  # noqa: F811
    srv = live_server(create_demo_app(tmp_path / "demo", delay=0, failure_rate=0))
    tab = Page(chromium, VIEWPORTS[viewport])
    page = tab.page
    page.goto(srv.url + "/")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= VIEWPORTS[viewport][0]  # no sideways scrolling
    intro = page.locator("header p")
    # Words of the intro are never broken ("ro utes"): each word is on one line.
    assert page.evaluate("""(p) => { const t = p.firstChild, text = t.textContent, r = document.createRange();
        const broken = [];
        for (const m of text.matchAll(/\\S+/g)) {
          r.setStart(t, m.index); r.setEnd(t, m.index + m[0].length);
          const tops = new Set([...r.getClientRects()].map((c) => Math.round(c.top)));
          if (tops.size > 1) broken.push(m[0]);
        }
        return broken; }""", intro.element_handle()) == []
    frame = page.frame_locator("iframe")
    expect(frame.locator("#conn")).to_have_attribute("data-state", "live")
    page.locator('button[data-subtype="git:commit"]').click()
    expect(page.locator("#log li .st").first).to_have_text("ok")
    row = frame.locator('#runs-body tr[data-status="ok"]')
    expect(row).to_have_count(1)
    row.locator("td.c-summary").click()
    expect(frame.locator("#detail .run-title")).to_contain_text("git:commit")
    expect(frame.locator("#detail .run-title")).to_be_in_viewport()
    expect(frame.locator("#events")).to_contain_text(re.compile(r"command"))
    page.screenshot(path=str(shots / f"demo-{viewport}.png"))
    tab.context.close()
    assert tab.errors == []
