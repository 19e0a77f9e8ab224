"""The auth service's SQL (schema `auth`), with SQLAlchemy Core on an asyncpg engine.

Every method is one transaction; the refresh rotation is a unit of work (`refresh_unit`) that
holds the refresh token's row lock while the domain decides, so concurrent refreshes of one
token are serialised by PostgreSQL and each sees the previous one's outcome.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import AsyncIterator, Sequence

from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    email: str
    full_name: str
    password_hash: str | None
    created_at: datetime
    email_verified_at: datetime | None = None

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None


@dataclass(frozen=True, slots=True)
class MembershipRecord:
    restaurant_id: str
    restaurant_name: str
    role: str


@dataclass(frozen=True, slots=True)
class NewSession:
    session_id: str
    user_id: str
    restaurant_id: str | None
    now: datetime
    expires_at: datetime
    absolute_expires_at: datetime
    client_ip: str
    refresh_token_id: str
    refresh_digest: bytes
    device_label: str = ""
    user_agent: str = ""
    kind: str = "user"  # "user", "device" (a device's own credential) or "staff" (PIN on a device)
    device_id: str | None = None
    idle_lock_seconds: int | None = None  # staff sessions: how far each refresh slides expiry


@dataclass(frozen=True, slots=True)
class RevokedSession:
    session_id: str
    user_id: str
    restaurant_id: str  # "" when the session had none


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A live session as the caller's session list shows it."""
    session_id: str
    device_label: str
    user_agent: str
    client_ip: str
    created_at: datetime
    last_used_at: datetime
    restaurant_id: str


@dataclass(frozen=True, slots=True)
class SessionView:
    """A session with the user and membership it stands for (what introspection shows)."""
    session_id: str
    user_id: str
    email: str
    full_name: str
    restaurant_id: str
    restaurant_name: str
    role: str  # the membership's current role; "" when no context or no longer a member
    is_member: bool
    expires_at: datetime
    absolute_expires_at: datetime
    revoked_at: datetime | None
    revoke_reason: str
    kind: str = "user"
    device_id: str = ""
    device_type: str = ""
    device_revoked: bool = False
    idle_lock_seconds: int = 0


@dataclass(frozen=True, slots=True)
class LockedRefreshToken:
    id: str
    rotated_at: datetime | None
    grace_until: datetime | None
    sealed_successor: bytes | None
    session: SessionView


@dataclass(frozen=True, slots=True)
class MembershipChange:
    membership: MembershipRecord
    previous_role: str  # "" when the membership is new
    revoked: list[RevokedSession]


def _uuid(value) -> str:
    return str(value) if value is not None else ""


USER_COLUMNS = "id, email, full_name, password_hash, created_at, email_verified_at"


def user_of(row: Row) -> UserRecord:
    return UserRecord(id=str(row.id), email=row.email or "", full_name=row.full_name,
                      password_hash=row.password_hash, created_at=row.created_at,
                      email_verified_at=row.email_verified_at)


def _session_view(row: Row) -> SessionView:
    return SessionView(
        session_id=str(row.session_id), user_id=_uuid(row.user_id), email=row.email or "",
        full_name=row.full_name or "", restaurant_id=_uuid(row.restaurant_id),
        restaurant_name=row.restaurant_name or "", role=row.role or "",
        is_member=row.role is not None, expires_at=row.expires_at,
        absolute_expires_at=row.absolute_expires_at, revoked_at=row.revoked_at,
        revoke_reason=row.revoke_reason or "", kind=row.kind, device_id=_uuid(row.device_id),
        device_type=row.device_type or "", device_revoked=row.device_revoked_at is not None,
        idle_lock_seconds=row.idle_lock_seconds or 0)


