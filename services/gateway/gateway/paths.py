"""Path patterns of the gateway's config rules: exact, or a prefix written with a trailing `*`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["PathPattern", "PerPath"]

T = TypeVar("T")


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


class PerPath(Generic[T]):
    """`lookup(method, path)` remembered per method and path: requests ask for the same few
    again and again. Bounded to `maxsize` pairs; a very long path (rare, and big to keep) is
    looked up anew each time."""

    LONGEST = 512

    def __init__(self, lookup: Callable[[str, str], T], maxsize: int = 4096) -> None:
        self.lookup = lookup
        self._cached = functools.lru_cache(maxsize=maxsize)(lookup)

    def __call__(self, method: str, path: str) -> T:
        if len(path) > self.LONGEST:
            return self.lookup(method, path)
        return self._cached(method, path)

    def cache_clear(self) -> None:
        self._cached.cache_clear()
