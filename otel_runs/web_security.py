"""Web security for otel-runs' own routes and, opt-in, the app's: who may call, from where.

- :func:`host_problem`: the ``Host`` header must name this server (``localhost``,
  ``127.0.0.1``, ``[::1]``, the address the server is bound to, or a name of
  ``OTEL_RUNS_ALLOWED_HOSTS``): a DNS-rebinding page has its own name there.
- :func:`cross_site_problem`: a state-changing request (any method but GET, HEAD,
  OPTIONS, TRACE) must come from the app's own origin: ``Sec-Fetch-Site`` is
  ``same-origin`` or ``none``; else ``Origin`` is the app's own (or one of
  ``OTEL_RUNS_ALLOWED_ORIGINS``); a request with neither header (not a modern
  browser) must carry ``X-Otel-Runs-CSRF`` or ``X-Requested-With`` (which a page
  of another origin cannot send without a CORS preflight this app never grants)
  and an empty or JSON body.
- :func:`private_problem`: the runs API, stream and page answer loopback clients
  with a local ``Host`` only, unless ``authorize=`` or ``OTEL_RUNS_API_PUBLIC=1``.
- :func:`set_security_headers`: CSP, ``X-Frame-Options``, ``nosniff``, no referrer.

``RunTracking(app, protect=True)`` installs :func:`guard` for every request of the
app (:func:`register`). Refusals are JSON ``{"error": ..., "status": n}``.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from typing import Any

from flask import Flask, Request, Response, current_app, jsonify, request

from . import _settings

__all__ = ["CSRF_HEADER", "SAFE_METHODS", "content_security_policy", "cross_site_problem",
           "guard", "host_problem", "is_loopback", "private_problem", "refusal", "register",
           "set_security_headers"]

logger = logging.getLogger("otel_runs")

#: The header otel-runs' own pages send on state-changing ``fetch`` calls.
CSRF_HEADER = "X-Otel-Runs-CSRF"
#: Headers accepted as proof that the request was not a cross-site form or no-cors fetch.
CUSTOM_HEADERS = (CSRF_HEADER, "X-Requested-With")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: ``app.config`` keys (defaults from the variables of the same name).
ALLOWED_HOSTS_CONFIG = "OTEL_RUNS_ALLOWED_HOSTS"
ALLOWED_ORIGINS_CONFIG = "OTEL_RUNS_ALLOWED_ORIGINS"
FRAME_ANCESTORS_CONFIG = "OTEL_RUNS_FRAME_ANCESTORS"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_SAME_ORIGIN_SITES = frozenset({"same-origin", "none"})
_FRAME_SOURCE_RE = re.compile(r"'none'|'self'|https?://[A-Za-z0-9.\-*]+(:[0-9]{1,5})?")
_PROTECT_KEY = "otel_runs_protect"


# -- values -------------------------------------------------------------------------------

def is_loopback(addr: str | None) -> bool:
    """Whether ``addr`` (a ``REMOTE_ADDR``) is in 127.0.0.0/8 or ``::1`` (also IPv4-mapped)."""
    if not addr:
        return False
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def host_name(host: str) -> str | None:
    """The name of a ``Host`` header value, lowercased, without port, brackets or
    trailing dot; ``None`` when it is malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[1:end], host[end + 1:]
        if end < 0 or (rest and not _is_port(rest)):
            return None
        return name
    if host.count(":") > 1:
        return None  # a bare IPv6 address must be bracketed
    name, colon, port = host.partition(":")
    if colon and not _is_port(":" + port):
        return None
    name = name[:-1] if name.endswith(".") else name
    return name or None


def _is_port(text: str) -> bool:
    digits = text[1:]
    return text.startswith(":") and 0 < len(digits) <= 5 and digits.isascii() and digits.isdigit()


def _names(value: Any) -> frozenset[str]:
    """A config value (comma-separated string or iterable of strings) as a set."""
    if value is None:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return _parsed(tuple(items))


@functools.lru_cache(maxsize=64)
def _parsed(items: tuple[str, ...]) -> frozenset[str]:
    return frozenset(i.strip().lower().rstrip("/") for i in items if i.strip())


def _config(name: str, default_env: str) -> Any:
    app = current_app
    if name in app.config:
        return app.config[name]
    return _settings.env_str(default_env)


def _bound_addresses(environ: dict[str, Any]) -> set[str]:
    """The IP the server is bound to (``SERVER_NAME`` when it is a specific IP) and,
    for a wildcard bind, the local address this connection came in on."""
    found: set[str] = set()
    for candidate in (environ.get("SERVER_NAME"), _socket_address(environ)):
        try:
            ip = ipaddress.ip_address(str(candidate or "").strip("[]"))
        except ValueError:
            continue
        if not ip.is_unspecified:
            found.add(str(ip))
    return found


def _socket_address(environ: dict[str, Any]) -> str | None:
    sock = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")
    try:
        return str(sock.getsockname()[0]) if sock is not None else None
    except (OSError, AttributeError, IndexError, TypeError):
        return None


# -- checks (each returns None when fine, else (status, message)) ----------------------------

def host_problem(req: Request) -> tuple[int, str] | None:
    """400 unless ``Host`` names this server (DNS-rebinding protection)."""
    raw = req.environ.get("HTTP_HOST")
    if raw is None:
        return None  # HTTP/1.0 without Host: no browser, nothing to rebind
    name = host_name(raw)
    extra = _names(_config(ALLOWED_HOSTS_CONFIG, _settings.OTEL_RUNS_ALLOWED_HOSTS))
    if name is not None and ("*" in extra or name in LOCAL_HOSTS or name in extra
                             or name in _bound_addresses(req.environ)):
        return None
    return 400, (f"host {raw[:100]!r} is not allowed (DNS-rebinding protection); "
                 f"add it to {ALLOWED_HOSTS_CONFIG}")


