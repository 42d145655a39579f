"""Which key names name a secret: matched by word parts, not by substring.

A key is split into words at ``.``, ``-``, ``_``, spaces and any other
non-alphanumeric character, at camelCase humps and between letters and digits
(``x-auth-token`` -> ``x auth token``, ``authHeader`` -> ``auth header``,
``HTTPAuthToken`` -> ``http auth token``, ``db.password`` -> ``db password``), then:

1. a key whose last word is in :data:`SAFE_LAST_WORDS` (``cookie_count``,
   ``token_type``, ``password_length``, ``secret_name``, ``auth_url``) or whose first
   word is in :data:`SAFE_FIRST_WORDS` (``max_tokens``, ``num_passwords``) is not a secret;
2. else it is a secret when a word is in :data:`SECRET_KEY_PARTS` (``password``, ``pwd``,
   ``token``, ``auth``, ``dsn``, ...), or ends with one of :data:`SECRET_WORD_ENDINGS`
   (``PGPASSWORD``, ``accesstoken``), or is ``key``/``keys`` right after one of
   :data:`KEY_QUALIFIERS` (``api_key``, ``privateKey``, ``secret_key``; also written
   as one word: ``apikey``, ``privkey``), or is the whole key ``key``; or when the key
   holds a multi-word part added by :func:`add_secret_key_parts` (``vault_pin``), word
   for word.

So ``max_tokens``, ``tokenizer``, ``secretary``, ``passenger``, ``keyboard`` and
``cookie_count`` are not secrets (no word matches, or a safe first/last word).
"""

from __future__ import annotations

import re
import threading

from .._settings import OTEL_RUNS_SECRET_KEYS, env_str

__all__ = [
    "KEY_QUALIFIERS",
    "SAFE_FIRST_WORDS",
    "SAFE_LAST_WORDS",
    "SECRET_KEY_PARTS",
    "SECRET_WORD_ENDINGS",
    "CACHES",
    "add_secret_key_parts",
    "is_secret_key",
    "key_words",
    "rules_changed",
]

#: Words that make a key a secret wherever they are in it.
SECRET_KEY_PARTS: set[str] = {
    "password", "passwords", "passwd", "pwd", "pass", "passphrase", "passcode",
    "secret", "secrets", "token", "auth", "authorization", "bearer", "jwt",
    "credential", "credentials", "creds", "cookie", "cookies", "session",
    "apikey", "signature", "sig", "hmac", "otp", "dsn", "private",
}
#: A word ending like this is a secret word too (``pgpassword``, ``accesstoken``).
SECRET_WORD_ENDINGS: tuple[str, ...] = (
    "password", "passwd", "passphrase", "secret", "token", "apikey", "credential",
    "credentials")
#: Words that make ``key``/``keys`` after them a secret (``api_key``, ``signingKey``).
KEY_QUALIFIERS: set[str] = {
    "api", "private", "priv", "secret", "access", "signing", "sign", "encryption", "enc",
    "master", "client", "ssh", "gpg", "pgp", "deploy", "session", "auth", "account",
    "shared", "hmac", "aes", "rsa", "root", "license", "app", "consumer", "subscription",
    "storage", "primary", "secondary", "webhook", "service", "crypto", "decryption",
}
#: A key ending with one of these words describes a secret, it does not hold one.
SAFE_LAST_WORDS: set[str] = {
    "count", "counts", "num", "len", "length", "size", "limit", "max", "min", "total",
    "ttl", "timeout", "type", "kind", "expiry", "expires", "expiration", "age", "rate",
    "name", "names", "url", "uri", "endpoint", "file", "path", "dir", "at", "version",
    "format", "policy", "enabled", "required", "provider", "method", "scheme",
}
#: A key starting with one of these words is a number or a setting, not a secret.
SAFE_FIRST_WORDS: set[str] = {"max", "min", "num", "total", "count", "is", "has"}

