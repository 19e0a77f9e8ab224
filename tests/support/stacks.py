"""A stack of its own, for the few tests that need settings the session stack cannot have (for
example admission control at its production limits, which the session stack raises so that the
rest of the suite's bursts are not refused)."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import AsyncIterator

from stack.supervisor import Stack
from tests.harness import create_database, data_dir, drop_database, stack_settings
from tests.support.mail import Mailbox, mailbox_in_use


@asynccontextmanager
async def own_stack(**overrides: object) -> AsyncIterator[Stack]:
    """A whole stack (one realtime process) with `overrides` (Settings field names) applied;
    while it runs, the mail helpers read its mail."""
    external_db = os.environ.get("DATABASE_URL")
    database_url = await create_database(external_db) if external_db else None
    with data_dir() as path:
        settings, extra_realtime = stack_settings(path, database_url=database_url,
                                                  realtime_replicas=1)
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
