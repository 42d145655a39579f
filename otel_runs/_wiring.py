"""Inventory-driven wiring: track an app's existing views from a list of actions.

``wire_actions(app, actions)`` finds, for each action row (method + URL rule),
the view Flask registered for it and replaces it in ``app.view_functions`` by a
tracked one, so an app gets a run per action without touching its route files.

When: ``RunTracking(app, actions=...)`` is usually called in an app factory
*before* every blueprint is registered, and Flask 3 has no
``before_first_request``. So the extension only records the rows at
``init_app`` (:func:`register`) and wires them at the start of the first
request (a ``before_request`` hook that runs first and then does nothing) —
Flask looks the view up in ``view_functions`` after the ``before_request``
hooks, so even that first request is tracked. :func:`wire_pending` does the
same on demand (the route audit and tests call it; call it yourself after the
last blueprint to get strict-mode errors at start-up).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, has_request_context, request
from werkzeug.routing import Rule

from ._decorator import run_tracked, tracked_by

if TYPE_CHECKING:
    from .inventory import Action

__all__ = ["ActionNotRouted", "WiringReport", "register", "tracked_action_for",
           "wire_actions", "wire_pending"]

logger = logging.getLogger("otel_runs")

#: ``app.config`` key: a row that matches no route raises :class:`ActionNotRouted`.
STRICT_CONFIG = "OTEL_RUNS_STRICT_ACTIONS"
#: ``app.config`` key: prefix the app mounts the action routes under (e.g. ``/api``).
PREFIX_CONFIG = "OTEL_RUNS_ACTIONS_PREFIX"
_PENDING_KEY = "wiring"
_IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
_CONVERTER = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")


class ActionNotRouted(LookupError):  # noqa: N818 - the name the API promises
    """Strict mode: inventory rows that match no route of the app."""

    def __init__(self, actions: list[Action]) -> None:
        self.actions = actions
        shown = ", ".join(f"{a.method} {a.route}" for a in actions[:10])
        more = f" (and {len(actions) - 10} more)" if len(actions) > 10 else ""
        super().__init__(
            f"{len(actions)} action(s) match no route of the app: {shown}{more}; "
            f"fix the rows, the routes or {PREFIX_CONFIG}, or unset {STRICT_CONFIG}")


@dataclass
class WiringReport:
    """What :func:`wire_actions` did with each row."""

    wired: list[Action] = field(default_factory=list)
    already_tracked: list[Action] = field(default_factory=list)
    unrouted: list[Action] = field(default_factory=list)


def normalize_rule(rule: str) -> str:
    """``/pages/build/<string:name>/`` -> ``/pages/build/<name>`` (for matching)."""
    norm = _CONVERTER.sub(r"<\1>", rule)
    return norm.rstrip("/") or "/"


class _ActionDispatcher:
    """Stands in for one endpoint's view: requests whose (rule, method) is an
    action go to that action's ``@run_tracked`` wrapper, others to the view.

    ``__wrapped__`` names the wrapper serving the current request, so the core's
    "is Flask dispatching to this wrapper" check and ``tracked_by`` see it.
    """

    def __init__(self, view: Callable[..., Any]) -> None:
        self.view = view
        self.tracked: dict[tuple[str, str], tuple[Action, Callable[..., Any]]] = {}
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            try:
                setattr(self, attr, getattr(view, attr))
            except AttributeError:
                pass

    def add(self, rule: str, method: str, action: Action) -> None:
        fn = run_tracked(action.type, action.subtype, summary=action.summary)(self.view)
        self.tracked[(rule, method)] = (action, fn)

    def action_for(self, rule: str, method: str) -> Action | None:
        entry = self.tracked.get((rule, method))
        return entry[0] if entry else None

    def _choose(self) -> Callable[..., Any] | None:
        if not has_request_context() or request.url_rule is None:
            return None
        entry = self.tracked.get((request.url_rule.rule, request.method))
        return entry[1] if entry else None

    @property
    def __wrapped__(self) -> Callable[..., Any]:
        return self._choose() or self.view

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn = self._choose() or self.view
        return current_app.ensure_sync(fn)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<tracked actions of {self.view!r}: {sorted(self.tracked)}>"


def tracked_action_for(view: Callable[..., Any] | None, rule: Rule,
                       method: str) -> tuple[str, str] | None:
    """``(type, subtype)`` if ``method`` on ``rule`` served by ``view`` opens a run."""
    if view is None:
        return None
    if isinstance(view, _ActionDispatcher):
        action = view.action_for(rule.rule, method)
        if action is not None:
            return (action.type, action.subtype)
        return tracked_by(view.view)
    return tracked_by(view)


def wire_actions(app: Flask, actions: Iterable[Action], *, strict: bool = False,
                 url_prefix: str = "") -> WiringReport:
    """Track the views registered for ``actions`` (rows with ``method``, ``route``,
    ``type``, ``subtype``, ``summary``); call after every blueprint is registered.

    A view already ``@run_tracked`` is left as it is. A row that matches no
    route is logged as a warning, or raises :class:`ActionNotRouted` (before
    anything is changed) when ``strict``. Idempotent.
    """
    prefix = url_prefix.rstrip("/")
    by_rule: dict[str, list[Rule]] = {}
    for rule in app.url_map.iter_rules():
        by_rule.setdefault(normalize_rule(rule.rule), []).append(rule)

    report = WiringReport()
    plan: list[tuple[Rule, Action]] = []
    for action in actions:
        method = action.method.upper()
        rules = [r for r in by_rule.get(normalize_rule(prefix + action.route), [])
                 if method in (r.methods or ())]
        if not rules:
            report.unrouted.append(action)
            continue
        plan.extend((r, action) for r in rules)
    if report.unrouted:
        if strict:
            raise ActionNotRouted(report.unrouted)
        for action in report.unrouted:
            logger.warning("otel-runs: action %s %s (%s) matches no route of app %r; "
                           "it is not tracked", action.method, prefix + action.route,
                           action.subtype, app.name)

    for rule, action in plan:
        view = app.view_functions.get(rule.endpoint)
        if view is None:  # a rule without a view: Flask would 500 anyway
            report.unrouted.append(action)
            continue
        method = action.method.upper()
        if isinstance(view, _ActionDispatcher):
            if view.action_for(rule.rule, method) is not None or tracked_by(view.view):
                report.already_tracked.append(action)
                continue
            view.add(rule.rule, method, action)
            report.wired.append(action)
            continue
        existing = tracked_by(view)
        if existing is not None:
            if existing != (action.type, action.subtype):
                logger.info("otel-runs: %s %s is already @run_tracked as %s; the row says %s "
                            "(keeping the decorator)", method, rule.rule, existing[1],
                            action.subtype)
            report.already_tracked.append(action)
            continue
        dispatcher = _ActionDispatcher(view)
        dispatcher.add(rule.rule, method, action)
        app.view_functions[rule.endpoint] = dispatcher
        report.wired.append(action)
    return report


class _Pending:
    def __init__(self, actions: list[Action], strict: bool, url_prefix: str) -> None:
        self.actions = actions
        self.strict = strict
        self.url_prefix = url_prefix
        self.report: WiringReport | None = None
        self.lock = threading.Lock()


def wire_pending(app: Flask) -> WiringReport | None:
    """Wire the actions ``RunTracking(app, actions=...)`` recorded, once; returns
    the report (None when the app has no recorded actions)."""
    state = app.extensions.get("otel_runs")
    pending: _Pending | None = getattr(state, "extra", {}).get(_PENDING_KEY)
    if pending is None:
        return None
    with pending.lock:
        if pending.report is None:
            pending.report = wire_actions(app, pending.actions, strict=pending.strict,
                                          url_prefix=pending.url_prefix)
        return pending.report


def register(app: Flask, state: Any) -> None:
    """``RunTracking.init_app`` hook: record ``state.ext.actions`` and wire them at
    the first request (or at the first :func:`wire_pending` call)."""
    actions = getattr(state.ext, "actions", None)
    if actions is None:
        return
    app.config.setdefault(STRICT_CONFIG, False)
    app.config.setdefault(PREFIX_CONFIG, "")
    state.extra[_PENDING_KEY] = _Pending(
        list(actions), bool(app.config[STRICT_CONFIG]), str(app.config[PREFIX_CONFIG]))

    def wire_before_first_request() -> None:
        pending: _Pending = state.extra[_PENDING_KEY]
        if pending.report is None:
            wire_pending(app)

    # First in line, so that it runs even if another hook answers the request.
    app.before_request_funcs.setdefault(None, []).insert(0, wire_before_first_request)
