"""Run data made safe to keep: secrets scrubbed, sizes bounded, JSON-safe.

:func:`clean_value` walks metadata (and event attributes) once: a value under a secret
key becomes ``***`` (``None``, booleans and ``""`` say nothing and are kept), every
string goes through :func:`~otel_runs.redaction.scrub_text` and the limits of
:mod:`~otel_runs.redaction._limits`, an argv list's item after ``--password`` is
redacted, values JSON cannot hold become their (bounded, scrubbed) ``repr``.
"""

from __future__ import annotations

import json
import math
import reprlib
import traceback
from itertools import islice
from typing import Any

from . import _keys as K
from . import _limits as L
from ._keys import CACHES, is_secret_key
from ._text import REDACTED, is_secret_flag, scrub_text

__all__ = ["bounded_tail", "bounded_text", "clean_key", "clean_metadata", "clean_name",
           "clean_summary", "clean_value", "exception_attributes", "metadata_json", "says_nothing"]

_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = _repr.maxother = L.MAX_VALUE_CHARS
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxfrozenset = _repr.maxdeque = 100
_repr.maxdict = 100
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=repr).encode


def bounded_text(text: str, limit: int) -> str:
    """``text`` scrubbed and cut to ``limit`` characters (plus a marker). Text beyond
    the cut is scrubbed too, up to a margin, so that a secret across it is found."""
    if len(text) <= limit:
        return scrub_text(text)
    if L.is_cut(text, limit):
        return scrub_text(text)
    original = len(text)
    return L.cut(scrub_text(text[:limit + L.MARGIN_CHARS]), limit, original)


def bounded_tail(text: str, limit: int) -> str:
    """``text`` scrubbed, its last ``limit`` characters kept (stack traces)."""
    if len(text) <= limit or L.is_cut(text, limit):
        return scrub_text(text)
    return L.cut_tail(scrub_text(text[-(limit + L.MARGIN_CHARS):]), limit, len(text))


def clean_summary(summary: object) -> str:
    """A summary as a bounded, scrubbed string."""
    text = summary if type(summary) is str else str(summary)
    if len(text) <= L.MAX_SUMMARY_CHARS:
        return scrub_text(text)
    return bounded_text(text, L.MAX_SUMMARY_CHARS)


def clean_name(name: object) -> str:
    """An event or span name as a bounded, scrubbed string."""
    text = name if type(name) is str else str(name)
    if len(text) <= L.MAX_NAME_CHARS:
        return scrub_text(text)
    return bounded_text(text, L.MAX_NAME_CHARS)


#: Keys already seen -> (the key as kept, whether it names a secret).
_keys: dict[str, tuple[str, bool]] = {}
CACHES.append(_keys)  # type: ignore[arg-type]


def clean_key(key: object) -> tuple[str, bool]:
    """A dict key as kept (bounded, scrubbed) and whether it names a secret."""
    known = _keys.get(key)  # type: ignore[call-overload]
    if known is not None:
        return known
    text = key if type(key) is str else str(key)
    seen = K.generation
    secret = is_secret_key(text)
    if len(text) > L.MAX_KEY_CHARS:
        return bounded_text(text, L.MAX_KEY_CHARS), secret
    known = (scrub_text(text), secret)
    if type(key) is str and seen == K.generation:
        if len(_keys) >= 8_192:
            _keys.clear()
        _keys[key] = known
    return known


def says_nothing(value: Any) -> bool:
    return value is None or value is True or value is False or (type(value) is str and not value)


def _safe_repr(value: Any) -> str:
    try:
        return _repr.repr(value)
    except Exception as exc:  # a broken __repr__
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"


def _clean_str(text: str, budget: L.Budget) -> str:
    if len(text) > L.MAX_VALUE_CHARS:
        text = bounded_text(text, L.MAX_VALUE_CHARS)
    else:
        text = scrub_text(text)
    cost = (len(text) if text.isascii() else L.text_size(text)) + 3
    if cost > budget.left:
        keep = budget.left - 64
        if keep < 16:
            budget.left -= 48
            return f"…[dropped: the run is over its {L.MAX_RUN_BYTES}-byte limit]"
        text = L.cut(text, keep, why=f"; the run is over its {L.MAX_RUN_BYTES}-byte limit")
        cost = L.text_size(text) + 3
    budget.left -= cost
    return text


