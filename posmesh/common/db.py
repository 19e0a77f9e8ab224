"""The SQLAlchemy 2 async engine (asyncpg) of a service: its pool, timeouts and tracing."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext import asyncio as sa_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from posmesh.common.settings import Settings


def database_url(settings: Settings) -> str:
    """DATABASE_URL in SQLAlchemy's asyncpg form; libpq forms (postgres://, postgresql://) work."""
    url = settings.database_url
    if not url:
        raise RuntimeError("DATABASE_URL is not set (`posmesh run` sets it for the services it starts)")
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    raise RuntimeError("DATABASE_URL must be a postgresql:// URL")


def libpq_url(settings: Settings) -> str:
    """DATABASE_URL in libpq form, for a raw asyncpg connection (LISTEN)."""
    return "postgresql://" + database_url(settings).removeprefix("postgresql+asyncpg://")


def create_engine(settings: Settings, schema: str) -> AsyncEngine:
    """An engine whose connections see `schema` first on the search path (then public)."""
    # Looked up on the module at call time: telemetry.setup() wraps it so every statement is a
    # span, a child of the current gRPC span.
    engine = sa_asyncio.create_async_engine(
        database_url(settings),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=settings.db_pool_pre_ping,
        pool_recycle=settings.db_pool_recycle,
        pool_timeout=settings.db_pool_timeout,
        connect_args={
            "server_settings": {
                "application_name": f"posmesh-{schema}",
                "search_path": f"{schema},public",
                "statement_timeout": str(settings.db_statement_timeout_ms),
                # A transaction left open by a crashed request must not hold locks for ever.
                "idle_in_transaction_session_timeout": str(settings.db_statement_timeout_ms * 4),
            },
            # Connecting must fail fast when PostgreSQL is down so requests get UNAVAILABLE.
            "timeout": 5,
            # Statement cache per connection; fine behind a direct connection (no pgbouncer).
            "statement_cache_size": 256,
        },
    )
    return engine


def pool_stats(engine: AsyncEngine) -> dict[str, int]:
    pool = engine.sync_engine.pool
    if not isinstance(pool, QueuePool):
        return {"size": 0, "checked_out": 0, "overflow": 0, "checked_in": 0, "max_overflow": 0}
    return {
        "size": pool.size(),
        "checked_out": pool.checkedout(),
        # QueuePool.overflow() starts at -pool_size; only connections beyond the pool count.
        "overflow": max(0, pool.overflow()),
        "checked_in": pool.checkedin(),
        "max_overflow": pool._max_overflow,
    }


class EngineProbe:
    """Health's view of a SQLAlchemy engine: a round trip and the pool statistics."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def ping(self) -> None:
        async with self._engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    def pool_stats(self) -> dict[str, int]:
        return pool_stats(self._engine)

    def pool_waiting(self) -> int:
        """Requests waiting for a connection now (the asyncio queue inside the pool, created
        on first use)."""
        from posmesh.common.metrics import queue_waiters

        queue = getattr(self._engine.sync_engine.pool, "_pool", None)
        return queue_waiters(vars(queue).get("_queue")) if queue is not None else 0
