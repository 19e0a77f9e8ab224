"""Manager approvals spent on order changes (each is single-use).

Revision ID: 0003_spent_approvals
Revises: 0002_event_trace
Create Date: 2026-11-30
"""

from alembic import op

revision = "0003_spent_approvals"
down_revision = "0002_event_trace"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written in the transaction of the change the approval allowed: the approval is spent if and
    # only if the change commits, and a second use finds its row.
    op.execute("""
        CREATE TABLE spent_approvals (
            id            uuid PRIMARY KEY,
            restaurant_id uuid NOT NULL,
            order_id      uuid NOT NULL,
            approver      uuid NOT NULL,
            action        text NOT NULL,
            spent_at      timestamptz NOT NULL
        )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS spent_approvals")
