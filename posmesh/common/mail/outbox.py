"""The mail outbox: one `mail_outbox` table in each sending service's own schema.

A service writes a mail with `enqueue(connection, mail)` inside the transaction that causes it, so
the mail exists exactly when that change commits. The table is unqualified: it resolves through the
connection's search_path (`db.create_engine(settings, schema)`), so one definition serves every
schema. Each service's Alembic migration `0002_mail_outbox` creates it, with a trigger that
NOTIFYs `channel(schema)` on commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from posmesh.common.mail.message import Mail

metadata = sa.MetaData()

mail_outbox = sa.Table(
    "mail_outbox", metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("to_address", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("text_body", sa.Text, nullable=False),
    sa.Column("html_body", sa.Text),
    sa.Column("template", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    # Tries so far (a claim counts one), and when the next may start. While a sender holds a
    # claim, next_attempt_at is the end of its lease.
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("failed_at", sa.DateTime(timezone=True)),
    sa.Column("last_error", sa.Text),
)

_pending = sa.and_(mail_outbox.c.sent_at.is_(None), mail_outbox.c.failed_at.is_(None))
ERROR_TEXT_LIMIT = 1000


def channel(schema: str) -> str:
    """The NOTIFY channel of one schema's outbox (the migration's trigger uses the same name)."""
    return f"mail_outbox_{schema}"


async def enqueue(connection: AsyncConnection | AsyncSession, mail: Mail) -> uuid.UUID:
    """Adds `mail` to the outbox in the caller's open transaction; it is sent once that commits
    and never if it rolls back. Returns the mail's id (its Message-ID is `<id@MAIL_FROM domain>`)."""
    mail_id = uuid.uuid4()
    await connection.execute(mail_outbox.insert().values(
        id=mail_id, to_address=mail.to, subject=mail.subject, text_body=mail.text,
        html_body=mail.html, template=mail.template))
    return mail_id


@dataclass(frozen=True, slots=True)
class ClaimedMail:
    id: uuid.UUID
    mail: Mail
    created_at: datetime
    attempts: int  # including this one


@dataclass(frozen=True, slots=True)
class OutboxState:
    pending: int
    oldest_pending_age_seconds: float
    next_due_in_seconds: float | None  # None: nothing pending


class OutboxStore:
    """The sender's statements. Each is its own short transaction: no lock is held while SMTP
    talks, and the database's clock is the only one used."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def claim(self, lease: timedelta) -> ClaimedMail | None:
        """The oldest due mail, counted as attempted and hidden from other senders for `lease`.
        SKIP LOCKED lets concurrent claims pass each other instead of taking the same row."""
        t = mail_outbox
        due = (sa.select(t.c.id).where(_pending, t.c.next_attempt_at <= sa.func.now())
               .order_by(t.c.next_attempt_at, t.c.created_at).limit(1)
               .with_for_update(skip_locked=True).scalar_subquery())
        statement = (t.update().where(t.c.id == due)
                     .values(attempts=t.c.attempts + 1, next_attempt_at=sa.func.now() + lease)
                     .returning(t.c.id, t.c.to_address, t.c.subject, t.c.text_body, t.c.html_body,
                                t.c.template, t.c.created_at, t.c.attempts))
        async with self._engine.begin() as connection:
            row = (await connection.execute(statement)).first()
        if row is None:
            return None
        mail = Mail(to=row.to_address, subject=row.subject, text=row.text_body, html=row.html_body,
                    template=row.template)
        return ClaimedMail(row.id, mail, row.created_at, row.attempts)

    async def mark_sent(self, mail_id: uuid.UUID) -> None:
        await self._update(mail_id, sent_at=sa.func.now(), last_error=None)

    async def retry_later(self, mail_id: uuid.UUID, delay: timedelta, error: str) -> None:
        await self._update(mail_id, next_attempt_at=sa.func.now() + delay,
                           last_error=error[:ERROR_TEXT_LIMIT])

    async def mark_failed(self, mail_id: uuid.UUID, error: str) -> None:
        await self._update(mail_id, failed_at=sa.func.now(), last_error=error[:ERROR_TEXT_LIMIT])

    async def _update(self, mail_id: uuid.UUID, **values) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                mail_outbox.update().where(mail_outbox.c.id == mail_id, _pending).values(**values))

    async def state(self) -> OutboxState:
        t = mail_outbox
        statement = sa.select(
            sa.func.count(),
            sa.extract("epoch", sa.func.now() - sa.func.min(t.c.created_at)),
            sa.extract("epoch", sa.func.min(t.c.next_attempt_at) - sa.func.now()),
        ).where(_pending)
        async with self._engine.connect() as connection:
            count, oldest_age, next_due = (await connection.execute(statement)).one()
        return OutboxState(pending=count, oldest_pending_age_seconds=float(oldest_age or 0.0),
                           next_due_in_seconds=None if next_due is None else float(next_due))

    async def purge(self, older_than: timedelta, batch: int) -> int:
        """Deletes up to `batch` sent or failed mails created more than `older_than` ago.
        Pending mails are never purged."""
        t = mail_outbox
        doomed = (sa.select(t.c.id)
                  .where(t.c.created_at < sa.func.now() - older_than, sa.not_(_pending))
                  .limit(batch).scalar_subquery())
        async with self._engine.begin() as connection:
            result = await connection.execute(t.delete().where(t.c.id.in_(doomed)))
        return result.rowcount
