"""Where the current run lives in the OpenTelemetry context."""

from __future__ import annotations

import contextvars
from typing import Any

from opentelemetry import baggage, context, trace
from opentelemetry.context import Context

from . import _attributes as A

#: The id of the run opened in this process that encloses a context.
LOCAL_RUN_KEY = context.create_key("otel_runs.current_run_id")
#: Set only in the context a run span is started with: the open run its opener
#: already knows, so run processors need not rebuild it from the span.
STARTING_RUN_KEY = context.create_key("otel_runs.starting_run")
#: The innermost open run's ``RunHandle`` (``otel_runs.current_run()``; read by the
#: logging capture too, which must not import the tracking code).
CURRENT_RUN: contextvars.ContextVar[Any] = contextvars.ContextVar("otel_runs_current_run",
                                                                  default=None)


def _only_key(ctx: Context) -> str | None:
    return next(iter(ctx)) if len(ctx) == 1 else None


# The keys OpenTelemetry keeps the current span and the W3C Baggage under, read off
# its public functions once: a run's context is then built as one dict, where
# ``set_span_in_context``, ``set_value`` and ``set_baggage`` copy it three times.
_SPAN_KEY = _only_key(trace.set_span_in_context(trace.INVALID_SPAN, Context()))
_BAGGAGE_KEY = _only_key(baggage.set_baggage(A.BAGGAGE_RUN_ID, "", Context()))


def with_run(run_id: str, ctx: Context) -> Context:
    """``ctx`` with ``run_id`` as the current run, locally and in W3C Baggage."""
    ctx = context.set_value(LOCAL_RUN_KEY, run_id, ctx)
    return baggage.set_baggage(A.BAGGAGE_RUN_ID, run_id, ctx)


def run_context(run_id: str, span: trace.Span, parent: Context) -> Context:
    """``parent`` with ``span`` as the current span and ``run_id`` as the current run
    (what ``with_run(run_id, set_span_in_context(span, parent))`` returns)."""
    if _SPAN_KEY is None or _BAGGAGE_KEY is None:  # pragma: no cover - another API layout
        return with_run(run_id, trace.set_span_in_context(span, parent))
    bag = parent.get(_BAGGAGE_KEY)
    bag = {**bag, A.BAGGAGE_RUN_ID: run_id} if isinstance(bag, dict) else {A.BAGGAGE_RUN_ID: run_id}
    return Context({**parent, _SPAN_KEY: span, LOCAL_RUN_KEY: run_id, _BAGGAGE_KEY: bag})


def local_run_id(ctx: Context | None = None) -> str | None:
    """The run opened in this process that encloses ``ctx`` (default: current)."""
    value = (ctx if ctx is not None else context.get_current()).get(LOCAL_RUN_KEY)
    return value if isinstance(value, str) else None


def parent_run_id(ctx: Context | None = None) -> str | None:
    """The enclosing run: a local one, else one carried in from another service by
    W3C Baggage (only well-formed ids are accepted)."""
    if ctx is None:
        ctx = context.get_current()
    local = ctx.get(LOCAL_RUN_KEY)
    if isinstance(local, str):
        return local
    if _BAGGAGE_KEY is not None and not ctx.get(_BAGGAGE_KEY):  # no baggage at all
        return None
    remote = baggage.get_baggage(A.BAGGAGE_RUN_ID, ctx)
    if isinstance(remote, str):
        from ._ids import InvalidRunId, validate_run_id

        try:
            return validate_run_id(remote)
        except InvalidRunId:
            return None
    return None
