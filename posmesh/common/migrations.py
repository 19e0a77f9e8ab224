"""Alembic migrations per service: one schema each, its version table inside that schema.

A service runs `await run_migrations(settings, Path(__file__).parent, "auth")` on start; its
`migrations/env.py` is just:

    from alembic import context
    from posmesh.common.migrations import run_alembic_env
    run_alembic_env(context)

Concurrent starts (several processes of one service, or every service at once) are serialised by
a PostgreSQL advisory lock per schema, so `upgrade head` runs once and the others find it done.
With least-privilege roles (stack/db_roles.py) the owner role migrates before the services start
(`posmesh run` does it; `posmesh migrate` in a deployment); a service's own role then finds its
schema at head and changes nothing (it could not: it has no DDL rights).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from posmesh.common.db import database_url
from posmesh.common.settings import Settings, get_settings


async def run_migrations(settings: Settings, service_dir: Path, schema: str) -> None:
    """`alembic upgrade head` for `service_dir/migrations`, in a worker thread."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(service_dir / "migrations"))
    config.attributes["url"] = database_url(settings)
    config.attributes["schema"] = schema
    await asyncio.to_thread(command.upgrade, config, "head")


def run_alembic_env(context: Any, target_metadata: Any = None) -> None:
    """The body of every service's migrations/env.py."""
    config = context.config
    schema = config.attributes.get("schema") or config.get_main_option("schema")
    if not schema:
        raise RuntimeError("the migration schema is unknown; run through posmesh.common.migrations")
    url = config.attributes.get("url") or database_url(get_settings())
    options = dict(target_metadata=target_metadata, version_table_schema=schema,
                   include_schemas=False)
    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    # This runs in run_migrations' worker thread, which has no event loop of its own.
    asyncio.run(_run_online(context, url, schema, options))


async def _run_online(context: Any, url: str, schema: str, options: dict) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(
        url, poolclass=NullPool,
        # Unqualified names in migrations land in the service's own schema.
        connect_args={"server_settings": {"search_path": f"{schema},public"}},
    )
    try:
        async with engine.connect() as connection:
            lock = {"key": f"posmesh-migrations:{schema}"}
            await connection.execute(text("SELECT pg_advisory_lock(hashtext(:key))"), lock)
            try:
                exists = await connection.scalar(
                    text("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = :schema)"),
                    {"schema": schema})
                if not exists:
                    # A role without CREATE on the database (a service's own, stack/db_roles.py)
                    # never gets here: the bootstrap made the schema for the owner role.
                    await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
                await connection.commit()

                def upgrade(sync_connection) -> None:
                    context.configure(connection=sync_connection, **options)
                    with context.begin_transaction():
                        context.run_migrations()

                await connection.run_sync(upgrade)
                await connection.commit()
            finally:
                await connection.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"), lock)
                await connection.commit()
    finally:
        await engine.dispose()
