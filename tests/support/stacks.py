"""Stacks of a test's own, for the few tests that need what the session stack cannot give: other
settings (admission control at its production limits, which the session stack raises so that the
rest of the suite's bursts are not refused), or PostgreSQL and Redis it may stop and restart
(the session stack uses the machine's when DATABASE_URL / REDIS_URL are set)."""

from __future__ import annotations

import os
import ssl
from contextlib import asynccontextmanager
from typing import AsyncIterator

import httpx

from stack.supervisor import Stack
from tests.harness import create_database, data_dir, drop_database, stack_settings
from tests.support.mail import Mailbox, mailbox_in_use


@asynccontextmanager
async def own_stack(*, embedded_servers: bool = False, replicas: int = 1,
                    **overrides: object) -> AsyncIterator[Stack]:
    """A whole stack (one realtime process, `replicas` processes of auth, staff and orders:
    one unless the test is about replicas) with `overrides` (Settings field names) applied;
    while it runs, the mail helpers read its mail. `embedded_servers`: PostgreSQL and Redis of
    its own even when DATABASE_URL / REDIS_URL point at the machine's."""
    external_db = None if embedded_servers else os.environ.get("DATABASE_URL")
    database_url = await create_database(external_db) if external_db else None
    with data_dir() as path:
        settings, extra_realtime = stack_settings(path, database_url=database_url,
                                                  realtime_replicas=1, replicas=replicas)
        if embedded_servers:
            overrides = {"redis_url": None, **overrides}
        assert set(overrides) <= set(type(settings).model_fields), overrides
        system = Stack(settings.model_copy(update=overrides), extra_realtime_addrs=extra_realtime)
        try:
            await system.start()
            # The helpers read verification links and invitations from this stack's mail.
            with mailbox_in_use(Mailbox(system.mail_dir)):
                yield system
        finally:
            await system.stop()
            if external_db and database_url:
                await drop_database(external_db, database_url)


def edge_client(system: Stack) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=str(system.ca_file))
    return httpx.AsyncClient(base_url=system.edge_url, verify=context, http2=True, timeout=15)


@asynccontextmanager
async def with_embedded_servers(session_stack: Stack) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    """A stack whose PostgreSQL and Redis a test may stop and restart, and a client of its edge:
    the session stack when it embeds both, else one of the test's own (so such tests run, not
    skip, when the suite uses the machine's servers)."""
    if session_stack.postgres is not None and session_stack.redis is not None:
        async with edge_client(session_stack) as client:
            yield session_stack, client
        return
    async with own_stack(embedded_servers=True) as system, edge_client(system) as client:
        yield system, client
