"""Span processors and exporters that consume runs."""

from __future__ import annotations

from ._run_processor import RunProcessor, is_run_span, run_project_root
from ._scrubbing import ScrubbingSpanExporter
from .ledger import LedgerRunProcessor, LedgerSpanExporter, ledger_processor_for
from .otlp import OTLPSpanProcessor, otlp_processor
from .sse import RUN_COMPLETED, RUN_STARTED, SSESpanProcessor

__all__ = [
    "RUN_COMPLETED",
    "RUN_STARTED",
    "LedgerRunProcessor",
    "LedgerSpanExporter",
    "OTLPSpanProcessor",
    "RunProcessor",
    "SSESpanProcessor",
    "ScrubbingSpanExporter",
    "is_run_span",
    "ledger_processor_for",
    "otlp_processor",
    "run_project_root",
]
