"""The former home of redaction; kept so that old imports work. See :mod:`otel_runs.redaction`."""

from __future__ import annotations

from .redaction import (
    MAX_SUMMARY_CHARS,
    MAX_VALUE_CHARS,
    REDACTED,
    SECRET_KEY_PARTS,
    add_secret_key_parts,
    clean_metadata,
    clean_summary,
    is_secret_key,
    metadata_json,
)

__all__ = [
    "MAX_SUMMARY_CHARS",
    "MAX_VALUE_CHARS",
    "REDACTED",
    "SECRET_KEY_PARTS",
    "add_secret_key_parts",
    "clean_metadata",
    "clean_summary",
    "is_secret_key",
    "metadata_json",
]
