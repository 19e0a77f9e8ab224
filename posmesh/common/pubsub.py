"""One Redis pub/sub subscription per process for every channel its parts listen to (the
`auth:revocations` channel in every service; the realtime service's own control channel),
resubscribed after any loss.

Pub/sub is fire-and-forget: a message published while the subscription is down is lost. So parts
register `when_subscribed` callbacks, run after each (re)subscription, to make up for what they
may have missed, and `when_lost` callbacks to stop trusting the channel at once. Handlers and
callbacks run on the listener's task: they must not block (schedule work instead).

    listener = ChannelListener(lambda: create_redis(settings, socket_timeout=None))
    listener.handle("auth:revocations", on_message)
    listener.start()
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

log = logging.getLogger(__name__)

Handler = Callable[[bytes | str], None]
Callback = Callable[[], None]

# get_message waits this long at most before looping (a quiet channel is normal).
_READ_SECONDS = 30.0


class ChannelListener:
    def __init__(self, redis_factory: Callable[[], object]) -> None:
        """`redis_factory` makes a client whose socket_timeout is None: reads block."""
        self._redis_factory = redis_factory
        self._handlers: dict[str, Handler] = {}
        self._on_subscribed: list[Callback] = []
        self._on_lost: list[Callback] = []
        self._task: asyncio.Task | None = None
        self._ever_subscribed = False
        self.subscribed = asyncio.Event()

    def handle(self, channel: str, handler: Handler) -> None:
        """Before `start`: `handler(payload)` for each message on `channel`."""
        if self._task is not None:
            raise RuntimeError("register channels before the listener starts")
        self._handlers[channel] = handler

    def when_subscribed(self, callback: Callback) -> None:
        self._on_subscribed.append(callback)

    def when_lost(self, callback: Callback) -> None:
        self._on_lost.append(callback)

    @property
    def channels(self) -> list[str]:
        return list(self._handlers)

    async def _listen_once(self) -> None:
        redis = self._redis_factory()
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*self._handlers)
            self.subscribed.set()
            self._ever_subscribed = True
            log.info("listening on %s", ", ".join(self._handlers))
            self._run_callbacks(self._on_subscribed)
            while True:
                message = await pubsub.get_message(timeout=_READ_SECONDS)
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
            if self.subscribed.is_set():
                self.subscribed.clear()
                self._run_callbacks(self._on_lost)
            try:
                await pubsub.aclose()
                await redis.aclose()
            except Exception:
                pass

    @staticmethod
    def _run_callbacks(callbacks: list[Callback]) -> None:
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a pub/sub subscription callback failed")

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
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="pubsub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
