"""One Redis pub/sub subscription per process for every channel the realtime service listens to
(`auth:revocations`, and its own control channel `realtime:control:{process_id}`), resubscribed
after any loss, with a callback after each (re)subscription so missed messages can be made up
for (pub/sub is fire-and-forget)."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

Handler = Callable[[bytes | str], None]


class ChannelListener:
    def __init__(self, redis_factory: Callable[[], object], handlers: dict[str, Handler],
                 on_resubscribed: Callable[[], Awaitable[None]]) -> None:
        self._redis_factory = redis_factory
        self._handlers = handlers
        self._on_resubscribed = on_resubscribed
        self._task: asyncio.Task | None = None
        self._ever_subscribed = False
        self.subscribed = asyncio.Event()

    async def _listen_once(self) -> None:
        redis = self._redis_factory()
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*self._handlers)
            self.subscribed.set()
            self._ever_subscribed = True
            log.info("listening on %s", ", ".join(self._handlers))
            await self._on_resubscribed()
            while True:
                message = await pubsub.get_message(timeout=30.0)
                if message is None or message.get("type") != "message":
                    continue
                channel = message["channel"]
                channel = channel.decode() if isinstance(channel, bytes) else channel
                handler = self._handlers.get(channel)
                if handler is None:
                    continue
                try:
                    handler(message["data"])
                except Exception:
                    log.exception("handling a message on %s failed", channel)
        finally:
            self.subscribed.clear()
            try:
                await pubsub.aclose()
                await redis.aclose()
            except Exception:
                pass

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            self._ever_subscribed = False
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("subscription lost; resubscribing", extra={"error": repr(exc)})
            # Quick retries while Redis is away; start over once a subscription has worked.
            backoff = 0.2 if self._ever_subscribed else min(backoff * 2, 2.0)
            await asyncio.sleep(backoff)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pubsub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
