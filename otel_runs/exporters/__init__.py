"""Span processors and exporters that consume runs."""

from __future__ import annotations

from ._run_processor import RunProcessor, is_run_span

__all__ = ["RunProcessor", "is_run_span"]
