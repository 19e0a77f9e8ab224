"""Sessions in Redis: the session cache, and revocations every service hears about at once.

    auth:session:{sid}   the session's user and restaurant view (JSON), SESSION_CACHE_TTL_SECONDS;
                         PostgreSQL stays the truth, this only saves introspection a query.
    auth:revoked:{sid}   present once the session is revoked, for as long as an access token
                         of it can still be valid (for other readers: services check their
                         local revocation set instead).
    auth:revocations     channel: {"sid", "user_id", "restaurant_id", "reason"} per revocation,
                         into every process's local revocation set (and realtime closes that
                         session's sockets at once).

A revocation is committed to PostgreSQL first, then enters this process's own revocation set.
When Redis cannot take the marker it is retried in the background until it can, and on start the
markers of recently revoked sessions are written again (Redis may have restarted empty); the
other processes load revocations from ListRevokedSessions meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

from posmesh.common.revocations import RevocationSet, SessionRevocation, revocation_lifetime_seconds
from posmesh.common.settings import Settings
from posmesh.common.tokens import REVOCATIONS_CHANNEL, revoked_key
from services.auth.store import AuthStore, RevokedSession

log = logging.getLogger(__name__)

_TIMEOUT_SECONDS = 1.0
_RETRY_INTERVAL_SECONDS = 1.0
_MAX_PENDING = 100_000


def session_key(session_id: str) -> str:
    return f"auth:session:{session_id}"


@dataclass(frozen=True, slots=True)
class CachedSession:
    user_id: str
    email: str
    full_name: str
    restaurant_id: str
    restaurant_name: str
    role: str


class SessionCache:
    """Best effort in both directions: a Redis failure means a database read, never an error."""

    def __init__(self, redis, settings: Settings) -> None:
        self._redis = redis
        self._ttl = settings.session_cache_ttl_seconds

    async def get(self, session_id: str) -> CachedSession | None:
        try:
            raw = await asyncio.wait_for(self._redis.get(session_key(session_id)), _TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("session cache unavailable: %r", exc)
            return None
        if raw is None:
            return None
        try:
            return CachedSession(**json.loads(raw))
        except (TypeError, ValueError):
            return None

    async def put(self, session_id: str, session: CachedSession) -> None:
        try:
            await asyncio.wait_for(
                self._redis.set(session_key(session_id), json.dumps(asdict(session)), ex=self._ttl),
                _TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("session cache unavailable: %r", exc)


class RevocationPublisher:
    def __init__(self, redis, settings: Settings, local: RevocationSet) -> None:
        self._redis = redis
        # This process's own revocation set learns each revocation at once, Redis or not.
        self._local = local
        # Every access token of the session has expired (leeway included) by then; the extra
        # minute covers clock skew between the services.
        self.marker_ttl_seconds = revocation_lifetime_seconds(settings)
        self._pending: dict[str, tuple[RevokedSession, str]] = {}
        self._task: asyncio.Task | None = None

    async def publish(self, sessions: list[RevokedSession], reason: str) -> None:
        """Markers, cache eviction and the channel message for each session; never raises."""
        for session in sessions:
            self._local.add(SessionRevocation(session.session_id, session.user_id,
                                              session.restaurant_id, reason))
        await self._publish_items([(session, reason) for session in sessions])

    async def _publish_items(self, items: list[tuple[RevokedSession, str]]) -> None:
        if not items:
            return
        try:
            await asyncio.wait_for(self._send(items), _TIMEOUT_SECONDS * 2)
        except Exception as exc:
            log.error("could not publish %d revocation(s) to Redis; retrying in the background: %r",
                      len(items), exc)
            for session, reason in items:
                if len(self._pending) < _MAX_PENDING:
                    self._pending[session.session_id] = (session, reason)

    async def _send(self, items: list[tuple[RevokedSession, str]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for session, reason in items:
            pipe.set(revoked_key(session.session_id), reason, ex=self.marker_ttl_seconds)
            pipe.delete(session_key(session.session_id))
            pipe.publish(REVOCATIONS_CHANNEL, json.dumps({
                "sid": session.session_id, "user_id": session.user_id,
                "restaurant_id": session.restaurant_id, "reason": reason}))
        await pipe.execute()

    async def resync(self, store: AuthStore) -> int:
        """Writes the markers of sessions revoked within the marker lifetime (after a restart)."""
        since = datetime.now(timezone.utc) - timedelta(seconds=self.marker_ttl_seconds)
        items = await store.recently_revoked(since)
        await self._publish_items(items)
        return len(items)

    async def _retry_forever(self) -> None:
        while True:
            await asyncio.sleep(_RETRY_INTERVAL_SECONDS)
            if not self._pending:
                continue
            items = list(self._pending.values())
            try:
                await asyncio.wait_for(self._send(items), _TIMEOUT_SECONDS * 2)
            except Exception:
                continue
            for session, _ in items:
                self._pending.pop(session.session_id, None)
            log.info("published %d delayed revocation(s)", len(items))

    def start(self) -> None:
        self._task = asyncio.create_task(self._retry_forever(), name="revocation-retry")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pending:
            log.error("%d revocation(s) never reached Redis; they are re-sent on the next start",
                      len(self._pending))

    @property
    def pending(self) -> int:
        return len(self._pending)
