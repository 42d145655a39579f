"""Span attribute names: otel-runs' own live under ``run.``; beside them, run spans carry
OpenTelemetry's CI/CD semantic conventions (``cicd.pipeline.*``, ``error.type``), whose
names come from the ``opentelemetry-semantic-conventions`` package."""

from __future__ import annotations

from opentelemetry.semconv._incubating.attributes.cicd_attributes import (
    CICD_PIPELINE_NAME,
    CICD_PIPELINE_RESULT,
    CICD_PIPELINE_RUN_ID,
    CICD_PIPELINE_RUN_STATE,
    CicdPipelineResultValues,
    CicdPipelineRunStateValues,
)
from opentelemetry.semconv.attributes.error_attributes import (
    ERROR_TYPE,
    ErrorTypeValues,
)

PREFIX = "run."

#: The run's id. On the run span *and* on every span opened inside the run.
RUN_ID = "run.id"
#: Broad run type (``deploy``). Only run spans carry it: it marks a span as a run.
RUN_TYPE = "run.type"
#: ``type:detail`` subtype (``deploy:k8s``); also the run span's name.
RUN_SUBTYPE = "run.subtype"
#: ``running`` | ``ok`` | ``failed`` | ``cancelled`` | ``interrupted``.
RUN_STATUS = "run.status"
RUN_SUMMARY = "run.summary"
#: The enclosing run's id (same process, or carried in W3C Baggage).
RUN_PARENT_ID = "run.parent_id"
#: The run's metadata as one JSON object (secrets redacted, values truncated).
RUN_METADATA = "run.metadata"

#: W3C Baggage key that carries the current run id to other services.
BAGGAGE_RUN_ID = "otel_runs.run_id"

# -- OpenTelemetry's CICD conventions (incubating): a run span is a pipeline-run span ----
# cicd.pipeline.name = the subtype, cicd.pipeline.run.id = the run id,
# cicd.pipeline.result = RESULT_OF_STATUS[run.status], error.type on failed runs.

__all__ = ["BAGGAGE_RUN_ID", "CICD_PIPELINE_NAME", "CICD_PIPELINE_RESULT", "CICD_PIPELINE_RUN_ID",
           "CICD_PIPELINE_RUN_STATE", "ERROR_OTHER", "ERROR_TYPE", "PREFIX", "RESULT_OF_STATUS",
           "RUN_ID", "RUN_METADATA", "RUN_PARENT_ID", "RUN_STATE_EXECUTING", "RUN_STATUS",
           "RUN_SUBTYPE", "RUN_SUMMARY", "RUN_TYPE", "error_type"]

#: ``cicd.pipeline.result`` of each finished run status (``running`` has none).
RESULT_OF_STATUS: dict[str, str] = {
    "ok": CicdPipelineResultValues.SUCCESS.value,
    "failed": CicdPipelineResultValues.FAILURE.value,
    "cancelled": CicdPipelineResultValues.CANCELLATION.value,
    "interrupted": CicdPipelineResultValues.ERROR.value,
}
#: ``cicd.pipeline.run.state`` of a run that has started and not ended.
RUN_STATE_EXECUTING = CicdPipelineRunStateValues.EXECUTING.value
#: ``error.type`` of a failed run that raised nothing (a reported or derived failure).
ERROR_OTHER = ErrorTypeValues.OTHER.value


def error_type(exc: BaseException | None) -> str:
    """``error.type`` of a failed run: the exception's class as the SDK's
    ``exception.type`` names it (``module.Qualname``, ``builtins`` left out), else ``_OTHER``."""
    if exc is None:
        return ERROR_OTHER
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
