"""The dev mail server stopped while the auth service has mail to send, then started again on
the same port: the mail waits in the outbox, its attempts counted, and arrives exactly once."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from posmesh.common import db
from posmesh.common.mail import Mail, enqueue, mail_outbox
from tests.fault.conftest import eventually
from tests.support.mail import unique_address

pytestmark = pytest.mark.fault


async def test_mail_waits_while_the_mail_server_is_down_and_arrives_once_after(stack, mailbox):
    engine = db.create_engine(
        stack.settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 1}), "auth")
    address = unique_address("outage")

    async def row():
        async with engine.connect() as connection:
            return (await connection.execute(
                sa.select(mail_outbox).where(mail_outbox.c.id == mail_id))).one()

    await stack.stop_mail_server()
    try:
        async with engine.begin() as connection:
            mail_id = await enqueue(connection, Mail(to=address, subject="Sent during an outage",
                                                     text="It waited.\n"))
        # The auth service's sender keeps failing, counting each try, and keeps the mail.
        waiting = await eventually(
            lambda: _with_attempts(row, 2), timeout=10, what="two failed attempts")
        assert waiting.sent_at is None and waiting.failed_at is None
        assert waiting.last_error
    finally:
        await stack.start_mail_server()

    try:
        arrived = await mailbox.wait_for(to=address, subject_contains="Sent during an outage",
                                         timeout=15)
        sent = await eventually(lambda: _if_sent(row), timeout=5, what="the row marked sent")
    finally:
        await engine.dispose()
    assert arrived.text == "It waited.\n"
    assert sent.attempts >= 3 and sent.last_error is None
    # Marked sent, so no sender will take it again: one copy, now and later.
    assert len(await mailbox.messages(to=address)) == 1
    assert "mail delivery failed (transport)" in stack.logs_since(
        dict.fromkeys(stack.replicas("auth"), 0))


async def _with_attempts(row, attempts: int):
    current = await row()
    return current if current.attempts >= attempts else None


async def _if_sent(row):
    current = await row()
    return current if current.sent_at is not None else None