_SESSION_VIEW_COLUMNS = """
    s.id AS session_id, s.user_id, u.email, u.full_name, s.restaurant_id, m.restaurant_name,
    m.role, s.expires_at, s.absolute_expires_at, s.revoked_at, s.revoke_reason, s.kind,
    s.device_id, d.device_type, d.revoked_at AS device_revoked_at, s.idle_lock_seconds
"""
_SESSION_VIEW_JOINS = """
    LEFT JOIN users u ON u.id = s.user_id
    LEFT JOIN memberships m ON m.user_id = s.user_id AND m.restaurant_id = s.restaurant_id
    LEFT JOIN devices d ON d.id = s.device_id
"""

_REVOKE_RETURNING = "RETURNING id, user_id, restaurant_id"


def _revoked(rows: Sequence[Row]) -> list[RevokedSession]:
    return [RevokedSession(str(row.id), _uuid(row.user_id), _uuid(row.restaurant_id)) for row in rows]


class EmailTaken(Exception):
    pass


class UserNotFound(Exception):
    pass


class EmailNotVerified(Exception):
    pass


class AuthStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # --- users -------------------------------------------------------------------------------

    async def user_for_login(self, email: str) -> tuple[UserRecord, list[MembershipRecord]] | None:
        return await self._user_and_memberships("u.email = :key", email)

    async def user_with_memberships(self, user_id: str) -> tuple[UserRecord, list[MembershipRecord]] | None:
        return await self._user_and_memberships("u.id = :key", user_id)

    async def _user_and_memberships(self, condition: str, key: str
                                    ) -> tuple[UserRecord, list[MembershipRecord]] | None:
        # `condition` is one of the two constants above, never client input.
        async with self.engine.connect() as conn:
            rows = (await conn.execute(text(f"""
                SELECT u.id, u.email, u.full_name, u.password_hash, u.created_at,
                       u.email_verified_at, m.restaurant_id, m.restaurant_name, m.role
                FROM users u LEFT JOIN memberships m ON m.user_id = u.id
                WHERE {condition}
                ORDER BY m.created_at
            """), {"key": key})).all()
        if not rows:
            return None
        memberships = [MembershipRecord(str(row.restaurant_id), row.restaurant_name, row.role)
                       for row in rows if row.restaurant_id is not None]
        return user_of(rows[0]), memberships

    async def users_by_ids(self, user_ids: Sequence[str]) -> list[UserRecord]:
        if not user_ids:
            return []
        async with self.engine.connect() as conn:
            rows = (await conn.execute(text(f"""
                SELECT {USER_COLUMNS}
                FROM users WHERE id = ANY(CAST(:ids AS uuid[]))
            """), {"ids": list(user_ids)})).all()
        return [user_of(row) for row in rows]

    async def replace_password_hash(self, user_id: str, *, old_hash: str, new_hash: str,
                                    now: datetime) -> bool:
        """Compare-and-set, so a re-hash never overwrites a password changed meanwhile."""
        async with self.engine.begin() as conn:
            result = await conn.execute(text("""
                UPDATE users SET password_hash = :new_hash, updated_at = :now
                WHERE id = :id AND password_hash = :old_hash
            """), {"id": user_id, "old_hash": old_hash, "new_hash": new_hash, "now": now})
            return result.rowcount == 1

    # --- sessions ----------------------------------------------------------------------------

    async def create_session(self, new: NewSession) -> None:
        async with self.engine.begin() as conn:
            await self._insert_session(conn, new)

    @staticmethod
    async def _insert_session(conn: AsyncConnection, new: NewSession) -> None:
        await conn.execute(text("""
            WITH session AS (
                INSERT INTO sessions (id, user_id, restaurant_id, created_at, last_refreshed_at,
                                      expires_at, absolute_expires_at, client_ip, device_label,
                                      user_agent, kind, device_id, idle_lock_seconds)
                VALUES (:sid, :user_id, :restaurant_id, :now, :now, :expires_at,
                        :absolute_expires_at, :client_ip, :device_label, :user_agent, :kind,
                        :device_id, :idle_lock_seconds)
                RETURNING id
            )
            INSERT INTO refresh_tokens (id, session_id, token_hash, created_at)
            SELECT :token_id, id, :digest, :now FROM session
        """), {"sid": new.session_id, "user_id": new.user_id, "restaurant_id": new.restaurant_id,
               "now": new.now, "expires_at": new.expires_at,
               "absolute_expires_at": new.absolute_expires_at, "client_ip": new.client_ip,
               "device_label": new.device_label, "user_agent": new.user_agent,
               "kind": new.kind, "device_id": new.device_id,
               "idle_lock_seconds": new.idle_lock_seconds,
               "token_id": new.refresh_token_id, "digest": new.refresh_digest})

    async def session_view(self, session_id: str) -> SessionView | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(text(f"""
                SELECT {_SESSION_VIEW_COLUMNS} FROM sessions s {_SESSION_VIEW_JOINS}
                WHERE s.id = :sid
            """), {"sid": session_id})).first()
        return _session_view(row) if row is not None else None

    async def switch_session(self, *, old_session_id: str, new: NewSession,
                             reason: str) -> tuple[RevokedSession, datetime] | None:
        """Revokes the old session and opens `new` in its place, keeping the old absolute
        expiry (switching must not extend a sign-in). Returns the old session and the new one's
        expiry; None when the old one is no longer live."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(text(f"""
                UPDATE sessions SET revoked_at = :now, revoke_reason = :reason
                WHERE id = :sid AND revoked_at IS NULL AND absolute_expires_at > :now
                {_REVOKE_RETURNING}, absolute_expires_at, device_label, user_agent
            """), {"sid": old_session_id, "now": new.now, "reason": reason})).first()
            if row is None:
                return None
            absolute = min(row.absolute_expires_at, new.absolute_expires_at)
            expires_at = min(new.expires_at, absolute)
            await self._insert_session(conn, NewSession(
                session_id=new.session_id, user_id=new.user_id, restaurant_id=new.restaurant_id,
                now=new.now, expires_at=expires_at, absolute_expires_at=absolute,
                client_ip=new.client_ip, refresh_token_id=new.refresh_token_id,
                refresh_digest=new.refresh_digest, device_label=row.device_label,
                user_agent=row.user_agent))  # the same device, in another restaurant
            await self._wipe_sealed(conn, [row.id])
            return _revoked([row])[0], expires_at

    async def revoke_session(self, session_id: str, *, reason: str, now: datetime) -> list[RevokedSession]:
        return await self._revoke("id = :sid", {"sid": session_id}, reason, now)

    async def revoke_user_sessions(self, user_id: str, *, restaurant_id: str | None, reason: str,
                                   now: datetime) -> list[RevokedSession]:
        if restaurant_id:
            return await self._revoke("user_id = :uid AND restaurant_id = :rid",
                                      {"uid": user_id, "rid": restaurant_id}, reason, now)
        return await self._revoke("user_id = :uid", {"uid": user_id}, reason, now)

    async def revoke_other_sessions(self, user_id: str, *, keep_session_id: str, reason: str,
                                    now: datetime) -> list[RevokedSession]:
        return await self._revoke("user_id = :uid AND id <> :keep",
                                  {"uid": user_id, "keep": keep_session_id}, reason, now)

    async def revoke_own_session(self, user_id: str, session_id: str, *, reason: str,
                                 now: datetime) -> list[RevokedSession]:
        """Only a session of `user_id`: another user's id is the same as an unknown one."""
        return await self._revoke("user_id = :uid AND id = :sid",
                                  {"uid": user_id, "sid": session_id}, reason, now)

    async def live_sessions(self, user_id: str, now: datetime) -> list[SessionRecord]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(text("""
                SELECT id, device_label, user_agent, client_ip, created_at, last_refreshed_at,
                       restaurant_id
                FROM sessions
                WHERE user_id = :uid AND revoked_at IS NULL AND expires_at > :now
                  AND absolute_expires_at > :now
                ORDER BY last_refreshed_at DESC
            """), {"uid": user_id, "now": now})).all()
        return [SessionRecord(str(row.id), row.device_label, row.user_agent, row.client_ip,
                              row.created_at, row.last_refreshed_at, _uuid(row.restaurant_id))
                for row in rows]

    async def _revoke(self, where: str, params: dict, reason: str, now: datetime) -> list[RevokedSession]:
        async with self.engine.begin() as conn:
            return await self.revoke_in(conn, where, params, reason, now)

    async def revoke_in(self, conn: AsyncConnection, where: str, params: dict, reason: str,
                        now: datetime) -> list[RevokedSession]:
        """Ends the live sessions matching `where` (a constant of this module, never input)."""
        rows = (await conn.execute(text(f"""
            UPDATE sessions SET revoked_at = :now, revoke_reason = :reason
            WHERE {where} AND revoked_at IS NULL
            {_REVOKE_RETURNING}
        """), {**params, "now": now, "reason": reason})).all()
        await self._wipe_sealed(conn, [row.id for row in rows])
        return _revoked(rows)

    @staticmethod
    async def _wipe_sealed(conn: AsyncConnection, session_ids: list) -> None:
        if session_ids:
            await conn.execute(text("""
                UPDATE refresh_tokens SET sealed_successor = NULL
                WHERE session_id = ANY(CAST(:ids AS uuid[])) AND sealed_successor IS NOT NULL
            """), {"ids": [str(sid) for sid in session_ids]})

    async def recently_revoked(self, since: datetime) -> list[tuple[RevokedSession, str]]:
        """Sessions revoked since `since`, with the reason each was revoked for."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(text("""
                SELECT id, user_id, restaurant_id, revoke_reason FROM sessions
                WHERE revoked_at >= :since
            """), {"since": since})).all()
        return [(session, row.revoke_reason or "REVOKED")
                for session, row in zip(_revoked(rows), rows)]

    # --- refresh rotation --------------------------------------------------------------------

    @asynccontextmanager
    async def refresh_unit(self, digest: bytes) -> AsyncIterator["RefreshUnit"]:
        """A transaction holding the refresh token's row lock (FOR UPDATE) for the domain's
        decision; committed when the block exits normally, rolled back when it raises."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(text(f"""
                SELECT t.id, t.rotated_at, t.grace_until, t.sealed_successor,
                       {_SESSION_VIEW_COLUMNS}
                FROM refresh_tokens t
                JOIN sessions s ON s.id = t.session_id
                {_SESSION_VIEW_JOINS}
                WHERE t.token_hash = :digest
                FOR UPDATE OF t
            """), {"digest": digest})).first()
            token = None
            if row is not None:
                token = LockedRefreshToken(id=str(row.id), rotated_at=row.rotated_at,
                                           grace_until=row.grace_until,
                                           sealed_successor=row.sealed_successor,
                                           session=_session_view(row))
            yield RefreshUnit(self, conn, token)

    # --- memberships -------------------------------------------------------------------------

    async def grant_membership(self, *, user_id: str, restaurant_id: str, restaurant_name: str,
                               role: str, now: datetime, revoke_reason: str) -> MembershipChange:
        """Creates or changes a membership; a changed role ends the user's sessions there."""
        async with self.engine.begin() as conn:
            user = (await conn.execute(text("""
                SELECT email, email_verified_at FROM users WHERE id = :uid FOR KEY SHARE
            """), {"uid": user_id})).first()
            if user is None:
                raise UserNotFound(user_id)
            params = {"uid": user_id, "rid": restaurant_id, "name": restaurant_name, "role": role,
                      "now": now}
            inserted = (await conn.execute(text("""
                INSERT INTO memberships (user_id, restaurant_id, restaurant_name, role, created_at,
                                         updated_at)
                VALUES (:uid, :rid, :name, :role, :now, :now)
                ON CONFLICT (user_id, restaurant_id) DO NOTHING
                RETURNING restaurant_name, role
            """), params)).first()
            previous_role = ""
            if inserted is not None and user.email_verified_at is None and user.email is not None:
                # (A floor account has no address: the staff service vouches for it.)
                # Only an address someone proved they receive mail at gets a membership.
                raise EmailNotVerified(user_id)
            if inserted is None:
                current = (await conn.execute(text("""
                    SELECT role, restaurant_name FROM memberships
                    WHERE user_id = :uid AND restaurant_id = :rid FOR UPDATE
                """), params)).one()
                previous_role = current.role
                await conn.execute(text("""
                    UPDATE memberships SET role = :role, updated_at = :now,
                           restaurant_name = CASE WHEN :name = '' THEN restaurant_name ELSE :name END
                    WHERE user_id = :uid AND restaurant_id = :rid
                """), params)
            if restaurant_name:
                # The name belongs to the restaurant: keep every member's copy in step.
                await conn.execute(text("""
                    UPDATE memberships SET restaurant_name = :name, updated_at = :now
                    WHERE restaurant_id = :rid AND restaurant_name <> :name
                """), params)
            revoked: list[RevokedSession] = []
            if previous_role and previous_role != role:
                revoked = await self.revoke_in(conn, "user_id = :uid AND restaurant_id = :rid",
                                                {"uid": user_id, "rid": restaurant_id},
                                                revoke_reason, now)
            name = (await conn.execute(text("""
                SELECT restaurant_name FROM memberships WHERE user_id = :uid AND restaurant_id = :rid
            """), params)).scalar_one()
        return MembershipChange(MembershipRecord(restaurant_id, name, role), previous_role, revoked)

    async def create_floor_account(self, *, user_id: str, full_name: str, restaurant_id: str,
                                   restaurant_name: str, role: str,
                                   now: datetime) -> tuple[UserRecord, bool]:
        """An account with no email or password, and its membership; the same answer again for
        the same id (a retry)."""
        async with self.engine.begin() as conn:
            created = (await conn.execute(text("""
                INSERT INTO users (id, email, full_name, password_hash, created_at, updated_at)
                VALUES (:uid, NULL, :name, NULL, :now, :now)
                ON CONFLICT (id) DO NOTHING RETURNING id
            """), {"uid": user_id, "name": full_name, "now": now})).first() is not None
            row = (await conn.execute(text(f"SELECT {USER_COLUMNS} FROM users WHERE id = :uid"),
                                      {"uid": user_id})).one()
            if row.email is not None:
                raise EmailTaken(user_id)  # an id of an account with an address: not a retry
            await conn.execute(text("""
                INSERT INTO memberships (user_id, restaurant_id, restaurant_name, role, created_at,
                                         updated_at)
                VALUES (:uid, :rid, :rname, :role, :now, :now)
                ON CONFLICT (user_id, restaurant_id) DO UPDATE SET role = :role, updated_at = :now
            """), {"uid": user_id, "rid": restaurant_id, "rname": restaurant_name, "role": role,
                   "now": now})
        return user_of(row), created

    async def revoke_membership(self, *, user_id: str, restaurant_id: str, now: datetime,
                                reason: str) -> tuple[bool, list[RevokedSession]]:
        async with self.engine.begin() as conn:
            deleted = (await conn.execute(text("""
                DELETE FROM memberships WHERE user_id = :uid AND restaurant_id = :rid RETURNING role
            """), {"uid": user_id, "rid": restaurant_id})).first()
            revoked = await self.revoke_in(conn, "user_id = :uid AND restaurant_id = :rid",
                                            {"uid": user_id, "rid": restaurant_id}, reason, now)
        return deleted is not None, revoked

    # --- security events ---------------------------------------------------------------------

    async def insert_security_event(self, *, type: str, severity: str, source: str, ip: str,
                                    user_id: str, restaurant_id: str, details: dict) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text("""
                INSERT INTO security_events (type, severity, source, ip, user_id, restaurant_id,
                                             details)
                VALUES (:type, :severity, :source, :ip, :user_id, :restaurant_id,
                        CAST(:details AS jsonb))
            """), {"type": type, "severity": severity, "source": source, "ip": ip,
                   "user_id": user_id, "restaurant_id": restaurant_id,
                   "details": json.dumps(details, default=str)})

    # --- housekeeping ------------------------------------------------------------------------

    async def purge(self, *, now: datetime, keep_ended_sessions_until: datetime) -> dict[str, int]:
        """Wipes sealed pairs past their window; deletes sessions (and their tokens) that ended
        before `keep_ended_sessions_until`, and the email links (verification, email change,
        reset) used, replaced or expired before then. Only one replica does it at a time."""
        async with self.engine.begin() as conn:
            got_lock = (await conn.execute(text(
                "SELECT pg_try_advisory_xact_lock(hashtext('posmesh-auth-purge'))"))).scalar_one()
            if not got_lock:
                return {}
            wiped = await conn.execute(text("""
                UPDATE refresh_tokens SET sealed_successor = NULL
                WHERE sealed_successor IS NOT NULL AND grace_until < :now
            """), {"now": now})
            deleted = await conn.execute(text("""
                DELETE FROM sessions
                WHERE (revoked_at IS NOT NULL AND revoked_at < :cutoff)
                   OR expires_at < :cutoff OR absolute_expires_at < :cutoff
            """), {"cutoff": keep_ended_sessions_until})
            links = await conn.execute(text("""
                DELETE FROM email_tokens
                WHERE used_at < :cutoff OR superseded_at < :cutoff OR expires_at < :cutoff
            """), {"cutoff": keep_ended_sessions_until})
        return {"sealed_wiped": wiped.rowcount, "sessions_deleted": deleted.rowcount,
                "email_links_deleted": links.rowcount}


