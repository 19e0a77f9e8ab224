"""Every invitation mail, per address and restaurant: what the send limits count.

Revision ID: 0004_invitation_sends
Revises: 0003_invitations
Create Date: 2026-12-01

The limits were counted on one invitation (its send_count, in its first day only), so a resend a
day later, or deactivating and undeleting an invited employee (a new invitation, send_count 1),
started over. A row per mail, kept across invitations, lets them count every mail a restaurant
sent an address in the last 24 hours.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0004_invitation_sends"
down_revision = "0003_invitations"
branch_labels = None
depends_on = None

UUID = pg.UUID(as_uuid=True)
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "invitation_sends",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("restaurant_id", UUID, sa.ForeignKey("restaurants.id"), nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("invitation_id", UUID, sa.ForeignKey("invitations.id"), nullable=False),
        sa.Column("send_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_invitation_sends_address", "invitation_sends",
                    ["restaurant_id", "email", "send_time"])
    # The mails already sent. Only the first (create_time) and the last (send_time) times are
    # known; the ones between are put at the last, so none leaves the window earlier than it did.
    op.execute("""
        INSERT INTO invitation_sends (restaurant_id, email, invitation_id, send_time)
        SELECT i.restaurant_id, i.email, i.id,
               CASE WHEN n = 1 THEN i.create_time ELSE i.send_time END
        FROM invitations i CROSS JOIN LATERAL generate_series(1, i.send_count) AS n
    """)


def downgrade() -> None:
    op.drop_table("invitation_sends")
