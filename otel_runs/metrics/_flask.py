"""Run metrics in a ``RunTracking`` app: the settings and the optional ``/metrics`` route.

``app.config["OTEL_RUNS_METRICS"]`` (default ``OTEL_RUNS_METRICS``, off) turns metrics on
for the app's project; ``app.config["OTEL_RUNS_METRICS_ENDPOINT"]`` (default
``OTEL_RUNS_METRICS_ENDPOINT``, off; ``1`` means ``/metrics``, a value starting with ``/``
is the path) serves them in the Prometheus text format and implies metrics on. The route
is private data like the runs API: ``RunTracking(authorize=...)`` decides, else
``OTEL_RUNS_API_PUBLIC``, else loopback clients with a local ``Host`` only.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, request

from .. import _settings, web_security

__all__ = ["DEFAULT_PATH", "endpoint_path", "metrics_on", "register"]

logger = logging.getLogger("otel_runs.metrics")

#: The path ``OTEL_RUNS_METRICS_ENDPOINT=1`` serves.
DEFAULT_PATH = "/metrics"
_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")


def _config(app: Flask, name: str) -> Any:
    value = app.config.get(name)
    return _settings.env_str(name) if value is None else value


def endpoint_path(app: Flask) -> str | None:
    """The path the app serves its metrics at, or None (the endpoint is off)."""
    value = _config(app, _settings.OTEL_RUNS_METRICS_ENDPOINT)
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_PATH
    text = str(value).strip()
    if text.startswith("/"):
        return text
    if text.lower() in _ON:
        return DEFAULT_PATH
    if text.lower() not in _OFF:
        logger.warning("otel-runs: %s=%r is neither on/off nor a path; the endpoint is off",
                       _settings.OTEL_RUNS_METRICS_ENDPOINT, value)
    return None


def metrics_on(app: Flask) -> bool:
    """Whether the app records run metrics (the endpoint being on implies it)."""
    if endpoint_path(app) is not None:
        return True
    value = _config(app, _settings.OTEL_RUNS_METRICS)
    if isinstance(value, str):
        return value.strip().lower() in _ON
    return bool(value)


def _refused() -> Response | None:
    """``authorize(request)`` when given; else ``OTEL_RUNS_API_PUBLIC``, else loopback only."""
    state = current_app.extensions["otel_runs"]
    check = getattr(state.ext, "authorize", None)
    if check is not None:
        return None if check(request) else web_security.refusal(403, "forbidden")
    if web_security.api_public(current_app):
        return None
    problem = web_security.private_problem(request)
    return web_security.refusal(*problem) if problem else None


def metrics_view() -> Response:
    """The metrics in the Prometheus text format (``prometheus_client``'s default registry,
    where the OpenTelemetry Prometheus reader registers)."""
    refused = _refused()
    if refused is not None:
        return refused
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
    except ImportError:
        return web_security.refusal(501, "the metrics endpoint needs the 'prometheus' extra "
                                         "(pip install 'otel-runs[prometheus]')")
    resp = Response(generate_latest(REGISTRY), mimetype=None, content_type=CONTENT_TYPE_LATEST)
    resp.headers["Cache-Control"] = "no-store"
    return web_security.set_security_headers(resp, web_security.content_security_policy())


def register(app: Flask, state: Any) -> None:
    """``RunTracking`` hook: metrics for the app's project and, if asked, the route."""
    if not metrics_on(app):
        return
    from ._enable import enable_metrics

    path = endpoint_path(app)
    enable_metrics(state.project_root, prometheus=path is not None,
                   otlp_endpoint=state.ext.configure_kwargs.get("otlp_endpoint"),
                   stream_gate=state.extra.get("stream_gate"))
    if path is not None and "otel_runs_metrics" not in app.view_functions:
        app.add_url_rule(path, "otel_runs_metrics", metrics_view, methods=["GET"])
        who = ("authorize=" if getattr(state.ext, "authorize", None) is not None
               else "every client (OTEL_RUNS_API_PUBLIC=1)" if web_security.api_public(app)
               else "loopback clients only")
        logger.info("otel-runs: %s: %s serves run metrics to %s", app.import_name, path, who)
