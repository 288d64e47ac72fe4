"""Path patterns of the gateway's config rules: exact, or a prefix written with a trailing `*`."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Memo", "PathPattern"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


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


class Memo(Generic[K, V]):
    """`compute(key)`, remembered: for lookups by path that every request repeats.

    Bounded: when full it starts over, so paths that carry ids (`/users/42`) churn it
    instead of growing it.
    """

    def __init__(self, compute: Callable[[K], V], size: int = 4096) -> None:
        self._compute = compute
        self._size = size
        self._answers: dict[K, V] = {}

    def __call__(self, key: K) -> V:
        try:
            return self._answers[key]
        except KeyError:
            pass
        answer = self._compute(key)
        if len(self._answers) >= self._size:
            self._answers.clear()
        self._answers[key] = answer
        return answer

    def clear(self) -> None:
        self._answers.clear()
