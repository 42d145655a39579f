"""The demo app's web hardening: bounded bodies, JSON errors, security headers, its files.

The demo's routes run real commands (git push and pull, the project's tests), so
``create_demo_app`` also turns on ``RunTracking(protect=True)``: only same-origin
requests with a local ``Host`` reach them (:mod:`otel_runs.web_security`).
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask, Response, abort, request
from werkzeug.exceptions import HTTPException

from .. import web_security

__all__ = ["MAX_BODY", "harden", "static_file"]

#: Largest request body the demo accepts (413 beyond).
MAX_BODY = 64 * 1024
#: The demo frames its own runs page: ``frame-ancestors 'self'``.
FRAME_ANCESTORS = "'self'"
_STATIC = Path(__file__).with_name("static")
_FILES = {"demo.js": "text/javascript", "demo.css": "text/css"}
_CSP = web_security.content_security_policy(FRAME_ANCESTORS, frames=True)


def static_file(name: str) -> Response:
    """``/demo/static/<name>``: the page's script and style."""
    mimetype = _FILES.get(name)
    if mimetype is None:
        abort(404)
    resp = Response((_STATIC / name).read_bytes(), mimetype=mimetype)
    resp.headers["Cache-Control"] = "no-cache"
    return resp


def harden(app: Flask) -> None:
    """Body limit, JSON errors for the demo's routes, security headers on every response.

    Call after ``RunTracking`` (its hooks come after OpenTelemetry's request hook)."""
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["OTEL_RUNS_FRAME_ANCESTORS"] = FRAME_ANCESTORS
    app.add_url_rule("/demo/static/<name>", "demo_static", static_file)
    app.before_request(_bounded_body)
    app.after_request(_secure)
    for code in (400, 413):
        app.register_error_handler(code, _json_error)


def _bounded_body() -> Response | None:
    """Refuse a body over the limit before any run starts: a declared length at once,
    a chunked body by reading it here (``MAX_CONTENT_LENGTH`` stops the read at the
    limit, silently: reaching it means too large; the views read the cached copy)."""
    length = request.content_length
    if length is None and "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        length = len(request.get_data(cache=True))
        length = length + 1 if length >= MAX_BODY else length
    if length is not None and length > MAX_BODY:
        return web_security.refusal(413, f"request body larger than {MAX_BODY} bytes")
    return None


def _json_error(exc: HTTPException) -> Response:
    return web_security.refusal(exc.code or 400, exc.description or exc.name)


def _secure(resp: Response) -> Response:
    """The demo's policy (it frames /runs) on every response otel-runs did not secure."""
    if "Content-Security-Policy" not in resp.headers:
        web_security.set_security_headers(resp, _CSP, FRAME_ANCESTORS)
    return resp
