"""The page of one run (``/runs/<run_id>``) and ``/favicon.ico``, on the API's blueprint.

The run page is HTML with its config as a JSON data block (never executed); its
scripts and style are the runs page's files under ``/runs/assets/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, request
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import NotFound

from . import _settings
from ._ids import InvalidRunId, validate_run_id
from ._model import STATUSES
from ._taxonomy import RUN_TYPES

__all__ = ["ASSETS", "add_routes", "page_config"]

_STATIC = Path(__file__).with_name("static")
#: The pages' own files (name -> mimetype), served by ``/runs/assets/<name>``.
ASSETS = {"runs.js": "text/javascript", "runs.css": "text/css", "common.js": "text/javascript",
          "timeline.js": "text/javascript", "output.js": "text/javascript",
          "runview.js": "text/javascript", "charts.js": "text/javascript",
          "autocomplete.js": "text/javascript", "run.js": "text/javascript",
          "favicon.svg": "image/svg+xml"}


def page_config(**extra: Any) -> dict[str, Any]:
    """What the pages' scripts read from their JSON data block."""
    root = request.script_root
    return {"traceUrl": _settings.env_str(_settings.OTEL_RUNS_TRACE_URL), "api": root + "/api",
            "page": root + "/runs", "types": sorted(RUN_TYPES), "statuses": list(STATUSES),
            **extra}


def _fill(html: str, config: dict[str, Any]) -> str:
    root = request.script_root
    html = html.replace("__OTEL_RUNS_ASSETS__", root + "/runs/assets")
    html = html.replace("__OTEL_RUNS_PAGE__", root + "/runs")
    return html.replace("__OTEL_RUNS_CONFIG__", json.dumps(config).replace("<", "\\u003c"))


def run_page(run_id: str) -> Response:
    """``/runs/<run_id>``: the page of one run (it loads the run itself, also while running)."""
    try:
        validate_run_id(run_id)
    except InvalidRunId as exc:
        raise NotFound(str(exc)) from None
    html = (_STATIC / "run.html").read_text(encoding="utf-8")
    html = html.replace("__OTEL_RUNS_RUN_ID__", run_id)  # a valid id is [0-9TZa-f-] only
    resp = Response(_fill(html, page_config(runId=run_id)), mimetype="text/html")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def favicon() -> Response:
    """``/favicon.ico``: the pages' icon (SVG)."""
    resp = Response((_STATIC / "favicon.svg").read_bytes(), mimetype="image/svg+xml")
    resp.headers["Cache-Control"] = "max-age=86400"
    return resp


def add_routes(bp: Blueprint) -> None:
    """Add the run page to the API's blueprint, and ``/favicon.ico`` to each app that
    registers it and has no favicon route of its own."""
    bp.add_url_rule("/runs/<run_id>", "run_page", run_page, methods=["GET"])
    bp.record_once(_add_favicon)


def _add_favicon(state: BlueprintSetupState) -> None:
    app = state.app
    if not any(rule.rule == "/favicon.ico" for rule in app.url_map.iter_rules()):
        app.add_url_rule("/favicon.ico", "otel_runs_favicon", favicon, methods=["GET"])
