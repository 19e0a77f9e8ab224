"""Follows the user-event streams (posmesh.common.user_events) and hands each event to the gateway,
which sends it to the user's user-scoped (onboarding) sockets on this process.

Every realtime process reads every user event (they are rare: memberships, invitations,
restaurants) from where it started; after losing Redis it reads on from the last entry it saw,
so a short outage delays events instead of losing them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from posmesh.common.user_events import STREAMS, UserEvent, parse_entry

log = logging.getLogger(__name__)

BLOCK_MS = 5_000
BATCH = 200
BACKOFF_MIN, BACKOFF_MAX = 0.2, 2.0


class UserEventFollower:
    def __init__(self, redis_factory: Callable[[], object],
                 deliver: Callable[[str, UserEvent], None]) -> None:
        self._redis_factory = redis_factory
        self._deliver = deliver
        self._positions: dict[str, str] = dict.fromkeys(STREAMS, "$")
        self._task: asyncio.Task | None = None
        self._backoff = BACKOFF_MIN
        self.following = asyncio.Event()

    async def _follow_once(self) -> None:
        redis = self._redis_factory()
        try:
            if any(position == "$" for position in self._positions.values()):
                # Start at each stream's current end: events before this process started are
                # reflected by the API already; "$" is pinned now so nothing slips past.
                for stream, position in self._positions.items():
                    if position == "$":
                        info = await redis.xrevrange(stream, count=1)
                        self._positions[stream] = _text(info[0][0]) if info else "0-0"
            self.following.set()
            self._backoff = BACKOFF_MIN
            while True:
                replies = await redis.xread(self._positions, count=BATCH, block=BLOCK_MS)
                for stream, entries in replies or ():
                    name = _text(stream)
                    for entry_id, fields in entries:
                        self._positions[name] = _text(entry_id)
                        event = parse_entry(fields)
                        if event is None:
                            log.warning("ignoring a malformed user event on %s", name)
                            continue
                        self._deliver(f"u-{_text(entry_id)}", event)
        finally:
            self.following.clear()
            try:
                await redis.aclose()
            except Exception:
                pass

    async def _run(self) -> None:
        while True:
            try:
                await self._follow_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("user-event stream lost; reading on", extra={"error": repr(exc)})
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="user-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
