"""One scrubber for everything otel-runs stores, streams or exports, and its size limits.

Run metadata, summaries, exception messages and stack traces, event names and
attributes, child span attributes (before the ledger and the live feed get them) and
every span exported over OTLP go through it. What is matched and how to extend it:
``docs/security.md``.

- :func:`is_secret_key`: key names, matched by word parts (:mod:`._keys`);
- :func:`scrub_text`: secrets inside any string (:mod:`._text`);
- :func:`clean_metadata` / :func:`metadata_json` / :func:`clean_summary`: run data (:mod:`._values`);
- :func:`clean_attributes` / :func:`scrubbed_span`: spans (:mod:`._spans`);
- the limits (``MAX_*``, :mod:`._limits`).
"""

from __future__ import annotations

from ._keys import (
    KEY_QUALIFIERS,
    SAFE_FIRST_WORDS,
    SAFE_LAST_WORDS,
    SECRET_KEY_PARTS,
    SECRET_WORD_ENDINGS,
    add_secret_key_parts,
    is_secret_key,
    key_words,
)
from ._limits import (
    MAX_DEPTH,
    MAX_EVENT_BYTES,
    MAX_EVENTS,
    MAX_ITEMS,
    MAX_KEY_CHARS,
    MAX_NAME_CHARS,
    MAX_RUN_BYTES,
    MAX_SPAN_ATTRIBUTES,
    MAX_SPANS_BYTES,
    MAX_STACKTRACE_CHARS,
    MAX_SUMMARY_CHARS,
    MAX_VALUE_CHARS,
    TRUNCATED_KEY,
    Budget,
)
from ._spans import (
    EVENTS_DROPPED,
    SPANS_DROPPED,
    attributes_size,
    clean_attributes,
    clean_events,
    clean_run_attributes,
    dropped_events_marker,
    jsonable,
    scrub_run_dict,
    scrubbed_span,
)
from ._text import REDACTED, add_secret_patterns, add_secret_values, scrub_text
from ._values import (
    bounded_text,
    clean_metadata,
    clean_name,
    clean_summary,
    clean_value,
    exception_attributes,
    metadata_json,
)

__all__ = [
    "EVENTS_DROPPED",
    "KEY_QUALIFIERS",
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
    "REDACTED",
    "SAFE_FIRST_WORDS",
    "SAFE_LAST_WORDS",
    "SECRET_KEY_PARTS",
    "SECRET_WORD_ENDINGS",
    "SPANS_DROPPED",
    "TRUNCATED_KEY",
    "Budget",
    "add_secret_key_parts",
    "add_secret_patterns",
    "add_secret_values",
    "attributes_size",
    "bounded_text",
    "clean_attributes",
    "clean_events",
    "clean_metadata",
    "clean_name",
    "clean_run_attributes",
    "clean_summary",
    "clean_value",
    "dropped_events_marker",
    "exception_attributes",
    "is_secret_key",
    "jsonable",
    "key_words",
    "metadata_json",
    "scrub_run_dict",
    "scrub_text",
    "scrubbed_span",
]
