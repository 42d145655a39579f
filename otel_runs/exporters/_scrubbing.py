"""``ScrubbingSpanExporter``: hands another exporter scrubbed copies of the spans.

Ended spans are read-only, so secrets cannot be removed from them; instead each
exported span is copied (``ReadableSpan``, the SDK's own class) with its name,
attributes, events, links and status description scrubbed and bounded by
:func:`otel_runs.redaction.scrubbed_span`. otel-runs wraps its OTLP exporter in one,
so every span leaving over OTLP is scrubbed: runs, their child spans and the Flask
request span (``http.url``, ``url.full``, ``http.target``, ``url.query``, recorded
exceptions). A span that cannot be scrubbed is not exported (logged, rate-limited).
Wrap an exporter of your own the same way: ``ScrubbingSpanExporter(exporter)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .._ratelimit import RateLimitedLog
from ..redaction import scrubbed_span

__all__ = ["ScrubbingSpanExporter"]

logger = logging.getLogger("otel_runs.exporters")
_errors = RateLimitedLog(logger)


class ScrubbingSpanExporter(SpanExporter):
    """An exporter that passes scrubbed copies of the spans to ``exporter``."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        #: Spans not exported because scrubbing them failed.
        self.unscrubbable = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        safe: list[ReadableSpan] = []
        for span in spans:
            try:
                safe.append(scrubbed_span(span))
            except Exception:  # never export what could not be scrubbed
                self.unscrubbable += 1
                _errors.exception("scrub", "otel-runs: could not scrub span %r; not exported",
                                  getattr(span, "name", "?"))
        if not safe:
            return SpanExportResult.SUCCESS if not spans else SpanExportResult.FAILURE
        return self.exporter.export(safe)

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)
