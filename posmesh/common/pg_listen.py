"""A dedicated PostgreSQL connection that LISTENs on one channel and reconnects with backoff.

`on_notify()` is called for every notification and once after each (re)connect, because whatever
committed while nobody listened was never announced.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Callable

import asyncpg

from posmesh.common.db import libpq_url
from posmesh.common.settings import Settings

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 5.0


class PgListener:
    def __init__(self, settings: Settings, channel: str, on_notify: Callable[[], None], *,
                 application_name: str) -> None:
        self._settings = settings
        self._channel = channel
        self._on_notify = on_notify
        self._application_name = application_name
        self._task: asyncio.Task | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"listen-{self._channel}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            lost = asyncio.Event()
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(
                    libpq_url(self._settings), timeout=5,
                    server_settings={"application_name": self._application_name})
                connection.add_termination_listener(lambda _: lost.set())
                await connection.add_listener(self._channel, lambda *_: self._on_notify())
                self.connected.set()
                backoff = 0.2
                self._on_notify()
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), timeout=KEEPALIVE_SECONDS)
                    except asyncio.TimeoutError:
                        # A silent half-open TCP connection is only noticed by using it.
                        await connection.execute("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN %s lost; relying on polling until it is back", self._channel,
                            extra={"error": repr(exc)})
            finally:
                self.connected.clear()
                if connection is not None and not connection.is_closed():
                    connection.terminate()
            await asyncio.sleep(backoff * (1 + random.random() / 2))
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
