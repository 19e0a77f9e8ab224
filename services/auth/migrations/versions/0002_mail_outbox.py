"""auth: the mail outbox (verification, password reset and email change mails)

Revision ID: 0002_mail_outbox
Revises: 0001_auth_initial
Create Date: 2026-11-29

The same table as posmesh.common.mail.outbox.mail_outbox (a test compares them).
"""

from alembic import op

revision = "0002_mail_outbox"
down_revision = "0001_auth_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written in the transaction that causes the mail; the sender claims, sends and marks rows.
    op.execute("""
        CREATE TABLE mail_outbox (
            id              uuid PRIMARY KEY,
            to_address      text NOT NULL,
            subject         text NOT NULL,
            text_body       text NOT NULL,
            html_body       text,
            template        text,
            created_at      timestamptz NOT NULL DEFAULT now(),
            attempts        integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            sent_at         timestamptz,
            failed_at       timestamptz,
            last_error      text
        )
    """)
    # The sender's claim: pending mails by due time.
    op.execute("CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at) "
               "WHERE sent_at IS NULL AND failed_at IS NULL")
    op.execute("CREATE INDEX mail_outbox_created_idx ON mail_outbox (created_at)")
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
    op.execute("DROP TABLE IF EXISTS mail_outbox")
    op.execute("DROP FUNCTION IF EXISTS notify_mail_outbox()")