def clean_value(value: Any, budget: L.Budget, depth: int = 0) -> Any:
    """``value`` as JSON-safe data within ``budget`` (see the module docstring)."""
    if value is None or value is True or value is False:
        budget.left -= 5
        return value
    kind = type(value)
    if kind is str:
        return _clean_str(value, budget)
    if kind is int:
        budget.left -= 8
        return value
    if isinstance(value, float):
        budget.left -= 8
        return value if math.isfinite(value) else repr(float(value))
    if isinstance(value, int):  # an IntEnum, ...: JSON writes the number
        budget.left -= 8
        return value
    if depth >= L.MAX_DEPTH or not isinstance(value, (dict, list, tuple)):
        return _clean_str(_safe_repr(value), budget)
    if isinstance(value, dict):
        return _clean_dict(value, budget, depth)
    return _clean_list(value, budget, depth)


def _clean_dict(value: dict[Any, Any], budget: L.Budget, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    count = 0
    for k, v in value.items():
        if count >= L.MAX_ITEMS or budget.left <= 0:
            more = len(value) - count
            why = (f"limit {L.MAX_ITEMS} keys" if count >= L.MAX_ITEMS
                   else f"the run is over its {L.MAX_RUN_BYTES}-byte limit")
            out[L.TRUNCATED_KEY] = f"{more} more keys dropped ({why})"
            budget.left -= 80
            break
        key, secret = clean_key(k)
        budget.left -= len(key) + 4
        if secret and not says_nothing(v):
            out[key] = REDACTED
            budget.left -= 5
        else:
            out[key] = clean_value(v, budget, depth + 1)
        count += 1
    return out


def _clean_list(value: list[Any] | tuple[Any, ...], budget: L.Budget, depth: int) -> list[Any]:
    out: list[Any] = []
    redact_next = False
    for item in islice(value, L.MAX_ITEMS):
        if budget.left <= 0:
            out.append(f"…[{len(value) - len(out)} more items dropped: the run is over its "
                       f"{L.MAX_RUN_BYTES}-byte limit]")
            budget.left -= 80
            return out
        if redact_next and type(item) is str and item[:1] != "-":
            out.append(REDACTED)
            budget.left -= 6
            redact_next = False
            continue
        out.append(clean_value(item, budget, depth + 1))
        redact_next = type(item) is str and item[:1] == "-" and is_secret_flag(item)
    if len(value) > L.MAX_ITEMS:
        out.append(f"…[{len(value) - L.MAX_ITEMS} more items dropped (limit {L.MAX_ITEMS} items)]")
        budget.left -= 80
    return out


def clean_metadata(metadata: dict[str, Any], budget: L.Budget | None = None) -> dict[str, Any]:
    """A JSON-safe copy of ``metadata`` within ``budget`` (default: a whole run's
    :data:`~otel_runs.redaction.MAX_RUN_BYTES`)."""
    cleaned = _clean_dict(dict(metadata), budget or L.Budget(L.MAX_RUN_BYTES), 0)
    return cleaned


def metadata_json(metadata: dict[str, Any], limit: int | None = None) -> str:
    """The cleaned metadata as compact JSON (what goes on the span), at most ``limit``
    bytes of UTF-8 (default :data:`~otel_runs.redaction.MAX_RUN_BYTES`)."""
    if not metadata:
        return "{}"
    limit = L.MAX_RUN_BYTES if limit is None else max(limit, 1_024)
    budget = limit
    for _ in range(4):
        text = _dumps(clean_metadata(metadata, L.Budget(budget)))
        size = L.text_size(text)
        if size <= limit:
            return text
        budget = int(budget * limit / size * 0.9)  # escapes and punctuation took more
    return _dumps({L.TRUNCATED_KEY: f"{len(metadata)} keys dropped (over the {limit}-byte limit)"})


def exception_attributes(exc: BaseException) -> dict[str, str]:
    """``exception.message`` and ``exception.stacktrace`` of ``exc``, scrubbed and bounded
    (they override what the SDK's ``record_exception`` would record)."""
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type(exc).__name__}>"
    try:
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        stack = message
    return {"exception.message": bounded_text(message, L.MAX_VALUE_CHARS),
            "exception.stacktrace": bounded_tail(stack, L.MAX_STACKTRACE_CHARS)}
