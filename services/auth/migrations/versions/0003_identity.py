"""auth: verified email, single-use email tokens (verification, email change, password reset),
and what a session list shows (device label, user agent).

Revision ID: 0003_identity
Revises: 0002_mail_outbox
Create Date: 2026-11-29
"""

from alembic import op

revision = "0003_identity"
down_revision = "0002_mail_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Accounts registered before verification existed stay unverified until a link is used.
    op.execute("ALTER TABLE users ADD COLUMN email_verified_at timestamptz")

    # Only a SHA-256 of each token is kept. A newer token of the same purpose supersedes the
    # older (only the latest link works); a used one keeps its row so reuse is told apart.
    op.execute("""
        CREATE TABLE email_tokens (
            id            uuid PRIMARY KEY,
            user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            purpose       text NOT NULL
                          CHECK (purpose IN ('verify_email', 'change_email', 'reset_password')),
            token_hash    bytea NOT NULL,
            email         text NOT NULL,
            created_at    timestamptz NOT NULL,
            expires_at    timestamptz NOT NULL,
            used_at       timestamptz,
            superseded_at timestamptz,
            CONSTRAINT email_tokens_hash_length CHECK (octet_length(token_hash) = 32)
        )
    """)
    op.execute("CREATE UNIQUE INDEX email_tokens_hash_key ON email_tokens (token_hash)")
    op.execute("CREATE INDEX email_tokens_user_purpose_idx ON email_tokens "
               "(user_id, purpose, created_at)")

    op.execute("ALTER TABLE sessions ADD COLUMN device_label text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE sessions ADD COLUMN user_agent text NOT NULL DEFAULT ''")


def downgrade() -> None:
    op.execute("ALTER TABLE sessions DROP COLUMN user_agent")
    op.execute("ALTER TABLE sessions DROP COLUMN device_label")
    op.execute("DROP TABLE IF EXISTS email_tokens")
    op.execute("ALTER TABLE users DROP COLUMN email_verified_at")
