"""The mail outbox end to end: mails written in a transaction leave over real SMTP (the stack's
dev mail server) exactly when and as often as they should.

The services' own senders (auth, staff) deliver what is written to their schemas. The tests of
one sender's rules run senders in this process on a scratch schema migrated like staff's, so they
can count, stop and aim them (at the stack's dev server or at a server of their own).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import AsyncIterator

import pytest
import sqlalchemy as sa
from aiosmtpd.smtp import SMTP
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from posmesh.common import db
from posmesh.common.mail import Mail, MailSender, enqueue, mail_outbox
from posmesh.common.mail.outbox import OutboxStore
from posmesh.common.migrations import run_migrations
from posmesh.common.settings import Settings
from stack.embedded import free_port
from tests.support.mail import Mailbox, unique_address

ROOT = Path(__file__).resolve().parents[2]


class Rollback(Exception):
    pass


def small_pool(settings: Settings, **updates: object) -> Settings:
    # model_copy neither validates nor knows aliases: a misspelt name would change nothing.
    assert set(updates) <= set(Settings.model_fields), updates
    return settings.model_copy(update={"db_pool_size": 2, "db_max_overflow": 2, **updates})


def mail_to(address: str, subject: str = "Hello from the outbox") -> Mail:
    return Mail(to=address, subject=subject, text=f"This is {subject!r}.\n", template="test")


async def outbox_row(engine: AsyncEngine, mail_id: uuid.UUID):
    async with engine.connect() as connection:
        return (await connection.execute(
            sa.select(mail_outbox).where(mail_outbox.c.id == mail_id))).one_or_none()


async def until(check, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        await asyncio.sleep(0.05)
    return value


@pytest.fixture(scope="module")
async def schema_engines(stack) -> AsyncIterator[dict[str, AsyncEngine]]:
    """Engines on the services' own schemas, as their stores open them."""
    engines = {schema: db.create_engine(small_pool(stack.settings), schema)
               for schema in ("auth", "staff")}
    yield engines
    for engine in engines.values():
        await engine.dispose()


# --- the services' senders ------------------------------------------------------------------------

@pytest.mark.parametrize("schema", ["auth", "staff"])
async def test_a_mail_enqueued_in_a_committed_transaction_arrives(stack, mailbox, schema_engines,
                                                                  schema):
    engine = schema_engines[schema]
    address = unique_address(schema)

    async with engine.begin() as connection:
        mail_id = await enqueue(connection, mail_to(address, f"Committed in {schema}"))

    arrived = await mailbox.wait_for(to=address, subject_contains=f"Committed in {schema}")
    assert arrived.text == f"This is 'Committed in {schema}'.\n"
    assert arrived.message["From"] == stack.settings.mail_from
    assert arrived.message["To"] == address
    assert arrived.message_id == f"<{mail_id}@posmesh.local>"
    assert arrived.message["Auto-Submitted"] == "auto-generated"
    row = await until(lambda: _sent_row(engine, mail_id), timeout=5, what="the row marked sent")
    assert row.attempts == 1 and row.last_error is None


async def _sent_row(engine: AsyncEngine, mail_id: uuid.UUID):
    row = await outbox_row(engine, mail_id)
    return row if row is not None and row.sent_at is not None else None


async def test_a_mail_in_a_rolled_back_transaction_is_never_sent(mailbox, schema_engines):
    engine = schema_engines["auth"]
    address = unique_address("rollback")

    with pytest.raises(Rollback):
        async with engine.begin() as connection:
            rolled_back = await enqueue(connection, mail_to(address, "Rolled back"))
            raise Rollback
    async with engine.begin() as connection:
        await enqueue(connection, mail_to(address, "Committed after"))

    # The sender takes mails oldest first: once the later one is here, the earlier would be too.
    await mailbox.wait_for(to=address, subject_contains="Committed after")
    assert [mail.subject for mail in await mailbox.messages(to=address)] == ["Committed after"]
    assert await outbox_row(engine, rolled_back) is None


async def test_the_migrations_create_the_shared_outbox_table_in_each_schema(schema_engines):
    dialect = postgresql.dialect()
    expected = {column.name: (column.type.compile(dialect), column.nullable)
                for column in mail_outbox.columns}
    for schema, engine in schema_engines.items():
        async with engine.connect() as connection:
            columns = await connection.run_sync(
                lambda sync: sa.inspect(sync).get_columns("mail_outbox", schema=schema))
        found = {column["name"]: (column["type"].compile(dialect), column["nullable"])
                 for column in columns}
        assert found == expected, schema


# --- one sender's rules, on a scratch outbox ----------------------------------------------------

@dataclass
class Scratch:
    settings: Settings
    schema: str
    engine: AsyncEngine

    def sender(self, *, smtp_url: str | None = None, engine: AsyncEngine | None = None,
               **settings: object) -> MailSender:
        return MailSender(small_pool(self.settings, **settings), engine or self.engine,
                          self.schema, smtp_url=smtp_url)

    async def enqueue(self, *mails: Mail) -> list[uuid.UUID]:
        async with self.engine.begin() as connection:
            return [await enqueue(connection, mail) for mail in mails]

    async def row(self, mail_id: uuid.UUID):
        return await outbox_row(self.engine, mail_id)


@pytest.fixture(scope="module")
async def scratch_schema(stack) -> AsyncIterator[Scratch]:
    schema = f"mail_scratch_{secrets.token_hex(4)}"
    settings = small_pool(stack.settings)
    await run_migrations(settings, ROOT / "services" / "staff", schema)
    engine = db.create_engine(settings, schema)
    yield Scratch(settings, schema, engine)
    async with engine.begin() as connection:
        await connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    await engine.dispose()


