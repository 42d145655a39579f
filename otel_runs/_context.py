"""Where the current run lives in the OpenTelemetry context."""

from __future__ import annotations

from opentelemetry import baggage, context
from opentelemetry.context import Context

from . import _attributes as A

_LOCAL_RUN_KEY = context.create_key("otel_runs.current_run_id")
#: Set only in the context a run span is started with: the ``Run`` its opener
#: already knows, so run processors need not rebuild it from the span.
STARTING_RUN_KEY = context.create_key("otel_runs.starting_run")


def with_run(run_id: str, ctx: Context) -> Context:
    """``ctx`` with ``run_id`` as the current run, locally and in W3C Baggage."""
    ctx = context.set_value(_LOCAL_RUN_KEY, run_id, ctx)
    return baggage.set_baggage(A.BAGGAGE_RUN_ID, run_id, ctx)


def local_run_id(ctx: Context | None = None) -> str | None:
    """The run opened in this process that encloses ``ctx`` (default: current)."""
    value = context.get_value(_LOCAL_RUN_KEY, ctx)
    return value if isinstance(value, str) else None


def parent_run_id(ctx: Context | None = None) -> str | None:
    """The enclosing run: a local one, else one carried in from another service by
    W3C Baggage (only well-formed ids are accepted)."""
    local = local_run_id(ctx)
    if local is not None:
        return local
    remote = baggage.get_baggage(A.BAGGAGE_RUN_ID, ctx)
    if isinstance(remote, str):
        from ._ids import InvalidRunId, validate_run_id

        try:
            return validate_run_id(remote)
        except InvalidRunId:
            return None
    return None
