"""What every route of the runs blueprint shares: the blueprint, JSON errors, the guard
(``authorize`` / ``OTEL_RUNS_API_PUBLIC`` / loopback only), security headers, the ledger
and argument parsing. The routes are in :mod:`otel_runs.api`, :mod:`otel_runs.api_output`
and :mod:`otel_runs._page`."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from . import _settings, web_security
from ._ids import InvalidRunId, validate_run_id
from ._model import Run

__all__ = ["ApiError", "blueprint", "choice_arg", "error_response", "int_arg", "known_run",
           "project_ledger", "range_args", "text_arg", "time_arg",
           "trace_url_template", "with_trace_url"]

logger = logging.getLogger("otel_runs.api")

blueprint = Blueprint("otel_runs", __name__)


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def trace_url_template() -> str | None:
    """``OTEL_RUNS_TRACE_URL``, e.g. ``http://localhost:16686/trace/{trace_id}``."""
    return _settings.env_str(_settings.OTEL_RUNS_TRACE_URL)


def error_response(status: int, message: str) -> Response:
    """``{"error": message, "status": status}`` with the security headers."""
    resp = jsonify({"error": message, "status": status})
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    return _secured(resp)


def _secured(resp: Response) -> Response:
    ancestors = web_security.frame_ancestors(current_app)
    return web_security.set_security_headers(
        resp, web_security.content_security_policy(ancestors), ancestors)


@blueprint.errorhandler(ApiError)
def _apierror_response(exc: ApiError) -> Response:
    return error_response(exc.status, exc.message)


@blueprint.errorhandler(HTTPException)
def _httperror_response(exc: HTTPException) -> Response:
    return error_response(exc.code or 500, exc.description or exc.name)


@blueprint.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    logger.exception("otel-runs API error on %s", request.path)
    return error_response(500, f"internal error: {type(exc).__name__}")


@blueprint.before_request
def _authorize() -> Response | None:
    """``authorize(request)`` when given; else ``OTEL_RUNS_API_PUBLIC``, else loopback only."""
    state = current_app.extensions["otel_runs"]
    check = getattr(state.ext, "authorize", None)
    if check is not None:
        return None if check(request) else error_response(403, "forbidden")
    if web_security.api_public(current_app):
        return None
    problem = web_security.private_problem(request)
    return error_response(*problem) if problem else None


@blueprint.after_request
def _no_store(resp: Response) -> Response:
    resp.headers.setdefault("Cache-Control", "no-store")
    return _secured(resp)


# -- ledger access --------------------------------------------------------------

def project_ledger() -> Any:
    """The ledger of the app's project (``ApiError`` 503 if it cannot be opened)."""
    state = current_app.extensions["otel_runs"]
    try:
        from .ledger import ledger_for
    except ImportError as exc:
        raise ApiError(503, f"the run ledger is not available: {exc}") from exc
    from .ledger._errors import LedgerError, NotAGitRepository

    try:
        return ledger_for(state.project_root)
    except NotAGitRepository as exc:
        raise ApiError(503, str(exc)) from exc
    except LedgerError as exc:
        raise ApiError(503, f"the run ledger cannot be opened: {exc}") from exc


def int_arg(name: str, default: int, maximum: int) -> int:
    """ASCII digits only (``int()`` would take "\uff15", "1_0", "+5", " 5")."""
    raw = request.args.get(name, "")
    if raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise ApiError(400, f"{name} must be an integer from 1 to {maximum}, got {raw[:40]!r}")
    value = int(raw)
    if not 1 <= value <= maximum:
        raise ApiError(400, f"{name} must be from 1 to {maximum}, got {value}")
    return value


def choice_arg(name: str, choices: Any) -> str | None:
    value = request.args.get(name, "").strip()
    if not value:
        return None
    if value not in choices:
        raise ApiError(400, f"unknown {name} {value[:40]!r}; valid: {', '.join(sorted(choices))}")
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: 9999-12-31T23:59:59.999Z in ms since the epoch: the latest time a run id can hold.
_MAX_EPOCH_MS = 253_402_300_799_999


def time_arg(name: str) -> datetime | None:
    """A time: ASCII digits only are milliseconds since the epoch (UTC); anything else
    must be ISO 8601 with a time zone (``2026-12-02T10:15:00Z``, ``...+01:00``)."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    expected = (f"{name} must be ISO 8601 with a time zone (e.g. 2026-12-02T10:15:00Z) "
                f"or milliseconds since the epoch, got {raw[:40]!r}")
    if len(raw) > 40 or not raw.isascii():
        raise ApiError(400, expected)
    if raw.isdigit():
        if int(raw) > _MAX_EPOCH_MS:
            raise ApiError(400, f"{name} is past the year 9999, got {raw[:40]!r}")
        return _EPOCH + timedelta(milliseconds=int(raw))
    try:
        at = datetime.fromisoformat(raw)
        if at.tzinfo is None or at.utcoffset() is None:
            raise ApiError(400, f"{name} needs a time zone (Z or +HH:MM), got {raw[:40]!r}")
        return at.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise ApiError(400, expected) from None


def range_args() -> tuple[datetime | None, datetime | None]:
    """``since`` and ``until`` (:func:`time_arg`); 400 when ``since`` is after ``until``."""
    since, until = time_arg("since"), time_arg("until")
    if since is not None and until is not None and since > until:
        raise ApiError(400, f"since ({since.isoformat()}) is after until ({until.isoformat()})")
    return since, until


def text_arg(name: str, maximum: int) -> str | None:
    """A free text argument (stripped; None when empty); 400 past ``maximum`` characters."""
    value = request.args.get(name, "").strip()
    if len(value) > maximum:
        raise ApiError(400, f"{name} is longer than {maximum} characters")
    return value or None


def with_trace_url(run: Run) -> dict[str, Any]:
    data = run.to_dict()
    template = trace_url_template()
    data["trace_url"] = template.replace("{trace_id}", run.trace_id) if template and run.trace_id else None
    return data


def known_run(run_id: str) -> tuple[Any, Run]:
    """``(ledger, run)`` for a run id from a URL: ``ApiError`` 400 malformed, 404 unknown."""
    try:
        validate_run_id(run_id)
    except InvalidRunId as exc:
        raise ApiError(400, str(exc)) from None
    ledger = project_ledger()
    run = ledger.get(run_id)
    if run is None:
        raise ApiError(404, f"no run {run_id!r} in this project's ledger")
    return ledger, run
