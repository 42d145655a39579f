"""Carry the current trace and run to another service over HTTP."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import propagate

__all__ = ["outgoing_headers"]


def outgoing_headers(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus the current context in the globally configured propagators'
    format (default: W3C ``traceparent``/``tracestate`` and ``baggage``, which carries
    the current run id as ``otel_runs.run_id``). A run opened by the receiving service
    joins this trace and records this run as its ``parent_run_id``::

        requests.post(url, json=body, headers=outgoing_headers())
    """
    out = dict(headers or {})
    propagate.inject(out)
    return out
