"""auth: users, memberships, sessions, refresh tokens, security events

Revision ID: 0001_auth_initial
Revises:
Create Date: 2025-01-01
"""

from alembic import op

revision = "0001_auth_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Emails are stored normalised (the CHECK makes sure of it), so the unique index on `email`
    # is a unique index on the normalised email: two racing registrations cannot both insert.
    op.execute("""
        CREATE TABLE users (
            id                  uuid PRIMARY KEY,
            email               text NOT NULL,
            full_name           text NOT NULL,
            password_hash       text,
            password_changed_at timestamptz,
            created_at          timestamptz NOT NULL,
            updated_at          timestamptz NOT NULL,
            CONSTRAINT users_email_normalised CHECK (email = lower(btrim(email)) AND email <> '')
        )
    """)
    op.execute("CREATE UNIQUE INDEX users_email_key ON users (email)")

    op.execute("""
        CREATE TABLE memberships (
            user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            restaurant_id   uuid NOT NULL,
            restaurant_name text NOT NULL DEFAULT '',
            role            text NOT NULL CHECK (role IN ('owner', 'manager', 'staff')),
            created_at      timestamptz NOT NULL,
            updated_at      timestamptz NOT NULL,
            PRIMARY KEY (user_id, restaurant_id)
        )
    """)
    op.execute("CREATE INDEX memberships_restaurant_idx ON memberships (restaurant_id)")

    # One row per signed-in device; the session is bound to one restaurant (or none).
    op.execute("""
        CREATE TABLE sessions (
            id                  uuid PRIMARY KEY,
            user_id             uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            restaurant_id       uuid,
            created_at          timestamptz NOT NULL,
            last_refreshed_at   timestamptz NOT NULL,
            expires_at          timestamptz NOT NULL,
            absolute_expires_at timestamptz NOT NULL,
            revoked_at          timestamptz,
            revoke_reason       text,
            client_ip           text NOT NULL DEFAULT ''
        )
    """)
    op.execute("CREATE INDEX sessions_live_by_user_idx ON sessions (user_id, restaurant_id) "
               "WHERE revoked_at IS NULL")
    op.execute("CREATE INDEX sessions_revoked_at_idx ON sessions (revoked_at) "
               "WHERE revoked_at IS NOT NULL")
    op.execute("CREATE INDEX sessions_absolute_expiry_idx ON sessions (absolute_expires_at)")

    # Only a SHA-256 of each refresh token. A rotated token keeps its row (reuse detection) and,
    # for the grace window only, its successor pair sealed under a key derived from itself.
    op.execute("""
        CREATE TABLE refresh_tokens (
            id               uuid PRIMARY KEY,
            session_id       uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            token_hash       bytea NOT NULL,
            created_at       timestamptz NOT NULL,
            rotated_at       timestamptz,
            successor_id     uuid,
            grace_until      timestamptz,
            sealed_successor bytea,
            CONSTRAINT refresh_tokens_hash_length CHECK (octet_length(token_hash) = 32)
        )
    """)
    op.execute("CREATE UNIQUE INDEX refresh_tokens_hash_key ON refresh_tokens (token_hash)")
    op.execute("CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id)")
    op.execute("CREATE INDEX refresh_tokens_sealed_idx ON refresh_tokens (grace_until) "
               "WHERE sealed_successor IS NOT NULL")

    # Written by every service through auth's RecordSecurityEvent (ids are text: a forged or
    # malformed id is exactly what an event may need to record).
    op.execute("""
        CREATE TABLE security_events (
            id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            occurred_at   timestamptz NOT NULL DEFAULT now(),
            type          text NOT NULL,
            severity      text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
            source        text NOT NULL DEFAULT '',
            ip            text NOT NULL DEFAULT '',
            user_id       text NOT NULL DEFAULT '',
            restaurant_id text NOT NULL DEFAULT '',
            details       jsonb NOT NULL DEFAULT '{}'::jsonb
        )
    """)
    op.execute("CREATE INDEX security_events_time_idx ON security_events (occurred_at)")
    op.execute("CREATE INDEX security_events_type_time_idx ON security_events (type, occurred_at)")
    op.execute("CREATE INDEX security_events_user_time_idx ON security_events (user_id, occurred_at) "
               "WHERE user_id <> ''")


def downgrade() -> None:
    for table in ("security_events", "refresh_tokens", "sessions", "memberships", "users"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