@pytest.fixture
async def scratch(scratch_schema) -> Scratch:
    """The scratch outbox, emptied: no test sees another's mails."""
    async with scratch_schema.engine.begin() as connection:
        await connection.execute(mail_outbox.delete())
    return scratch_schema


async def test_two_senders_on_one_outbox_never_send_the_same_mail_twice(scratch, mailbox):
    address = unique_address("pair")
    ids = await scratch.enqueue(*(mail_to(address, f"Mail {n}") for n in range(30)))
    other_engine = db.create_engine(scratch.settings, scratch.schema)  # as another process's
    first, second = scratch.sender(), scratch.sender(engine=other_engine)

    try:
        await asyncio.gather(first.deliver_due(), second.deliver_due())
    finally:
        await other_engine.dispose()

    mails = await mailbox.messages(to=address)
    assert sorted(mail.message_id for mail in mails) == sorted(f"<{i}@posmesh.local>" for i in ids)
    assert first.sent + second.sent == 30
    assert first.sent and second.sent, "the two senders did not both take part"
    for mail_id in ids:
        row = await scratch.row(mail_id)
        assert row.sent_at is not None and row.attempts == 1


async def test_the_sender_wakes_on_the_commit_without_waiting_for_its_poll(scratch, mailbox):
    sender = scratch.sender(mail_poll_seconds=60)
    sender.start()
    try:
        await until(lambda: _true(sender.listening), timeout=5, what="LISTEN")
        await asyncio.sleep(0.2)  # its first round (on connecting) is over; now it waits 60 s
        address = unique_address("wake")
        started = time.monotonic()
        await scratch.enqueue(mail_to(address, "Prompt"))

        await mailbox.wait_for(to=address, subject_contains="Prompt", timeout=10)
    finally:
        await sender.stop()
    assert time.monotonic() - started < 10


async def _true(value: bool) -> bool:
    return value


async def test_counters_report_what_was_sent_and_what_waits(scratch):
    sender = scratch.sender()
    await scratch.enqueue(mail_to(unique_address("count")), mail_to(unique_address("count")))

    await sender.refresh_metrics()
    assert sender.pending == 2 and sender.oldest_pending_age_seconds >= 0
    await sender.deliver_due()
    await sender.refresh_metrics()

    assert (sender.sent, sender.failed, sender.retries, sender.pending) == (2, 0, 0, 0)
    assert sender.oldest_pending_age_seconds == 0


class RefusingHandler:
    async def handle_RCPT(self, server, session, envelope, address, options):
        return "550 5.1.1 no such mailbox here"


async def test_a_recipient_the_server_refuses_is_marked_failed_at_once(scratch):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(RefusingHandler(), hostname="refusing"),
                                      "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = scratch.sender(smtp_url=f"smtp://127.0.0.1:{port}")
    try:
        (mail_id,) = await scratch.enqueue(mail_to(unique_address("refused")))
        assert await sender.deliver_due() is True  # the server answered: it is reachable
    finally:
        server.close()

    row = await scratch.row(mail_id)
    assert row.failed_at is not None and row.sent_at is None
    assert row.attempts == 1
    assert "550" in row.last_error
    assert (sender.failed, sender.retries) == (1, 0)


async def test_an_unreachable_server_reschedules_the_mail_until_its_last_attempt(scratch):
    nobody = f"smtp://127.0.0.1:{free_port()}"
    sender = scratch.sender(smtp_url=nobody, mail_max_attempts=3, mail_retry_base_seconds=0.05,
                            mail_retry_max_seconds=0.1)
    (mail_id,) = await scratch.enqueue(mail_to(unique_address("unreachable")))

    assert await sender.deliver_due() is False
    row = await scratch.row(mail_id)
    assert (row.attempts, row.failed_at, row.sent_at) == (1, None, None)
    assert row.last_error and row.next_attempt_at > row.created_at

    for attempt in (2, 3):
        await asyncio.sleep(0.11)  # past the longest backoff
        assert await sender.deliver_due() is False
    row = await scratch.row(mail_id)
    assert row.attempts == 3 and row.failed_at is not None and row.sent_at is None
    assert (sender.retries, sender.failed) == (2, 1)
    await asyncio.sleep(0.11)
    assert await sender.deliver_due() is True  # a failed mail is never tried again
    assert (await scratch.row(mail_id)).attempts == 3


async def test_old_sent_and_failed_mails_are_purged_and_pending_ones_kept(scratch):
    old_sent, old_failed, old_pending, new_sent = await scratch.enqueue(
        *(mail_to(unique_address("purge")) for _ in range(4)))
    t = mail_outbox
    async with scratch.engine.begin() as connection:
        long_ago = sa.func.now() - timedelta(days=30)
        await connection.execute(t.update().where(t.c.id.in_([old_sent, old_failed, old_pending]))
                                 .values(created_at=long_ago))
        await connection.execute(t.update().where(t.c.id.in_([old_sent, new_sent]))
                                 .values(sent_at=sa.func.now()))
        await connection.execute(t.update().where(t.c.id == old_failed)
                                 .values(failed_at=sa.func.now()))

    deleted = await OutboxStore(scratch.engine).purge(timedelta(days=7), batch=100)

    assert deleted == 2
    assert await scratch.row(old_sent) is None and await scratch.row(old_failed) is None
    assert await scratch.row(old_pending) is not None and await scratch.row(new_sent) is not None
