"""Make run data safe to put on a span: redact secrets, bound sizes, force JSON."""

from __future__ import annotations

import json
from typing import Any

from ._settings import OTEL_RUNS_SECRET_KEYS, env_str

__all__ = [
    "MAX_SUMMARY_CHARS",
    "MAX_VALUE_CHARS",
    "REDACTED",
    "SECRET_KEY_PARTS",
    "add_secret_key_parts",
    "clean_metadata",
    "clean_summary",
    "is_secret_key",
]

#: What a secret value is replaced with.
REDACTED = "***"
#: Longest summary kept; longer ones are cut and end with a truncation marker.
MAX_SUMMARY_CHARS = 1_000
#: Longest string value kept in metadata and event attributes.
MAX_VALUE_CHARS = 4_096
_MAX_DEPTH = 8

#: A metadata key is secret when, lowercased with ``-`` and spaces read as ``_``,
#: it contains one of these. Extend with :func:`add_secret_key_parts` or the
#: comma-separated ``OTEL_RUNS_SECRET_KEYS`` environment variable.
SECRET_KEY_PARTS: set[str] = {
    "password",
    "passwd",
    "passphrase",
    "token",
    "secret",
    "api_key",
    "apikey",
    "private_key",
    "authorization",
    "cookie",
    "credential",
    "session_key",
    "access_key",
}
SECRET_KEY_PARTS.update(
    p.strip().lower()
    for p in (env_str(OTEL_RUNS_SECRET_KEYS) or "").split(",")
    if p.strip()
)


def add_secret_key_parts(*parts: str) -> None:
    """Treat keys containing any of ``parts`` as secrets from now on."""
    SECRET_KEY_PARTS.update(p.strip().lower() for p in parts if p.strip())


def is_secret_key(key: str) -> bool:
    """True if a metadata key names a secret (``db_password``, ``GITHUB_TOKEN``, ...)."""
    norm = str(key).lower().replace("-", "_").replace(" ", "_")
    return any(part in norm for part in SECRET_KEY_PARTS)


def truncate(text: str, limit: int) -> str:
    """Keep the first ``limit`` characters of ``text`` and mark what was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"…[truncated {len(text) - limit} chars]"


def clean_summary(summary: object) -> str:
    """A summary as a bounded string."""
    if type(summary) is str and len(summary) <= MAX_SUMMARY_CHARS:
        return summary  # the common case, without a call
    return truncate(summary if isinstance(summary, str) else str(summary), MAX_SUMMARY_CHARS)


def _clean(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    if isinstance(value, str):
        return truncate(value, MAX_VALUE_CHARS)
    if depth >= _MAX_DEPTH:
        return truncate(repr(value), MAX_VALUE_CHARS)
    if isinstance(value, dict):
        return {
            str(k): (REDACTED if is_secret_key(str(k)) else _clean(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_clean(v, depth + 1) for v in value]
    return truncate(repr(value), MAX_VALUE_CHARS)


def clean_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Return a JSON-safe copy: secret keys (at any depth) redacted, values that
    JSON cannot hold stored as their ``repr``, long strings truncated."""
    cleaned = _clean(dict(metadata), 0)
    assert isinstance(cleaned, dict)
    return cleaned


def metadata_json(metadata: dict[str, Any]) -> str:
    """The cleaned metadata as compact JSON (what goes on the span)."""
    if not metadata:
        return "{}"
    return json.dumps(clean_metadata(metadata), separators=(",", ":"), ensure_ascii=False)
