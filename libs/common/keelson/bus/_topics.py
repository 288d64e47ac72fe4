"""Topic names and wildcard patterns: `payments.*`, `*.audit`, `*`.

A `*` matches any run of characters, dots included, so `*` alone matches every topic
and `payments.*` matches `payments.refund_succeeded`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["TopicPattern", "validate_topic"]

_TOPIC = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_PATTERN = re.compile(r"^[A-Za-z0-9_.:*-]{1,200}$")


def validate_topic(topic: str) -> str:
    if not _TOPIC.match(topic):
        raise ValueError(f"invalid topic {topic!r}: letters, digits and _ . : - only")
    return topic


@dataclass(frozen=True)
class TopicPattern:
    """A compiled subscription pattern."""

    text: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _PATTERN.match(self.text):
            raise ValueError(f"invalid topic pattern {self.text!r}")
        regex = ".*".join(re.escape(part) for part in self.text.split("*"))
        object.__setattr__(self, "_regex", re.compile(f"^{regex}$"))

    @property
    def is_exact(self) -> bool:
        return "*" not in self.text

    @property
    def prefix(self) -> str:
        """Every matching topic starts with this (what a ZeroMQ SUB filter can use)."""
        return self.text.split("*", 1)[0]

    def matches(self, topic: str) -> bool:
        return self._regex.match(topic) is not None