#: Multi-word parts added by :func:`add_secret_key_parts` (``vault_pin`` -> (vault, pin)).
_sequences: set[tuple[str, ...]] = set()
#: True once an added part holds a number (``2fa``): key decisions may tell digits apart.
digit_parts = False
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_cache: dict[str, bool] = {}
_CACHE_MAX = 8_192
_lock = threading.Lock()
#: Caches of decisions made with the rules (here and in the other modules): cleared
#: whenever a rule or a registered secret changes ...
CACHES: list[dict[str, object]] = [_cache]  # type: ignore[list-item]
#: ... and this is bumped first: a decision made while the rules changed is not cached
#: (read it before reading the rules, compare it before caching).
generation = 0


_needles: tuple[str, ...] | None = None


def secret_word_needles() -> tuple[str, ...]:
    """Lowercase substrings one of which every secret key holds (a necessary condition
    of :func:`is_secret_key`, for a quick test of whole strings): the secret words, their
    endings, ``key``, the first word of each added sequence, and ``identified`` (SQL's
    ``IDENTIFIED BY``); none holding another."""
    global _needles
    needles = _needles
    if needles is None:
        words = {*SECRET_KEY_PARTS, *SECRET_WORD_ENDINGS, "key", "identified",
                 *(seq[0] for seq in _sequences)}
        needles = _needles = tuple(sorted(
            w for w in words if not any(o != w and o in w for o in words)))
    return needles


def key_words(key: str) -> list[str]:
    """The lowercased words of a key name (``"X-Auth-Token"`` -> ``["x", "auth", "token"]``)."""
    return [w.lower() for w in _WORD.findall(key)]


def rules_changed() -> None:
    """Forget every cached decision (call it after a rule or a registered secret changed)."""
    global generation, _needles
    with _lock:
        generation += 1
        _needles = None
        for cache in CACHES:
            cache.clear()


def add_secret_key_parts(*parts: str) -> None:
    """Treat keys holding any of ``parts`` as secrets from now on. A part is matched
    word for word: ``pin`` matches ``vault_pin`` and ``pinCode`` but not ``spinner``;
    ``vault_pin`` matches ``vault_pin_v2`` but not ``vault`` alone."""
    global digit_parts
    for part in parts:
        words = tuple(key_words(str(part)))
        if any(word.isdigit() for word in words):
            digit_parts = True
        if len(words) == 1:
            SECRET_KEY_PARTS.add(words[0])
        elif words:
            _sequences.add(words)
    rules_changed()


def _has_sequence(words: list[str]) -> bool:
    for seq in _sequences:
        n = len(seq)
        for i in range(len(words) - n + 1):
            if tuple(words[i:i + n]) == seq:
                return True
    return False


def _decide(key: str) -> bool:
    words = key_words(key)
    if not words:
        return False
    if words[-1] in SAFE_LAST_WORDS or (len(words) > 1 and words[0] in SAFE_FIRST_WORDS):
        return _has_sequence(words) if _sequences else False
    if words == ["key"]:
        return True
    previous = ""
    for word in words:
        if word in SECRET_KEY_PARTS:
            return True
        if word in ("key", "keys"):
            if previous in KEY_QUALIFIERS:
                return True
        elif word.endswith(SECRET_WORD_ENDINGS):
            return True
        elif word.endswith("key") and word[:-3] in KEY_QUALIFIERS:
            return True
        elif word.endswith("keys") and word[:-4] in KEY_QUALIFIERS:
            return True
        previous = word
    return _has_sequence(words) if _sequences else False


def is_secret_key(key: object) -> bool:
    """True if a key name names a secret (``db_password``, ``GITHUB_TOKEN``,
    ``x-auth-token``, ``authHeader``); see the module docstring for the rules."""
    text = key if type(key) is str else str(key)
    known = _cache.get(text)
    if known is not None:
        return known
    if len(text) > 512:  # a huge key: its start and its end decide (and it is not cached)
        return _decide(text[:256]) or _decide(text[-256:])
    seen = generation
    secret = _decide(text)
    if seen == generation:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[text] = secret
    return secret


add_secret_key_parts(*(p for p in (env_str(OTEL_RUNS_SECRET_KEYS) or "").split(",") if p.strip()))
