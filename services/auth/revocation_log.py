"""Sessions revoked within the revocation lifetime, read from PostgreSQL (`sessions.revoked_at`):
what AuthAdminService.ListRevokedSessions answers (every other service loads its local revocation
set from it) and the auth service's own revocation source (it reads its database directly).

Pages are ordered by (revoked_at, id); the page token is the last row's pair, so a listing never
skips or repeats a row however many revocations are committed meanwhile.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from posmesh.common.errors import InvalidArgument
from posmesh.common.revocation_follower import RevocationBatch
from posmesh.common.revocations import SessionRevocation, revocation_lifetime_seconds
from posmesh.common.settings import Settings

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 5000


@dataclass(frozen=True, slots=True)
class RevokedPage:
    revocations: list[SessionRevocation]
    next_page_token: str
    read_time: datetime


def _token(revoked_at: datetime, session_id: str) -> str:
    raw = f"{revoked_at.isoformat()}|{session_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _position(token: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        at, session_id = raw.split("|")
        revoked_at = datetime.fromisoformat(at)
        uuid.UUID(session_id)
    except ValueError:
        raise InvalidArgument("INVALID_ARGUMENT", "page_token is not a token this listing gave",
                              field="page_token") from None
    if revoked_at.tzinfo is None:
        raise InvalidArgument("INVALID_ARGUMENT", "page_token is not a token this listing gave",
                              field="page_token")
    return revoked_at, session_id


class RevocationLog:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self._engine = engine
        self._lifetime = timedelta(seconds=revocation_lifetime_seconds(settings))

    async def page(self, *, since: datetime | None, page_size: int, page_token: str) -> RevokedPage:
        """One page of the sessions revoked at or after `since`, clamped to the lifetime."""
        if page_size < 0:
            raise InvalidArgument("INVALID_ARGUMENT", "page_size must not be negative",
                                  field="page_size")
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _position(page_token) if page_token else None
        read_time = datetime.now(timezone.utc)
        earliest = read_time - self._lifetime
        since = earliest if since is None or since < earliest else since
        params: dict = {"since": since, "limit": limit + 1}
        where = "revoked_at >= :since"
        if after is not None:
            where += " AND (revoked_at, id) > (:after_at, CAST(:after_id AS uuid))"
            params.update(after_at=after[0], after_id=after[1])
        async with self._engine.connect() as conn:
            rows = (await conn.execute(text(f"""
                SELECT id, user_id, restaurant_id, revoke_reason, revoked_at FROM sessions
                WHERE {where}
                ORDER BY revoked_at, id
                LIMIT :limit
            """), params)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        revocations = [
            SessionRevocation(str(row.id), str(row.user_id) if row.user_id is not None else "",
                              str(row.restaurant_id) if row.restaurant_id is not None else "",
                              row.revoke_reason or "REVOKED", row.revoked_at.timestamp())
            for row in rows]
        next_token = _token(rows[-1].revoked_at, str(rows[-1].id)) if more else ""
        return RevokedPage(revocations, next_token, read_time)

    async def revoked_since(self, since: datetime | None) -> RevocationBatch:
        """Every page (the auth service's own revocation source)."""
        revocations: list[SessionRevocation] = []
        page = await self.page(since=since, page_size=MAX_PAGE_SIZE, page_token="")
        read_time = page.read_time
        revocations += page.revocations
        while page.next_page_token:
            page = await self.page(since=since, page_size=MAX_PAGE_SIZE,
                                   page_token=page.next_page_token)
            revocations += page.revocations
        return RevocationBatch(revocations, read_time)
