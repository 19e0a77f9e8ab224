"""The mail outbox (invitations).

Revision ID: 0002_mail_outbox
Revises: 0001
Create Date: 2026-11-29

The same table as posmesh.common.mail.outbox.mail_outbox (a test compares them).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002_mail_outbox"
down_revision = "0001"
branch_labels = None
depends_on = None

UUID = pg.UUID(as_uuid=True)
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Written in the transaction that causes the mail; the sender claims, sends and marks rows.
    op.create_table(
        "mail_outbox",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("to_address", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("text_body", sa.Text, nullable=False),
        sa.Column("html_body", sa.Text),
        sa.Column("template", sa.Text),
        sa.Column("created_at", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.Column("sent_at", TIMESTAMP),
        sa.Column("failed_at", TIMESTAMP),
        sa.Column("last_error", sa.Text),
    )
    # The sender's claim: pending mails by due time.
    op.create_index("ix_mail_outbox_due", "mail_outbox", ["next_attempt_at"],
                    postgresql_where=sa.text("sent_at IS NULL AND failed_at IS NULL"))
    op.create_index("ix_mail_outbox_created", "mail_outbox", ["created_at"])
    # Wakes the senders on commit (a NOTIFY is delivered only if the transaction commits).
    op.execute("""
        CREATE FUNCTION notify_mail_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('mail_outbox_' || TG_TABLE_SCHEMA, '');
            RETURN NULL;
        END $$
    """)
    op.execute("CREATE TRIGGER mail_outbox_notify AFTER INSERT ON mail_outbox "
               "FOR EACH STATEMENT EXECUTE FUNCTION notify_mail_outbox()")


def downgrade() -> None:
    op.drop_table("mail_outbox")
    op.execute("DROP FUNCTION IF EXISTS notify_mail_outbox()")