class RefreshUnit:
    """The refresh token row locked by `AuthStore.refresh_unit`, and what may be done with it."""

    def __init__(self, store: AuthStore, conn: AsyncConnection, token: LockedRefreshToken | None) -> None:
        self._store = store
        self._conn = conn
        self.token = token

    async def rotate(self, *, successor_id: str, successor_digest: bytes, sealed: bytes,
                     grace_until: datetime, session_expires_at: datetime, now: datetime) -> bool:
        """Marks the token rotated (keeping the sealed successor), stores the successor and
        slides the session's expiry. False when the session was revoked meanwhile."""
        assert self.token is not None
        live = (await self._conn.execute(text("""
            UPDATE sessions SET last_refreshed_at = :now, expires_at = :expires_at
            WHERE id = :sid AND revoked_at IS NULL
            RETURNING id
        """), {"sid": self.token.session.session_id, "now": now,
               "expires_at": session_expires_at})).first()
        if live is None:
            return False
        await self._conn.execute(text("""
            WITH successor AS (
                INSERT INTO refresh_tokens (id, session_id, token_hash, created_at)
                VALUES (:successor_id, :sid, :digest, :now)
            )
            UPDATE refresh_tokens
            SET rotated_at = :now, successor_id = :successor_id, grace_until = :grace_until,
                sealed_successor = :sealed
            WHERE id = :id
        """), {"successor_id": successor_id, "sid": self.token.session.session_id,
               "digest": successor_digest, "now": now, "grace_until": grace_until,
               "sealed": sealed, "id": self.token.id})
        return True

    async def revoke_session(self, *, reason: str, now: datetime) -> list[RevokedSession]:
        assert self.token is not None
        return await self._store.revoke_in(self._conn, "id = :sid",
                                            {"sid": self.token.session.session_id}, reason, now)
