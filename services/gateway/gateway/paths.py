"""Path patterns of the gateway's config rules: exact, or a prefix written with a trailing `*`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["PathPattern"]


@dataclass(frozen=True)
class PathPattern:
    """`path` exact, or a prefix when `prefix`; no `methods` means all of them."""

    path: str
    prefix: bool
    methods: frozenset[str]

    @classmethod
    def parse(cls, path: str, methods: Iterable[str] = ()) -> PathPattern:
        return cls(path.rstrip("*"), path.endswith("*"), frozenset(m.upper() for m in methods))

    def matches(self, method: str, path: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        return path.startswith(self.path) if self.prefix else path == self.path
