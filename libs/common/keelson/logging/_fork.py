"""Fork hooks that hold their object weakly, for handlers that come and go."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

__all__ = ["register_at_fork"]


def register_at_fork(
    *,
    before: Callable[[], object] | None = None,
    after_in_child: Callable[[], object] | None = None,
) -> None:
    """`os.register_at_fork` for bound methods; a hook whose object is gone does nothing.

    A hook cannot be unregistered and lives as long as the process: holding its object
    strongly would keep every handler ever made, closed or not.
    """
    if before is not None:
        os.register_at_fork(before=_weakly(before))
    if after_in_child is not None:
        os.register_at_fork(after_in_child=_weakly(after_in_child))


def _weakly(method: Callable[[], object]) -> Callable[[], None]:
    ref = weakref.WeakMethod(method)

    def call() -> None:
        alive = ref()
        if alive is not None:
            alive()

    return call
