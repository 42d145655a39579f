"""Span attribute names: everything otel-runs puts on a span lives under ``run.``."""

from __future__ import annotations

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
