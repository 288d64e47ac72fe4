"""Which exceptions mean the database is away (503, try again), not a bug (500)."""

from __future__ import annotations

import asyncpg
from sqlalchemy import exc as sa_exc

__all__ = ["DATABASE_RETRY_AFTER", "database_unavailable"]

DATABASE_RETRY_AFTER = 5
_OUTAGES: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; TimeoutError is one too
    sa_exc.TimeoutError,  # no pooled connection free within pool_timeout
    asyncpg.PostgresConnectionError,  # the connection broke or does not exist
    asyncpg.OperatorInterventionError,  # shutting down, starting up (57P0x)
    asyncpg.InsufficientResourcesError,  # too many connections, disk full (53xxx)
    asyncpg.InterfaceError,  # "connection is closed"
)


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc`, or what it was raised from, says the database cannot be reached now.

    SQLAlchemy wraps the driver's errors (`DBAPIError.orig`, chained as `__cause__`), so
    the chain is walked a few links deep.
    """
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, _OUTAGES):
            return True
        if isinstance(seen, sa_exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
