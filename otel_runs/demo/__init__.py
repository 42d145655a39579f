"""The demo control plane: every action of the seed inventory in one Flask app.

``otel-runs demo`` creates a scratch world (a git project, a bare remote and a
teammate's clone), starts this app on 127.0.0.1 and tracks every route from the
inventory with ``RunTracking(app, actions=ACTIONS, protect=True)``: only
same-origin requests with a local ``Host`` run an action (``_web.py``). Its home
page shows one button per action next to the live runs page. Needs the ``demo``
extra (``cryptography``) for the vault and content actions.
"""

from __future__ import annotations

import errno
import html
import os
import random
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify

from ..inventory import ACTIONS, by_integration
from ._routes import actions_blueprint
from ._scratch import DemoDirError, DemoError, make_scratch
from ._tools import DemoState
from ._web import harden

__all__ = ["DemoDirError", "DemoError", "create_demo_app", "serve_demo"]

#: Seconds a simulated tool takes, times its weight (0.3-2.0).
OTEL_RUNS_DEMO_DELAY = "OTEL_RUNS_DEMO_DELAY"
#: Probability (0-1) that a simulated tool fails, from a seeded generator.
OTEL_RUNS_DEMO_FAILURE_RATE = "OTEL_RUNS_DEMO_FAILURE_RATE"
#: Seed of that generator (same seed + same clicks = same failures).
OTEL_RUNS_DEMO_SEED = "OTEL_RUNS_DEMO_SEED"
DEFAULT_DELAY = 0.4
DEFAULT_FAILURE_RATE = 0.1
DEFAULT_SEED = 7
_STATIC = Path(__file__).with_name("static")


