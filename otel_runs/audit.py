"""Route audit: which state-changing routes of an app do not open a run.

``untracked_routes(app)`` lists every POST/PUT/PATCH/DELETE (rule, method)
whose view is neither ``@run_tracked`` nor wired from an action inventory, so CI
can enforce "every action is a Run" (``otel-runs audit MODULE:APP`` /
``flask runs audit``: exit 1 when any is found).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from flask import Flask

from ._wiring import tracked_action_for, wire_pending

__all__ = ["ACTION_METHODS", "RouteInfo", "audit_routes", "untracked_routes"]

#: The HTTP methods that change state: each such route should be a run.
ACTION_METHODS: tuple[str, ...] = ("POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class RouteInfo:
    """One (rule, method) of an app and the run it opens, if any."""

    rule: str
    method: str
    endpoint: str
    view: str
    subtype: str | None

    @property
    def tracked(self) -> bool:
        return self.subtype is not None

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "tracked": self.tracked}


def _view_name(view: object) -> str:
    inner = getattr(view, "view", view)  # an inventory dispatcher keeps the original
    module = getattr(inner, "__module__", None) or "?"
    name = getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None) or repr(inner)
    return f"{module}.{name}"


def audit_routes(app: Flask) -> list[RouteInfo]:
    """Every state-changing (rule, method) of ``app``, sorted by rule then method.

    Actions recorded by ``RunTracking(app, actions=...)`` are wired first, as the
    first request would."""
    wire_pending(app)
    found: list[RouteInfo] = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        for method in sorted(set(rule.methods or ()) & set(ACTION_METHODS)):
            tracked = tracked_action_for(view, rule, method)
            found.append(RouteInfo(rule.rule, method, rule.endpoint, _view_name(view),
                                   tracked[1] if tracked else None))
    found.sort(key=lambda r: (r.rule, ACTION_METHODS.index(r.method)))
    return found


def untracked_routes(app: Flask) -> list[RouteInfo]:
    """The POST/PUT/PATCH/DELETE routes of ``app`` whose view opens no run."""
    return [r for r in audit_routes(app) if not r.tracked]
