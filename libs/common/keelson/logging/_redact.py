"""Redaction of secrets in log messages and attributes."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

__all__ = ["REDACTED", "is_quiet_head", "redact_text", "redact_value"]

REDACTED = "[REDACTED]"

_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|authori[sz]ation|api[_-]?key|cookie|"
    r"card|cvc|cvv|pan|private[_-]?key|signature|otp|credential",
    re.IGNORECASE,
)
# Authorization header values and bearer tokens
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
# JWTs anywhere in text
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
# key=value, "key": "value" and Python's {'key': 'value'} whose key names a secret
_KEY_VALUE = re.compile(
    r"(?i)([\"']?(?:password|passwd|secret|token|api[_-]?key|authorization|cvc|cvv)"
    r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',&]+)"
)
# payment card numbers: 13-19 digits, optionally grouped
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
# A card match is a run of 13 or more characters, all ASCII digits, spaces or dashes: a
# cheap search that rules out UUIDs and hex ids, whose digits are many but never in a run.
_CARD_RUN = re.compile(r"[0-9 -]{13}")
# Stripe-style secret keys
_STRIPE_KEY = re.compile(r"\b(sk|rk|whsec)_(live|test)?_?[A-Za-z0-9]{8,}")
# Database errors quote the values they refused: PostgreSQL's DETAIL line ("Key (email)=(...)
# already exists"), asyncpg's "invalid input for query argument $1: ...", and SQLAlchemy's
# "[parameters: ...]" where an engine does not hide them. Each is cut to the end of the line.
_DB_VALUES = re.compile(r"(DETAIL:|query argument \$\d+:|\[parameters:)[^\n]*")
# argon2 password hashes in PHC form
_ARGON2 = re.compile(r"\$argon2(?:id|i|d)\$[^\s'\",)\]]*")

_KEEP_SCHEME = r"\1 " + REDACTED
_KEEP_KEY = r"\1" + REDACTED
_CARD_MARK = "[CARD]"
_PATTERNS = (
    (_BEARER, _KEEP_SCHEME),
    (_JWT, REDACTED),
    (_KEY_VALUE, _KEEP_KEY),
    (_CARD, _CARD_MARK),
    (_STRIPE_KEY, REDACTED),
    (_DB_VALUES, r"\1 " + REDACTED),
    (_ARGON2, REDACTED),
)


def redact_text(text: str) -> str:
    """Apply every pattern in turn; a pattern is skipped only when it cannot match.

    Each test below is a condition that the pattern's own match requires, checked on the
    text as it stands when that pattern's turn comes, so skipping changes nothing. They
    rely on ASCII (for non-ASCII text `\\d` and IGNORECASE mean more than `isdigit` and
    `lower` of ASCII), so other text takes every pattern.
    """
    if not text.isascii():
        return _redact_all(text)
    original, lower = text, text.lower()
    if "bearer" in lower or "basic" in lower:
        text = _BEARER.sub(_KEEP_SCHEME, text)
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if ("=" in text or ":" in text) and _names_a_secret(
        lower if text is original else text.lower()
    ):
        text = _KEY_VALUE.sub(_KEEP_KEY, text)
    if _CARD_RUN.search(text):
        text = _CARD.sub(_CARD_MARK, text)
    if "_" in text and ("sk_" in text or "rk_" in text or "whsec_" in text):
        text = _STRIPE_KEY.sub(REDACTED, text)
    if ":" in text and ("DETAIL:" in text or "query argument $" in text or "[parameters:" in text):
        text = _DB_VALUES.sub(r"\1 " + REDACTED, text)
    if "$argon2" in text:
        text = _ARGON2.sub(REDACTED, text)
    return text


@lru_cache(maxsize=1024)
def is_quiet_head(head: str) -> bool:
    """Whether `redact_text` leaves `head + " " + tail` alone, for any tail of our own.

    The tail must be shorter than 13 characters and hold none of ':', '=', '_', 'eyJ',
    'bearer', 'basic' (a status and a duration do not). Then no pattern matches across
    the space: the key-value one needs ':' or '=' (the head has none either), the bearer
    one a scheme word (neither has one), the JWT and Stripe ones stay within one word,
    and a card number needs 13 digits, spaces or dashes in a row, which the head's last
    character breaks; the database-value ones need ':' and the argon2 one '$argon2' in one
    word. Revisit this with every pattern added to `_PATTERNS`.
    """
    return (
        head.isascii()
        and head[-1:] not in ("", *"0123456789 -")
        and "=" not in head
        and ":" not in head
        and "bearer" not in head.lower()
        and "basic" not in head.lower()
        and redact_text(head) == head
    )


def _names_a_secret(lower: str) -> bool:
    """Whether ASCII-lowered text holds a key name `_KEY_VALUE` looks for."""
    return (
        "passw" in lower
        or "secret" in lower
        or "token" in lower
        or ("api" in lower and ("apikey" in lower or "api_key" in lower or "api-key" in lower))
        or "authorization" in lower
        or "cvc" in lower
        or "cvv" in lower
    )


def _redact_all(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def redact_value(key: str, value: Any) -> Any:
    """Redact a structured attribute: by key name first, then by content."""
    if _is_secret_key(key):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {str(k): redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(key, v) for v in value]
    return value
