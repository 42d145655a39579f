"""Every size limit on what otel-runs stores, streams or exports, and how text is cut.

The limits are read once, at import, from the ``OTEL_RUNS_MAX_*`` variables (see
:mod:`otel_runs._settings`); the others are constants. Whatever is cut says so: a
string ends with ``…[truncated N chars]``, a list with ``…[N more items]``, a dict
gets a ``_truncated`` key, a run's events a ``otel_runs.events_dropped`` event.
"""

from __future__ import annotations

from opentelemetry.sdk.trace import SpanLimits

from .. import _settings as S

__all__ = [
    "MARGIN_CHARS",
    "MAX_DEPTH",
    "MAX_EVENTS",
    "MAX_EVENT_BYTES",
    "MAX_ITEMS",
    "MAX_KEY_CHARS",
    "MAX_NAME_CHARS",
    "MAX_RUN_BYTES",
    "MAX_SPANS_BYTES",
    "MAX_SPAN_ATTRIBUTES",
    "MAX_STACKTRACE_CHARS",
    "MAX_SUMMARY_CHARS",
    "MAX_VALUE_CHARS",
    "TRUNCATED_KEY",
    "Budget",
    "cut",
    "cut_tail",
    "is_cut",
    "text_size",
]

#: Longest dict key / attribute key kept (characters).
MAX_KEY_CHARS = 256
#: Longest event name and child span name kept (characters).
MAX_NAME_CHARS = 256
#: Longest summary kept (characters).
MAX_SUMMARY_CHARS = 1_000
#: Longest string value kept in metadata, event attributes and span attributes.
MAX_VALUE_CHARS = S.env_int(S.OTEL_RUNS_MAX_VALUE_CHARS, 4_096, minimum=64)
#: Longest ``exception.stacktrace`` kept (its end: the innermost frames and the message).
MAX_STACKTRACE_CHARS = 16_384
#: Most items of one list (or tuple) and keys of one dict kept.
MAX_ITEMS = S.env_int(S.OTEL_RUNS_MAX_ITEMS, 1_000)
#: Deepest nesting of dicts and lists kept; deeper values become a short ``repr``.
MAX_DEPTH = 8
#: Most bytes of one run's record: metadata, summary and events together (about: JSON
#: punctuation is counted roughly; ``metadata_json`` checks the metadata exactly).
MAX_RUN_BYTES = S.env_int(S.OTEL_RUNS_MAX_RUN_BYTES, 262_144, minimum=4_096)
#: Most bytes the run's events may take of :data:`MAX_RUN_BYTES` (the rest is the metadata's).
MAX_EVENT_BYTES = MAX_RUN_BYTES // 2
#: Most events a run keeps, its ``otel_runs.events_dropped`` and
#: ``otel_runs.spans_dropped`` markers and the exception event included; never more than the SDK's own limit (``OTEL_SPAN_EVENT_COUNT_LIMIT``,
#: 128 by default), beyond which the SDK would drop the oldest ones silently.
MAX_EVENTS = min(S.env_int(S.OTEL_RUNS_MAX_EVENTS, 128, minimum=4),
                 SpanLimits().max_events or 128)
#: Most attributes kept per span or event (the SDK's default limit is 128 too).
MAX_SPAN_ATTRIBUTES = 128
#: Most bytes of child spans stored with one run (their count is capped at 2,000 too).
MAX_SPANS_BYTES = S.env_int(S.OTEL_RUNS_MAX_SPANS_BYTES, 1_048_576, minimum=4_096)
#: Text scrubbed beyond a cut, so that a secret straddling it is still recognised.
MARGIN_CHARS = 1_024
#: The key a dict gets when some of its keys were dropped.
TRUNCATED_KEY = "_truncated"


class Budget:
    """Bytes left for a record being built (goes negative when overspent)."""

    __slots__ = ("left", "start")

    def __init__(self, size: int) -> None:
        self.left = self.start = size

    @property
    def used(self) -> int:
        """Bytes spent so far."""
        return self.start - self.left


def text_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (``len`` for ASCII, which Python knows in O(1))."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _marker(count: int, why: str = "") -> str:
    return f"…[truncated {count} chars{why}]"


def cut(text: str, limit: int, original: int | None = None, why: str = "") -> str:
    """The first ``limit`` characters of ``text`` and a marker saying how many of
    ``original`` (default: ``len(text)``) were cut; ``text`` itself if it fits."""
    if len(text) <= limit:
        return text
    total = len(text) if original is None else original
    return text[:limit] + _marker(total - limit, why)


def cut_tail(text: str, limit: int, original: int | None = None) -> str:
    """The last ``limit`` characters of ``text`` after a marker (for stack traces)."""
    if len(text) <= limit:
        return text
    total = len(text) if original is None else original
    return _marker(total - limit) + text[-limit:]


def is_cut(text: str, limit: int) -> bool:
    """Whether ``text`` already is what :func:`cut` or :func:`cut_tail` made of a longer
    text for ``limit`` (so that cutting again, e.g. at an exit, leaves it as it is)."""
    if text.startswith("…[truncated "):
        end = text.find("]")
        return 0 < end < 96 and len(text) - end - 1 <= limit
    if not text.endswith("]"):
        return False
    mark = text.rfind("…[truncated ", max(0, len(text) - 96))
    return 0 <= mark <= limit
