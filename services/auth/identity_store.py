"""The SQL of an account's identity (schema `auth`): creating accounts, verified addresses, the
single-use email tokens (verification, email change, password reset) and password changes.

Every method is one transaction, and the mail a change causes is written to the outbox in that
same transaction (posmesh.common.mail), so it goes out exactly when the change commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from posmesh.common.mail import Mail, enqueue
from services.auth.rules import CHANGE_EMAIL, VERIFY_EMAIL, EmailTokenState
from services.auth.store import (
    USER_COLUMNS,
    AuthStore,
    EmailTaken,
    RevokedSession,
    UserRecord,
    user_of,
)


@dataclass(frozen=True, slots=True)
class NewEmailToken:
    purpose: str
    email: str  # where it is mailed
    digest: bytes
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Claim:
    user: UserRecord
    created: bool
    took_over: bool
    revoked: list[RevokedSession]


class TokenAlreadyUsed(Exception):
    """Another request used the token between our read and our write."""


class PasswordChangedMeanwhile(Exception):
    """The password hash was replaced between the check and the write."""


class IdentityStore:
    def __init__(self, store: AuthStore) -> None:
        self._store = store
        self.engine = store.engine

    # --- accounts ----------------------------------------------------------------------------

    async def create_user(self, *, email: str, full_name: str, password_hash: str, now: datetime,
                          verification: NewEmailToken, mail: Callable[[str], Mail]
                          ) -> UserRecord:
        """A new, unverified account and its verification mail. `mail(user_id)` renders it.
        Raises EmailTaken when the (normalised) email exists, also against a racing insert."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(text(f"""
                INSERT INTO users (id, email, full_name, password_hash, password_changed_at,
                                   created_at, updated_at)
                VALUES (:id, :email, :full_name, :password_hash, :now, :now, :now)
                ON CONFLICT (email) DO NOTHING
                RETURNING {USER_COLUMNS}
            """), {"id": uuid.uuid4(), "email": email, "full_name": full_name,
                   "password_hash": password_hash, "now": now})).first()
            if row is None:
                raise EmailTaken(email)
            user = user_of(row)
            await self._insert_token(conn, user.id, verification, now)
            await enqueue(conn, mail(user.id))
        return user

    async def send(self, mail: Mail) -> None:
        """A mail that goes with no change (a notice)."""
        async with self.engine.begin() as conn:
            await enqueue(conn, mail)

    async def user_by_email(self, email: str) -> UserRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(text(f"SELECT {USER_COLUMNS} FROM users WHERE email = :email"),
                                      {"email": email})).first()
        return user_of(row) if row is not None else None

    async def claim(self, *, email: str, full_name: str, password_hash: str,
                    now: datetime, reason: str) -> Claim:
        """A verified account for someone who proved they receive mail at `email`: created, or
        an unverified one taken over (new password, verified, every session ended). Raises
        EmailTaken for a verified account."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(text(f"""
                INSERT INTO users (id, email, full_name, password_hash, password_changed_at,
                                   email_verified_at, created_at, updated_at)
                VALUES (:id, :email, :full_name, :password_hash, :now, :now, :now, :now)
                ON CONFLICT (email) DO NOTHING
                RETURNING {USER_COLUMNS}
            """), {"id": uuid.uuid4(), "email": email, "full_name": full_name,
                   "password_hash": password_hash, "now": now})).first()
            if row is not None:
                return Claim(user_of(row), created=True, took_over=False, revoked=[])
            existing = (await conn.execute(text(f"""
                SELECT {USER_COLUMNS} FROM users WHERE email = :email FOR UPDATE
            """), {"email": email})).one()
            if existing.email_verified_at is not None:
                raise EmailTaken(email)
            row = (await conn.execute(text(f"""
                UPDATE users SET password_hash = :password_hash, password_changed_at = :now,
                       email_verified_at = :now, updated_at = :now,
                       full_name = CASE WHEN :full_name = '' THEN full_name ELSE :full_name END
                WHERE id = :id
                RETURNING {USER_COLUMNS}
            """), {"id": existing.id, "password_hash": password_hash, "full_name": full_name,
                   "now": now})).one()
            await self._supersede_tokens(conn, str(existing.id), None, now)
            revoked = await self._store.revoke_in(conn, "user_id = :uid", {"uid": existing.id},
                                                  reason, now)
        return Claim(user_of(row), created=False, took_over=True, revoked=revoked)

    # --- email tokens ------------------------------------------------------------------------

    async def issue_token(self, *, user_id: str, token: NewEmailToken, now: datetime,
                          mail: Mail) -> None:
        """A new link of that purpose (older unused ones stop working) and its mail."""
        async with self.engine.begin() as conn:
            await self._supersede_tokens(conn, user_id, (token.purpose,), now)
            await self._insert_token(conn, user_id, token, now)
            await enqueue(conn, mail)

    async def email_token(self, digest: bytes) -> EmailTokenState | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(text("""
                SELECT id, user_id, purpose, email, expires_at, used_at, superseded_at
                FROM email_tokens WHERE token_hash = :digest
            """), {"digest": digest})).first()
        if row is None:
            return None
        return EmailTokenState(str(row.id), str(row.user_id), row.purpose, row.email,
                               row.expires_at, row.used_at, row.superseded_at)

    async def verify_email(self, token: EmailTokenState, *, now: datetime,
                           notice: Mail | None) -> UserRecord:
        """Uses a verification or email-change token: the address it was mailed to becomes the
        account's, verified. `notice` goes to the previous address of a change."""
        async with self.engine.begin() as conn:
            await self._use(conn, token, now)
            # Any other pending verification or change link would move the address again.
            await self._supersede_tokens(conn, token.user_id, (VERIFY_EMAIL, CHANGE_EMAIL), now)
            try:
                row = (await conn.execute(text(f"""
                    UPDATE users SET email = :email, email_verified_at = :now, updated_at = :now
                    WHERE id = :id
                    RETURNING {USER_COLUMNS}
                """), {"id": token.user_id, "email": token.email, "now": now})).one()
            except sa_exc.IntegrityError as error:
                if "users_email_key" in str(error.orig):  # taken since the change was asked for
                    raise EmailTaken(token.email) from None
                raise
            if notice is not None:
                await enqueue(conn, notice)
        return user_of(row)

    async def reset_password(self, token: EmailTokenState, *, password_hash: str, now: datetime,
                             reason: str, notice: Mail) -> tuple[UserRecord, list[RevokedSession]]:
        """Uses a reset token: the new password, the address verified (the mail reached it),
        every session ended, a notice mailed."""
        async with self.engine.begin() as conn:
            await self._use(conn, token, now)
            row = (await conn.execute(text(f"""
                UPDATE users SET password_hash = :password_hash, password_changed_at = :now,
                       email_verified_at = COALESCE(email_verified_at, :now), updated_at = :now
                WHERE id = :id
                RETURNING {USER_COLUMNS}
            """), {"id": token.user_id, "password_hash": password_hash, "now": now})).one()
            revoked = await self._store.revoke_in(conn, "user_id = :uid", {"uid": token.user_id},
                                                  reason, now)
            await enqueue(conn, notice)
        return user_of(row), revoked

    async def change_password(self, *, user_id: str, old_hash: str, new_hash: str,
                              keep_session_id: str, now: datetime, reason: str,
                              notice: Mail) -> list[RevokedSession]:
        """Compare-and-set of the hash checked against the current password; every other session
        ends; a notice is mailed."""
        async with self.engine.begin() as conn:
            changed = (await conn.execute(text("""
                UPDATE users SET password_hash = :new_hash, password_changed_at = :now,
                       updated_at = :now
                WHERE id = :id AND password_hash = :old_hash
                RETURNING id
            """), {"id": user_id, "old_hash": old_hash, "new_hash": new_hash, "now": now})).first()
            if changed is None:
                raise PasswordChangedMeanwhile(user_id)
            revoked = await self._store.revoke_in(conn, "user_id = :uid AND id <> :keep",
                                                  {"uid": user_id, "keep": keep_session_id},
                                                  reason, now)
            await enqueue(conn, notice)
        return revoked

    async def recent_tokens(self, user_id: str, purpose: str, since: datetime) -> int:
        """How many links of that purpose were issued to the account since `since`."""
        async with self.engine.connect() as conn:
            return (await conn.execute(text("""
                SELECT count(*) FROM email_tokens
                WHERE user_id = :uid AND purpose = :purpose AND created_at >= :since
            """), {"uid": user_id, "purpose": purpose, "since": since})).scalar_one()

    @staticmethod
    async def _insert_token(conn: AsyncConnection, user_id: str, token: NewEmailToken,
                            now: datetime) -> None:
        await conn.execute(text("""
            INSERT INTO email_tokens (id, user_id, purpose, token_hash, email, created_at,
                                      expires_at)
            VALUES (:id, :uid, :purpose, :digest, :email, :now, :expires_at)
        """), {"id": uuid.uuid4(), "uid": user_id, "purpose": token.purpose,
               "digest": token.digest, "email": token.email, "now": now,
               "expires_at": token.expires_at})

    @staticmethod
    async def _supersede_tokens(conn: AsyncConnection, user_id: str,
                                purposes: tuple[str, ...] | None, now: datetime) -> None:
        """Older unused links (of these purposes, or all) stop working."""
        await conn.execute(text("""
            UPDATE email_tokens SET superseded_at = :now
            WHERE user_id = :uid AND used_at IS NULL AND superseded_at IS NULL
              AND (CAST(:purposes AS text[]) IS NULL OR purpose = ANY(CAST(:purposes AS text[])))
        """), {"uid": user_id, "purposes": list(purposes) if purposes else None, "now": now})

    @staticmethod
    async def _use(conn: AsyncConnection, token: EmailTokenState, now: datetime) -> None:
        used = (await conn.execute(text("""
            UPDATE email_tokens SET used_at = :now
            WHERE id = :id AND used_at IS NULL AND superseded_at IS NULL
            RETURNING id
        """), {"id": token.id, "now": now})).first()
        if used is None:
            raise TokenAlreadyUsed(token.id)
