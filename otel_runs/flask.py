"""The Flask extension: ``RunTracking(app)`` wires run tracking into an app."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Request

from . import _setup

__all__ = ["ActionNotRouted", "RunTracking", "wire_actions", "wire_pending"]

logger = logging.getLogger("otel_runs")

EXTENSION_KEY = "otel_runs"
#: URLs never traced as requests (the event stream would be an hours-long span).
DEFAULT_EXCLUDED_URLS = "/api/events"


class RunTracking:
    """``RunTracking(app)`` or ``RunTracking().init_app(app)``.

    Reads ``app.config["PROJECT_ROOT"]`` (default: ``OTEL_RUNS_PROJECT_ROOT``,
    else the current directory), calls :func:`otel_runs.configure` for it (the
    service named after the app unless ``service_name=``, ``OTEL_SERVICE_NAME`` or
    ``OTEL_RESOURCE_ATTRIBUTES`` name it, or the application installed its own provider),
    instruments the app with opentelemetry-instrumentation-flask and registers
    the runs API, event stream, live page and ``flask runs`` commands.

    ``authorize(request) -> bool`` guards the API, stream and page (403 when False);
    without it they answer loopback clients only (unless ``OTEL_RUNS_API_PUBLIC=1``).
    ``protect=True`` refuses, app-wide, requests whose ``Host`` is not this server
    and state-changing requests that are not same-origin (see
    :mod:`otel_runs.web_security`).
    """

    def __init__(self, app: Flask | None = None, *,
                 authorize: Callable[[Request], bool] | None = None,
                 actions: Iterable[Any] | None = None, protect: bool = False,
                 **configure_kwargs: Any) -> None:
        self.authorize = authorize
        self.protect = protect
        self.actions = list(actions) if actions is not None else None
        self.configure_kwargs = configure_kwargs
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wire run tracking into ``app`` (state in ``app.extensions["otel_runs"]``)."""
        app.config.setdefault(
            "PROJECT_ROOT", os.environ.get("OTEL_RUNS_PROJECT_ROOT") or os.getcwd())
        app.config.setdefault("OTEL_RUNS_EXCLUDED_URLS", _default_excluded_urls(app))
        app.config.setdefault("OTEL_RUNS_API", True)
        root = app.config["PROJECT_ROOT"]
        provider = _setup.configure(root, **self._configure_kwargs(app))
        state = _AppState(self, str(root))
        app.extensions[EXTENSION_KEY] = state
        self._instrument(app, provider)
        for hook in _APP_HOOKS:
            hook(app, state)

    def _configure_kwargs(self, app: Flask) -> dict[str, Any]:
        """``configure_kwargs``; the service is named after the app (``app.name``) when
        nothing else names it: OTel's variables win, an installed provider is kept."""
        kwargs = dict(self.configure_kwargs)
        if kwargs.get("service_name") is None and _setup.service_name_unset():
            kwargs["service_name"] = app.name
        return kwargs

    @staticmethod
    def _instrument(app: Flask, provider: Any) -> None:
        if getattr(app, "_is_instrumented_by_opentelemetry", False):
            return
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(
            app, tracer_provider=provider,
            excluded_urls=app.config["OTEL_RUNS_EXCLUDED_URLS"],
        )


def _default_excluded_urls(app: Flask) -> str:
    """:data:`DEFAULT_EXCLUDED_URLS`, the metrics endpoint when it is on (a scrape every
    few seconds is no request worth a trace), and what the standard
    ``OTEL_PYTHON_FLASK_EXCLUDED_URLS`` (else ``OTEL_PYTHON_EXCLUDED_URLS``) names: the
    instrumentation reads those only when it is given no list, and it is given this one."""
    from .metrics._flask import endpoint_path

    urls = [DEFAULT_EXCLUDED_URLS]
    path = endpoint_path(app)
    if path is not None:
        urls.append(path)
    standard = (os.environ.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS")
                or os.environ.get("OTEL_PYTHON_EXCLUDED_URLS") or "")
    for url in (part.strip() for part in standard.split(",")):
        if url and url not in urls:
            urls.append(url)
    return ",".join(urls)


class _AppState:
    """Per-app state kept in ``app.extensions["otel_runs"]``."""

    def __init__(self, ext: RunTracking, project_root: str) -> None:
        self.ext = ext
        self.project_root = project_root
        self.extra: dict[str, Any] = {}


#: Functions ``(app, state)`` that other modules (API, CLI, inventory wiring)
#: register to run at ``init_app``; see ``_register_app_hook``.
_APP_HOOKS: list[Callable[[Flask, _AppState], None]] = []


def _register_app_hook(hook: Callable[[Flask, _AppState], None]) -> None:
    if hook not in _APP_HOOKS:
        _APP_HOOKS.append(hook)


from ._wiring import ActionNotRouted, wire_actions, wire_pending  # noqa: E402


def _register_builtin_hooks() -> None:
    from . import _wiring, api, cli, web_security
    from .metrics import _flask as metrics_flask

    _register_app_hook(web_security.register)  # RunTracking(app, protect=True)
    _register_app_hook(_wiring.register)  # RunTracking(app, actions=...) wiring
    _register_app_hook(api.register)      # hub, SSE processor, /api/runs, /api/events, /runs
    _register_app_hook(cli.register)      # flask runs ...
    _register_app_hook(metrics_flask.register)  # OTEL_RUNS_METRICS(_ENDPOINT): metrics, /metrics


_register_builtin_hooks()
