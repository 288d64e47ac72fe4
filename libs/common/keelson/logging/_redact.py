"""Redaction of secrets in log messages and attributes."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["REDACTED", "redact_text", "redact_value"]

REDACTED = "[REDACTED]"

_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|authori[sz]ation|api[_-]?key|cookie|"
    r"card|cvc|cvv|pan|private[_-]?key|signature|otp|credential",
    re.IGNORECASE,
)
_PATTERNS = (
    # Authorization header values and bearer tokens
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    # JWTs anywhere in text
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), REDACTED),
    # key=value, "key": "value" and Python's {'key': 'value'} whose key names a secret
    (
        re.compile(
            r"(?i)([\"']?(?:password|passwd|secret|token|api[_-]?key|authorization|cvc|cvv)"
            r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',&]+)"
        ),
        r"\1" + REDACTED,
    ),
    # payment card numbers: 13-19 digits, optionally grouped
    (re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), "[CARD]"),
    # Stripe-style secret keys
    (re.compile(r"\b(sk|rk|whsec)_(live|test)?_?[A-Za-z0-9]{8,}"), REDACTED),
)


def redact_text(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_value(key: str, value: Any) -> Any:
    """Redact a structured attribute: by key name first, then by content."""
    if _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {str(k): redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(key, v) for v in value]
    return value