def own_origin(req: Request) -> str:
    """``scheme://host[:port]`` of the request, as a browser writes ``Origin``."""
    return f"{req.scheme}://{req.environ.get('HTTP_HOST', '')}".lower()


def cross_site_problem(req: Request) -> tuple[int, str] | None:
    """403 for a state-changing request that is not provably same-origin."""
    if req.method in SAFE_METHODS:
        return None
    site = req.headers.get("Sec-Fetch-Site")
    origin = req.headers.get("Origin")
    allowed = _names(_config(ALLOWED_ORIGINS_CONFIG, _settings.OTEL_RUNS_ALLOWED_ORIGINS))
    if origin is not None and origin.strip().lower().rstrip("/") in allowed:
        return None
    if site is not None:
        if site.strip().lower() in _SAME_ORIGIN_SITES:
            return None
        return 403, f"cross-site request refused (Sec-Fetch-Site: {site[:40]})"
    if origin is not None:
        if origin.strip().lower() == own_origin(req):
            return None
        return 403, f"cross-origin request refused (Origin: {origin[:100]})"
    if not any(req.headers.get(h) for h in CUSTOM_HEADERS):
        return 403, (f"request refused: no Sec-Fetch-Site or Origin header; send "
                     f"{CSRF_HEADER}: 1 with a JSON body")
    if _has_body(req) and not req.is_json:
        return 403, "request refused: the body must be JSON (Content-Type: application/json)"
    return None


def _has_body(req: Request) -> bool:
    if req.content_length:
        return True
    return "chunked" in req.headers.get("Transfer-Encoding", "").lower()


def private_problem(req: Request) -> tuple[int, str] | None:
    """403 for a client that is not on loopback, 400 for a ``Host`` that is not local."""
    if not is_loopback(req.remote_addr):
        return 403, ("forbidden: this otel-runs API answers loopback clients only "
                     "(see authorize= / OTEL_RUNS_API_PUBLIC)")
    return host_problem(req)


def api_public(app: Flask) -> bool:
    """``app.config["OTEL_RUNS_API_PUBLIC"]``, default ``OTEL_RUNS_API_PUBLIC`` (off)."""
    value = app.config.get("OTEL_RUNS_API_PUBLIC")
    if value is None:
        return _settings.env_bool(_settings.OTEL_RUNS_API_PUBLIC, False)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


# -- responses ------------------------------------------------------------------------------

def content_security_policy(frame_ancestors: str = "'none'", *, frames: bool = False) -> str:
    """A strict policy: scripts, styles and connections from this origin only, no
    inline script or style, no plugins, no ``<base>``, no form targets."""
    parts = ["default-src 'none'", "script-src 'self'", "style-src 'self'",
             "img-src 'self' data:", "connect-src 'self'", "base-uri 'none'",
             "form-action 'none'", f"frame-ancestors {frame_ancestors}"]
    if frames:
        parts.insert(5, "frame-src 'self'")
    return "; ".join(parts)


def frame_ancestors(app: Flask) -> str:
    """``app.config["OTEL_RUNS_FRAME_ANCESTORS"]`` (default ``'none'``), validated."""
    value = str(app.config.get(FRAME_ANCESTORS_CONFIG) or "'none'")
    sources = value.split()
    if not sources or not all(_FRAME_SOURCE_RE.fullmatch(s) for s in sources) or (
            "'none'" in sources and len(sources) > 1):
        raise ValueError(f"{FRAME_ANCESTORS_CONFIG}={value!r}: expected 'none', 'self' "
                         "and/or origins such as https://ops.example.com")
    return " ".join(sources)


def set_security_headers(resp: Response, csp: str, ancestors: str = "'none'") -> Response:
    """CSP, ``X-Frame-Options`` matching ``frame-ancestors`` (none when it lists
    origins, which that header cannot say), ``nosniff``, ``no-referrer``."""
    headers = resp.headers
    headers["Content-Security-Policy"] = csp
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    frame_option = {"'none'": "DENY", "'self'": "SAMEORIGIN"}.get(ancestors)
    if frame_option:
        headers["X-Frame-Options"] = frame_option
    else:
        headers.pop("X-Frame-Options", None)
    return resp


def refusal(status: int, message: str) -> Response:
    """The JSON answer to a refused request, with the security headers."""
    resp = jsonify({"error": message, "status": status})
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    return set_security_headers(resp, content_security_policy())


# -- RunTracking(app, protect=True) -----------------------------------------------------------

def guard() -> Response | None:
    """``before_request`` of a protected app: ``Host`` on every request, same origin
    on state-changing ones."""
    problem = host_problem(request) or cross_site_problem(request)
    if problem is None:
        return None
    logger.info("otel-runs: refused %s %r: %s", request.method, request.path[:100], problem[1])
    return refusal(*problem)


def protect_app(app: Flask) -> None:
    """Install :func:`guard` as the app's first ``before_request`` hook (once), right
    after OpenTelemetry's request hook if there is one (a refused request is traced)."""
    if app.extensions.get(_PROTECT_KEY):
        return
    app.extensions[_PROTECT_KEY] = True
    hooks = app.before_request_funcs.setdefault(None, [])
    first_free = 0
    for i, hook in enumerate(hooks):
        if getattr(hook, "__module__", "").startswith("opentelemetry.instrumentation.flask"):
            first_free = i + 1
    hooks.insert(first_free, guard)


def register(app: Flask, state: Any) -> None:
    """``RunTracking`` hook: ``protect=True`` protects the whole app."""
    if getattr(state.ext, "protect", False):
        protect_app(app)

