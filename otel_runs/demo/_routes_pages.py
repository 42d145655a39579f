"""The demo's pages builds: set up segments, build one, all or streamed, merge the site.

Builds are real: each segment's markdown is rendered to HTML under ``_site/``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Response

from .._tracking import current_run
from ._routes_base import actions_blueprint, checked_name, reply, scratch_project, write_files
from ._tools import _note, demo_state, fail_requested


def _segments() -> list[str]:
    root = scratch_project() / "pages"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


def _render(name: str) -> int:
    source = scratch_project() / "pages" / name
    out = scratch_project() / "_site" / name
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for md in sorted(source.glob("*.md")):
        body = "".join(f"<h1>{ln[2:]}</h1>\n" if ln.startswith("# ") else f"<p>{ln}</p>\n"
                       for ln in md.read_text().splitlines() if ln.strip())
        (out / (md.stem + ".html")).write_text(f"<!doctype html>\n<title>{name}</title>\n{body}")
        count += 1
    return count


@actions_blueprint.post("/pages/init")
def pages_init() -> Any:
    return write_files({"pages/docs/index.md": "# Docs\nWelcome to the demo docs.\n",
                         "pages/blog/index.md": "# Blog\nFirst post.\n",
                         "pages/segments.json": json.dumps({"segments": ["docs", "blog"]})},
                        "Initialized pages with 2 segments (docs, blog)")


@actions_blueprint.post("/pages/build/<name>")
def pages_build(name: str) -> Any:
    name = checked_name(name, "docs")
    if name not in _segments():
        return reply(False, f"no segment {name!r} (run Initialize pages first)", segment=name)
    with demo_state().lock:
        pages = _render(name)
    _note(segment=name, pages=pages)
    return reply(True, f"Built segment {name} ({pages} pages)", segment=name)


@actions_blueprint.post("/pages/build-all")
def pages_build_all() -> Any:
    segs = _segments()
    if not segs:
        return reply(False, "no segments to build (run Initialize pages first)")
    with demo_state().lock:
        total = sum(_render(s) for s in segs)
    _note(segments=segs)
    return reply(True, f"Built {len(segs)} segments ({total} pages)", segments=segs)


@actions_blueprint.post("/pages/merge")
def pages_merge() -> Any:
    site = scratch_project() / "_site"
    built = sorted(p for p in site.glob("*/*.html")) if site.is_dir() else []
    if not built:
        return reply(False, "nothing to merge: build the segments first")
    links = "".join(f'<li><a href="{p.parent.name}/{p.name}">{p.parent.name}/{p.name}</a></li>\n'
                    for p in built)
    (site / "index.html").write_text(f"<!doctype html>\n<title>site</title>\n<ul>\n{links}</ul>\n")
    return reply(True, f"Merged {len(built)} pages into _site/index.html")


@actions_blueprint.post("/pages/build-stream/<name>")
def pages_build_stream(name: str) -> Any:
    name = checked_name(name, "docs")
    state = demo_state()
    failing = fail_requested() or state.roll_failure()
    steps = ["resolving config", f"collecting pages of {name}", "rendering markdown",
             "copying assets", "writing output"]
    pause = state.delay * 1.5 / len(steps)

    def stream() -> Any:
        run = current_run()  # the run is current while the stream is read
        for i, step in enumerate(steps):
            time.sleep(pause)
            if failing and i == len(steps) - 2:
                if run is not None:
                    run.status = "failed"
                    run.summary = f"Build of {name} failed at: {step}"
                yield f"event: error\ndata: {json.dumps({'step': step, 'ok': False})}\n\n"
                return
            if run is not None:
                run.add_event("step", step=step, index=i + 1, of=len(steps))
            yield f"data: {json.dumps({'step': step, 'index': i + 1, 'of': len(steps)})}\n\n"
        if run is not None:
            run.summary = f"Streamed build of {name} ({len(steps)} steps)"
        yield f"event: done\ndata: {json.dumps({'ok': True, 'segment': name})}\n\n"

    return Response(stream(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
