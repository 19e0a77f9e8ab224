"""Events about one user (a membership granted or revoked, an invitation received, a restaurant
created), for the user's own screens: the realtime service sends them to user-scoped sockets
(`/ws/{type}/onboarding`), so an app still onboarding can switch restaurant the moment it may.

Each publishing service appends to a Redis stream of its own (`auth:user-events`,
`staff:user-events`; capped), after the change is committed. Streams rather than pub/sub: a
realtime process that lost Redis for a moment reads on from the last entry it saw. A publish that
fails is retried in the background for a while, never blocking the request; the change itself is
already committed and is always visible through the API (`GET /api/v1/auth/me`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

AUTH_STREAM = "auth:user-events"
STAFF_STREAM = "staff:user-events"
STREAMS = (AUTH_STREAM, STAFF_STREAM)
STREAM_MAXLEN = 10_000

MEMBERSHIP_GRANTED = "membership.granted"
MEMBERSHIP_REVOKED = "membership.revoked"
INVITATION_RECEIVED = "invitation.received"
RESTAURANT_CREATED = "restaurant.created"

_TIMEOUT_SECONDS = 1.0
_RETRY_SECONDS = 1.0
_MAX_PENDING = 10_000


@dataclass(frozen=True, slots=True)
class UserEvent:
    user_id: str
    type: str
    data: dict[str, Any]

    def fields(self) -> dict[str, str]:
        return {"user_id": self.user_id, "type": self.type,
                "data": json.dumps(self.data, separators=(",", ":"))}


def parse_entry(fields: dict) -> UserEvent | None:
    """A stream entry as a UserEvent; None when it is malformed."""
    def text(name: str) -> str:
        value = fields.get(name, fields.get(name.encode(), b""))
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

    try:
        data = json.loads(text("data") or "{}")
    except ValueError:
        return None
    user_id, kind = text("user_id"), text("type")
    if not user_id or not kind or not isinstance(data, dict):
        return None
    return UserEvent(user_id, kind, data)


class UserEventPublisher:
    """Appends to one service's stream; a failed append is kept and retried in the background."""

    def __init__(self, redis, stream: str) -> None:
        self._redis = redis
        self._stream = stream
        self._pending: list[UserEvent] = []
        self._task: asyncio.Task | None = None

    async def publish(self, *events: UserEvent) -> None:
        """Never raises: the change is committed already."""
        if not events:
            return
        try:
            await asyncio.wait_for(self._append(list(events)), _TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("could not publish %d user event(s); retrying in the background: %r",
                        len(events), exc)
            room = _MAX_PENDING - len(self._pending)
            self._pending.extend(events[:max(0, room)])
            if len(events) > room:
                log.error("dropped %d user event(s): the retry queue is full", len(events) - room)

    async def _append(self, events: list[UserEvent]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(self._stream, event.fields(), maxlen=STREAM_MAXLEN, approximate=True)
            await pipe.execute()

    async def _retry_forever(self) -> None:
        while True:
            await asyncio.sleep(_RETRY_SECONDS)
            if not self._pending:
                continue
            batch = self._pending[:500]
            try:
                await asyncio.wait_for(self._append(batch), _TIMEOUT_SECONDS * 2)
            except Exception:
                continue
            del self._pending[:len(batch)]
            log.info("published %d delayed user event(s)", len(batch))

    def start(self) -> None:
        self._task = asyncio.create_task(self._retry_forever(), name=f"{self._stream}-retry")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pending:
            log.error("%d user event(s) never reached Redis", len(self._pending))
