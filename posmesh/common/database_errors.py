"""What a database failure means to a caller: the one mapping from asyncpg and SQLAlchemy errors
to API errors, for the shared interceptor and the orders store (which uses asyncpg directly)."""

from __future__ import annotations

import asyncpg.exceptions
import sqlalchemy.exc

from posmesh.common.errors import ApiError, Unavailable

# A lost connection, a server shutting down or starting up (class 57, also a backend ended by an
# immediate stop), out of resources (53), a system error (58), or a connection broken mid-protocol.
_LOST = (asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
         asyncpg.exceptions.InsufficientResourcesError, asyncpg.exceptions.PostgresSystemError,
         asyncpg.exceptions.InterfaceError, asyncpg.exceptions.InternalClientError)


def database_error(exc: BaseException) -> ApiError | None:
    """The retryable UNAVAILABLE for a database failure, or None when `exc` is not one."""
    causes = _causes(exc)
    # Cancelled by statement_timeout (a subclass of class 57: test it first).
    if any(isinstance(cause, asyncpg.exceptions.QueryCanceledError) for cause in causes):
        return Unavailable("DATABASE_TIMEOUT", "the database took too long to answer; retry shortly",
                           retryable="true")
    if any(isinstance(cause, asyncpg.exceptions.TransactionRollbackError) for cause in causes):
        return Unavailable("DATABASE_CONFLICT", "the change collided with another one; retry",
                           retryable="true")
    if isinstance(exc, sqlalchemy.exc.TimeoutError):
        return Unavailable("DATABASE_BUSY", "the database connection pool is exhausted; retry shortly",
                           retryable="true")
    lost = isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or (
        isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated)
    # SQLAlchemy wraps asyncpg errors it does not know as disconnects in a plain DBAPIError.
    if lost or any(isinstance(cause, _LOST) for cause in causes):
        return Unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry shortly",
                           retryable="true")
    return None


def _causes(exc: BaseException, limit: int = 12) -> list[BaseException]:
    """The exception and what it wraps: SQLAlchemy's `orig`, and the chained cause."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending and len(seen) < limit:
        current = pending.pop()
        if current is None or any(current is known for known in seen):
            continue
        seen.append(current)
        pending += [getattr(current, "orig", None), current.__cause__]
    return seen
