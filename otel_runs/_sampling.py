"""A sampler wrapper under which a run span is always recorded."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from . import _attributes as A
from ._context import local_run_id

__all__ = ["RunAwareSampler"]


class RunAwareSampler(Sampler):
    """Delegates to ``delegate``; where it would DROP a run span, or a span opened
    inside a run, records it anyway (``RECORD_ONLY``: run processors see it, trace
    exporters, which honour the sampled flag, do not)."""

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        result = self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is Decision.DROP and (
            (attributes and A.RUN_TYPE in attributes) or local_run_id(parent_context) is not None
        ):
            return SamplingResult(Decision.RECORD_ONLY, attributes, result.trace_state)
        return result

    def get_description(self) -> str:
        return f"RunAwareSampler{{{self.delegate.get_description()}}}"