def _env_float(name: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise DemoError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise DemoError(f"{name}={raw!r} must be between {low} and {high}")
    return value


def create_demo_app(directory: str | os.PathLike[str] | None = None, *,
                    delay: float | None = None, failure_rate: float | None = None,
                    seed: int | None = None, **run_tracking: Any) -> Flask:
    """The demo app over a scratch world in ``directory`` (new temp dir by default;
    a previous demo's directory is reused). ``delay`` scales simulated tools
    (default ``OTEL_RUNS_DEMO_DELAY`` or 0.4 s); ``failure_rate`` and ``seed``
    make their failures occasional and reproducible. ``run_tracking`` goes to
    ``RunTracking`` (``protect`` defaults to True here)."""
    from ..flask import RunTracking

    scratch = make_scratch(directory)
    state = DemoState(
        base=scratch.base, project=scratch.project, remote=scratch.remote,
        teammate=scratch.teammate,
        delay=delay if delay is not None else _env_float(OTEL_RUNS_DEMO_DELAY, DEFAULT_DELAY, 0, 30),
        failure_rate=failure_rate if failure_rate is not None else _env_float(
            OTEL_RUNS_DEMO_FAILURE_RATE, DEFAULT_FAILURE_RATE, 0, 1),
        rng=random.Random(seed if seed is not None else int(
            _env_float(OTEL_RUNS_DEMO_SEED, DEFAULT_SEED, 0, 2**32))),
    )
    app = Flask("otel_runs.demo")
    app.config["PROJECT_ROOT"] = str(scratch.project)
    app.config["OTEL_RUNS_STRICT_ACTIONS"] = True
    app.extensions["otel_runs_demo"] = state
    app.register_blueprint(actions_blueprint)
    _add_pages(app, state)
    run_tracking.setdefault("service_name", "otel-runs-demo")
    run_tracking.setdefault("protect", True)
    RunTracking(app, actions=ACTIONS, **run_tracking)
    harden(app)
    _ensure_api(app)
    _wire(app)
    return app


def _wire(app: Flask) -> None:
    """Wire the inventory now (strict), so a missing route fails at start-up."""
    from .._wiring import wire_actions, wire_pending

    report = wire_pending(app)  # when RunTracking registered the wiring hook
    if report is None:
        report = wire_actions(app, ACTIONS, strict=True)
    if report.unrouted:  # pragma: no cover - strict mode raised already
        raise RuntimeError(f"demo routes missing: {report.unrouted}")


def _ensure_api(app: Flask) -> None:
    if "otel_runs" in app.blueprints:
        return
    from .. import api

    api.register(app, app.extensions["otel_runs"])


def _sample_path(route: str) -> str:
    return route.replace("<name>", "mkdocs" if "/builders/" in route else "docs")


def render_home(project: Path) -> str:
    """The home page: one button per inventory action, grouped by integration."""
    groups = []
    for integration, actions in by_integration().items():
        buttons = "\n".join(
            f'      <button type="button" data-route="{html.escape(a.route)}" '
            f'data-subtype="{html.escape(a.subtype)}" title="POST {html.escape(a.route)} '
            f'({html.escape(a.subtype)})">{html.escape(a.summary)}'
            f'<span class="route"> POST {html.escape(a.route)}</span></button>'
            for a in actions)
        groups.append(f'  <fieldset>\n    <legend>{html.escape(integration)}</legend>\n'
                      f'    <div class="buttons">\n{buttons}\n    </div>\n  </fieldset>')
    page = (_STATIC / "index.html").read_text(encoding="utf-8")
    return (page.replace("__ACTIONS__", "\n".join(groups))
            .replace("__COUNT__", str(len(ACTIONS)))
            .replace("__PROJECT__", html.escape(str(project))))


def _add_pages(app: Flask, state: DemoState) -> None:
    @app.get("/")
    def home() -> Response:
        resp = Response(render_home(state.project), mimetype="text/html")
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.get("/demo/actions")
    def demo_actions() -> Any:
        return jsonify([{"integration": a.integration, "route": a.route, "method": a.method,
                         "type": a.type, "subtype": a.subtype, "summary": a.summary,
                         "sample_path": _sample_path(a.route)} for a in ACTIONS])


def serve_demo(host: str = "127.0.0.1", port: int = 5050,
               directory: str | os.PathLike[str] | None = None,
               delay: float | None = None) -> None:
    """Create the demo app and serve it (blocking) with werkzeug's threaded server.

    The port is taken first; when it is busy, or the start fails or is interrupted, a
    scratch directory made here (no ``directory``) is removed again."""
    from werkzeug.serving import make_server  # not app.run: a no-op under `flask run`

    sock = _listen(host, port)
    own = tempfile.mkdtemp(prefix="otel-runs-demo-") if directory is None else None
    try:
        app = create_demo_app(directory if own is None else own, delay=delay)
        server = make_server(host, port, app, threaded=True, fd=sock.fileno())
    except BaseException:
        if own is not None:
            _discard(own)
        raise
    finally:
        sock.close()  # the server has its own copy
    state: DemoState = app.extensions["otel_runs_demo"]
    url = f"http://{host}:{server.socket.getsockname()[1]}/"
    print(f"otel-runs demo\n  scratch directory: {state.base}\n"
          f"  project (ledger on branch scp-ledger): {state.project}\n"
          f"  bare remote: {state.remote}\n"
          f"  open {url}  (live runs: {url}runs; Ctrl-C to stop)\n"
          f"  actions answer same-origin requests only; the runs API and page, loopback clients\n"
          f"  afterwards: otel-runs --project {state.project} list", flush=True)
    server.log_startup()
    server.serve_forever()  # until Ctrl-C


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a one-line :class:`DemoError`."""
    from werkzeug.serving import get_sockaddr, select_address_family

    family = select_address_family(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(get_sockaddr(host, port, family))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = "; stop what uses it or pass another --port" if exc.errno == errno.EADDRINUSE else ""
        raise DemoError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    return sock


def _discard(base: str) -> None:
    """Remove a scratch directory made for a demo that did not start."""
    from .._setup import ledger_processor, shutdown

    if ledger_processor(Path(base) / "project") is not None:
        shutdown()  # its ledger stops writing before the repository goes
    shutil.rmtree(base, ignore_errors=True)
