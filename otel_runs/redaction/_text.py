"""Secrets inside text: credential shapes, ``key=value`` pairs, registered values.

:func:`scrub_text` replaces, anywhere in a string:

- values the application registered (:func:`add_secret_values`), e.g. a vault passphrase;
- PEM private keys (``-----BEGIN ... PRIVATE KEY-----`` to its END line, or to the end);
- token formats: GitHub (``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_``, ``github_pat_``),
  AWS access key ids (``AKIA``/``ASIA`` + 16), Slack (``xox[abposr]-``), JWTs
  (``eyJ….eyJ…``), Google API keys (``AIza`` + 35), Stripe (``sk_live_``, ``rk_test_``),
  GitLab (``glpat-``), npm (``npm_``), PyPI (``pypi-AgEIcHlwaS5vcmc…``), OpenAI/Anthropic
  (``sk-…``), and patterns added with :func:`add_secret_patterns`;
- ``Bearer <token>`` and ``Basic <base64>`` credentials;
- the password of a URL (``scheme://user:***@host``);
- the value after a secret key name (:func:`~otel_runs.redaction.is_secret_key`) and
  ``=`` or ``:`` (``password=x``, ``?token=x&``, ``"api_key": "x"``, ``Authorization:
  Bearer x``, ``--password=x``), after a secret long option and a space (``--password x``,
  ``-token x``), and a quoted literal after a secret word (``PASSWORD 'x'``,
  ``IDENTIFIED BY 'x'``).

Each becomes ``***``. A string that may hold none of these (no token anchor such as
``://``, ``gh``, ``AKIA``, ``eyJ``, ``earer``; no separator with a secret word such as
``pass``, ``token``, ``key`` before it; no registered value) is returned as it is after
substring tests only (:func:`_may_hold_secret`).

Strings found clean are remembered by their *shape*: the text with every digit 1-9
written as 0 (``step 12 of 40`` and ``step 13 of 40`` have one shape). Every built-in
rule decides the same for all strings of one shape (none of them depends on which digit
is where), so output lines that differ only in their numbers are scrubbed once.
Registered values are looked for in the string itself first (a value may be digits);
with patterns added by :func:`add_secret_patterns`, or key parts holding digits, only
exact strings are remembered.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable

from . import _keys
from ._keys import CACHES, is_secret_key, rules_changed

__all__ = ["REDACTED", "add_secret_patterns", "add_secret_values", "is_secret_flag",
           "scrub_text", "scrub_texts"]

logger = logging.getLogger("otel_runs")

#: What a secret is replaced with.
REDACTED = "***"
#: Shortest value :func:`add_secret_values` accepts (shorter ones would redact words).
MIN_SECRET_VALUE_CHARS = 4
#: Most registered values kept; beyond, the oldest are forgotten (with a warning).
MAX_SECRET_VALUES = 1_024

_Detector = tuple[tuple[str, ...], "re.Pattern[str]", Callable[["re.Match[str]"], str] | str]


def _keep_group1(match: re.Match[str]) -> str:
    return match.group(1) + REDACTED


_BASE_DETECTORS: list[_Detector] = [
    (("-----BEGIN",), re.compile(
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY[A-Z ]{0,10}-----.*?"
        r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY[A-Z ]{0,10}-----|\Z)", re.S), REDACTED),
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"), re.compile(
        r"\b(?:gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,})"), REDACTED),
    (("AKIA", "ASIA"), re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"), REDACTED),
    (("xox",), re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{8,}"), REDACTED),
    (("eyJ",), re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?"),
     REDACTED),
    (("AIza",), re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"), REDACTED),
    (("k_live_", "k_test_"), re.compile(r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{10,}"), REDACTED),
    (("glpat-",), re.compile(r"\bglpat-[A-Za-z0-9_-]{16,}"), REDACTED),
    (("npm_",), re.compile(r"\bnpm_[A-Za-z0-9]{30,}"), REDACTED),
    # (``[0-9]`` where PyPI tokens hold a 5: every rule must decide alike for all strings of
    # one shape, see the module docstring.)
    (("pypi-",), re.compile(r"\bpypi-AgEIcHlwaS[0-9]vcmc[A-Za-z0-9_-]{20,}"), REDACTED),
    (("sk-",), re.compile(r"\bsk-(?:proj-|ant-|svcacct-)?[A-Za-z0-9_-]{20,}"), REDACTED),
    (("earer", "EARER"), re.compile(
        r"\b((?i:bearer)[ \t]+)(?:(?=[A-Za-z0-9._~+/-]*[0-9._~+/-])[A-Za-z0-9._~+/-]{8,}"
        r"|[A-Za-z]{20,})=*"), _keep_group1),
    (("asic", "ASIC"), re.compile(
        r"\b((?i:basic)[ \t]+)(?=[A-Za-z0-9+/]*[0-9+/=])[A-Za-z0-9+/]{8,}={0,2}"), _keep_group1),
    (("://",), re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s:/?#@]*:)[^\s/?#]+(?=@)"),
     _keep_group1),
]
_detectors: list[_Detector] = list(_BASE_DETECTORS)
_always: list[re.Pattern[str]] = []  # added patterns without anchors: run on every string

#: Shapes (or strings) up to :data:`_CLEAN_CACHE_CHARS` known to hold no secret.
_clean: dict[bytes | str, bool] = {}
CACHES.append(_clean)  # type: ignore[arg-type]
_CLEAN_CACHE_MAX = 4_096
_CLEAN_CACHE_CHARS = 256
#: Substrings one of which added patterns need (see :func:`add_secret_patterns`).
_extra_anchors: tuple[str, ...] = ()

#: Digits 1-9 -> 0 (a string's shape, see the module docstring).
_SHAPE = bytes.maketrans(b"123456789", b"000000000")
_by_shape = True  # False once a rule may tell digits apart (added patterns, digit key parts)

_values: dict[str, None] = {}  # insertion-ordered
_values_re: re.Pattern[str] | None = None
_forgot = False  # warned that the oldest values were forgotten
_lock = threading.Lock()

# -- key=value, options and quoted literals -----------------------------------------
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
#: Reversed text just before a separator: spaces, a quote, a backslash, the key.
_REV_KEY = re.compile(r"[ \t]{0,4}\\?[\"']?\\?([A-Za-z0-9_.\-]{1,128})")
_VALUE = re.compile(
    r"[ \t]{0,4}(\\\"(?:[^\"\\]|\\[^\"])*\\\"|\"(?:[^\"\\\n]|\\.)*\"?|'[^'\n]*'?|"
    r"(?:(?i:bearer|basic|digest|token)[ \t]+)?[^\s&;,\"'<>(){}\[\]]+)")
_OPTION = re.compile(r"--?([A-Za-z][A-Za-z0-9_.\-]+)[ \t]+(?!-)(\"[^\"]*\"|'[^']*'|\S+)")
_FLAG = re.compile(r"--?[A-Za-z][A-Za-z0-9_.\-]+")


def add_secret_values(*values: object) -> None:
    """Redact these exact values wherever they appear, from now on (a vault passphrase,
    a token read at start-up). Values shorter than 4 characters are ignored; at most
    1,024 are kept (the oldest are forgotten first)."""
    global _values_re, _forgot
    added = False
    with _lock:
        for value in values:
            text = value if isinstance(value, str) else str(value)
            if len(text) < MIN_SECRET_VALUE_CHARS or text in _values:
                continue
            _values[text] = None
            added = True
        if not added:
            return
        while len(_values) > MAX_SECRET_VALUES:
            del _values[next(iter(_values))]
            if not _forgot:
                _forgot = True
                logger.warning("otel-runs: more than %d secret values registered; the oldest "
                               "are forgotten (this is said once)", MAX_SECRET_VALUES)
        ordered = sorted(_values, key=len, reverse=True)  # the longest match first
        _values_re = re.compile("|".join(map(re.escape, ordered)))
    rules_changed()


def add_secret_patterns(*patterns: str | re.Pattern[str], anchors: Iterable[str] = ()) -> None:
    """Redact every match of these regular expressions from now on. ``anchors``:
    substrings one of which every match contains (``"tok_"``), so that strings without
    them skip the pattern; without anchors the pattern runs on every string (slower)."""
    compiled = [p if isinstance(p, re.Pattern) else re.compile(p) for p in patterns]
    keys = tuple(anchors)
    global _extra_anchors, _by_shape
    with _lock:
        _by_shape = False  # an added pattern may tell digits apart
        for pattern in compiled:
            if keys:
                _detectors.append((keys, pattern, REDACTED))
            else:
                _always.append(pattern)
        _extra_anchors = tuple(dict.fromkeys((*_extra_anchors, *keys)))
    rules_changed()


def is_secret_flag(item: str) -> bool:
    """``--password`` / ``-token`` (a whole argv item): the next item is its secret value."""
    return (len(item) < 130 and item[:1] == "-" and _FLAG.fullmatch(item) is not None
            and is_secret_key(item.lstrip("-")))


def scrub_text(text: str) -> str:
    """``text`` with every secret it holds replaced by ``***`` (see the module docstring)."""
    seen = _keys.generation  # before the rules are read: see _keys.generation
    values = _values_re
    if values is not None and values.search(text) is not None:
        return _scrub_shapes(values.sub(REDACTED, text))
    if _by_shape and not _keys.digit_parts:
        key: bytes | str = text.encode("utf-8", "surrogatepass").translate(_SHAPE)
        return _scrub_clean_as(text, key, seen)
    return _scrub_clean_as(text, text, seen)


def _scrub_clean_as(text: str, key: bytes | str, seen: int) -> str:
    """:func:`scrub_text` of a string holding no registered value, remembered as ``key``
    (its shape, or itself) when it is clean and the rules are still those of ``seen``."""
    if key in _clean:
        return text
    if _always or _may_hold_secret(text):
        scrubbed = _scrub_shapes(text)
        if scrubbed is not text:
            return scrubbed
    if len(text) <= _CLEAN_CACHE_CHARS and seen == _keys.generation:
        if len(_clean) >= _CLEAN_CACHE_MAX:
            _clean.clear()
        _clean[key] = True
    return text


def _may_hold_secret(text: str) -> bool:
    """False when no rule can match ``text`` (a necessary condition of each, tested with
    plain substring tests, spelled out: this runs for every string a run records)."""
    # Every built-in token shape holds one of these (``gh`` for ghp_/.../github_pat_,
    # ``k_`` for sk_live_/rk_test_/...), then those of added patterns.
    if ("://" in text or "gh" in text or "k_" in text or "sk-" in text or "eyJ" in text
            or "AKIA" in text or "ASIA" in text or "AIza" in text or "xox" in text
            or "earer" in text or "EARER" in text or "asic" in text or "ASIC" in text
            or "npm_" in text or "pypi-" in text or "glpat-" in text or "-----BEGIN" in text):
        return True
    for anchor in _extra_anchors:
        if anchor in text:
            return True
    # key=value, key: value, --option value, WORD 'literal': only after a secret word.
    if "=" in text or ":" in text or "-" in text or "'" in text or '"' in text:
        low = text.lower()
        for word in _keys.secret_word_needles():
            if word in low:
                return True
    return False


def scrub_texts(texts: list[str]) -> list[str]:
    """:func:`scrub_text` of each string (lines without a newline); ``texts`` itself when
    all are known clean, which is found for all of them at once (the lines of a tool's
    output mostly differ only in their numbers)."""
    seen = _keys.generation  # before the rules are read: see _keys.generation
    if _by_shape and not _keys.digit_parts and _values_re is None:
        joined = "\n".join(texts).encode("utf-8", "surrogatepass")
        shapes = joined.translate(_SHAPE).split(b"\n")
        if len(shapes) == len(texts):
            if all(map(_clean.__contains__, shapes)):
                return texts
            return [_scrub_clean_as(text, shape, seen)  # (each shape made once)
                    for text, shape in zip(texts, shapes, strict=True)]
    return [scrub_text(text) for text in texts]


def _scrub_shapes(text: str) -> str:
    """Every rule but the registered values; ``text`` itself when nothing matched."""
    original = text
    for anchors, pattern, replacement in _detectors:
        for anchor in anchors:
            if anchor in text:
                text = pattern.sub(replacement, text)
                break
    for pattern in _always:
        text = pattern.sub(REDACTED, text)
    if "=" in text or ":" in text:
        text = _scrub_pairs(text)
    if "-" in text:
        text = _scrub_options(text)
    if "'" in text or '"' in text:
        text = _scrub_quoted(text)
    return original if text == original else text


def _key_before(text: str, rev: str, end: int) -> str:
    """The key name that ends just before index ``end`` of ``text`` (``rev`` is
    ``text`` reversed), without leading dashes, dots, underscores or digits."""
    match = _REV_KEY.match(rev, len(text) - end)
    if match is None:
        return ""
    return match.group(1)[::-1].lstrip("-_.0123456789")


def _redacted_like(value: str) -> str:
    """``***`` quoted as ``value`` was (``"x"`` -> ``"***"``)."""
    if value.startswith('\\"'):
        return '\\"' + REDACTED + '\\"'
    if value[:1] in "\"'":
        return value[0] + REDACTED + (value[0] if len(value) > 1 and value[-1] == value[0] else "")
    return REDACTED


def _scrub_pairs(text: str) -> str:
    """Redact the value after each ``<secret key> = `` or ``<secret key>: ``."""
    rev = ""
    out: list[str] = []
    done = 0  # text[:done] is settled
    eq, colon = text.find("="), text.find(":")
    while eq >= 0 or colon >= 0:
        if colon < 0 or 0 <= eq < colon:
            i, eq = eq, text.find("=", eq + 1)
        else:
            i, colon = colon, text.find(":", colon + 1)
        if i < done:
            continue  # inside a value already redacted
        if not rev:
            rev = text[::-1]
        key = _key_before(text, rev, i)
        if not key or not is_secret_key(key):
            continue
        value = _VALUE.match(text, i + 1)
        if value is None or not value.group(1) or value.group(1) == REDACTED:
            continue
        out.append(text[done:value.start(1)])
        out.append(_redacted_like(value.group(1)))
        done = value.end(1)
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)


def _find_all(text: str, needle: str) -> Iterable[int]:
    i = text.find(needle)
    while i >= 0:
        yield i
        i = text.find(needle, i + 1)


def _scrub_options(text: str) -> str:
    """``--password x`` / ``-token x`` inside a command line."""
    out: list[str] = []
    done = 0
    for i in _find_all(text, "-"):
        if i < done or (i > 0 and (text[i - 1] in _KEY_CHARS)):
            continue
        match = _OPTION.match(text, i)
        if match is None or not is_secret_key(match.group(1)) or match.group(2) == REDACTED:
            continue
        out.append(text[done:match.start(2)])
        out.append(_redacted_like(match.group(2)))
        done = match.end(2)
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)


def _scrub_quoted(text: str) -> str:
    """A quoted literal right after a secret word and spaces (``PASSWORD 'x'``)."""
    positions = sorted(i for q in "'\"" for i in _find_all(text, q))
    rev = text[::-1]
    out: list[str] = []
    done = 0
    for i in positions:
        if i < done or i == 0 or text[i - 1] not in " \t":
            continue
        j = i - 1
        while j > 0 and text[j - 1] in " \t":
            j -= 1
        key = _key_before(text, rev, j)
        if not key:
            continue
        if key.lower() == "by":  # SQL: IDENTIFIED BY 'x'
            secret = text[max(0, j - 16):j].rstrip()[:-2].rstrip().lower().endswith("identified")
        else:
            secret = is_secret_key(key)
        if not secret:
            continue
        quote = text[i]
        close = text.find(quote, i + 1)
        while 0 <= close < len(text) - 1 and text[close + 1] == quote:  # SQL's '' inside
            close = text.find(quote, close + 2)
        end = len(text) if close < 0 else close + 1
        if text[i + 1:end - 1] == REDACTED:
            continue
        out.append(text[done:i])
        out.append(quote + REDACTED + (quote if close >= 0 else ""))
        done = end
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)
