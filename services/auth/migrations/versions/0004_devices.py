"""auth: paired devices, their pairing codes, device and staff sessions, PINs, device policies.

Revision ID: 0004_devices
Revises: 0003_identity
Create Date: 2026-11-30
"""

from alembic import op

revision = "0004_devices"
down_revision = "0003_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Floor accounts (CreateFloorAccount): people who work on tills with a PIN only have no email.
    op.execute("ALTER TABLE users ALTER COLUMN email DROP NOT NULL")
    op.execute("ALTER TABLE users DROP CONSTRAINT users_email_normalised")
    op.execute("ALTER TABLE users ADD CONSTRAINT users_email_normalised "
               "CHECK (email IS NULL OR (email = lower(btrim(email)) AND email <> ''))")

    op.execute("""
        CREATE TABLE devices (
            id            uuid PRIMARY KEY,
            restaurant_id uuid NOT NULL,
            device_type   text NOT NULL
                          CHECK (device_type IN ('TILL', 'KITCHEN_SCREEN', 'MANAGER_TABLET')),
            name          text NOT NULL,
            created_at    timestamptz NOT NULL,
            last_used_at  timestamptz NOT NULL,
            revoked_at    timestamptz
        )
    """)
    op.execute("CREATE INDEX devices_live_by_restaurant_idx ON devices (restaurant_id, created_at) "
               "WHERE revoked_at IS NULL")

    # Only a SHA-256 of each code; a redeemed code keeps its row so reuse is told apart.
    op.execute("""
        CREATE TABLE pairing_codes (
            code_hash     bytea PRIMARY KEY CHECK (octet_length(code_hash) = 32),
            restaurant_id uuid NOT NULL,
            device_type   text NOT NULL,
            name          text NOT NULL,
            created_by    uuid NOT NULL,
            created_at    timestamptz NOT NULL,
            expires_at    timestamptz NOT NULL,
            used_at       timestamptz,
            device_id     uuid REFERENCES devices (id)
        )
    """)
    op.execute("CREATE INDEX pairing_codes_expiry_idx ON pairing_codes (expires_at)")

    # A session is a person's (user), a device's own credential (device), or a person signed in
    # on a device with their PIN (staff).
    op.execute("ALTER TABLE sessions ALTER COLUMN user_id DROP NOT NULL")
    op.execute("ALTER TABLE sessions ADD COLUMN device_id uuid REFERENCES devices (id)")
    op.execute("ALTER TABLE sessions ADD COLUMN kind text NOT NULL DEFAULT 'user'")
    # A staff session's expiry slides by this much on each refresh (the restaurant's idle lock
    # when it started); NULL for the other kinds.
    op.execute("ALTER TABLE sessions ADD COLUMN idle_lock_seconds integer")
    op.execute("""
        ALTER TABLE sessions ADD CONSTRAINT sessions_kind_shape CHECK (
            (kind = 'user' AND user_id IS NOT NULL AND device_id IS NULL)
            OR (kind = 'device' AND user_id IS NULL AND device_id IS NOT NULL)
            OR (kind = 'staff' AND user_id IS NOT NULL AND device_id IS NOT NULL))
    """)
    op.execute("CREATE INDEX sessions_live_by_device_idx ON sessions (device_id) "
               "WHERE revoked_at IS NULL AND device_id IS NOT NULL")
    # What the idle lock's sweep reads every second.
    op.execute("CREATE INDEX sessions_live_staff_expiry_idx ON sessions (expires_at) "
               "WHERE kind = 'staff' AND revoked_at IS NULL")

    # A person's PIN in one restaurant (a keyed hash, see services/auth/pins.py), and the
    # one-time setup code a manager issued them (its SHA-256), while it is unused.
    op.execute("""
        CREATE TABLE pins (
            user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            restaurant_id    uuid NOT NULL,
            pin_hash         text,
            setup_code_hash  bytea,
            setup_expires_at timestamptz,
            updated_at       timestamptz NOT NULL,
            PRIMARY KEY (user_id, restaurant_id)
        )
    """)

    op.execute("""
        CREATE TABLE device_policies (
            restaurant_id           uuid PRIMARY KEY,
            staff_idle_lock_seconds integer NOT NULL,
            updated_at              timestamptz NOT NULL
        )
    """)


def downgrade() -> None:
    op.execute("DELETE FROM sessions WHERE kind <> 'user'")
    op.execute("ALTER TABLE sessions DROP CONSTRAINT sessions_kind_shape")
    op.execute("ALTER TABLE sessions DROP COLUMN idle_lock_seconds")
    op.execute("ALTER TABLE sessions DROP COLUMN kind")
    op.execute("ALTER TABLE sessions DROP COLUMN device_id")
    op.execute("ALTER TABLE sessions ALTER COLUMN user_id SET NOT NULL")
    for table in ("device_policies", "pins", "pairing_codes", "devices"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DELETE FROM users WHERE email IS NULL")
    op.execute("ALTER TABLE users ALTER COLUMN email SET NOT NULL")
