"""Employees without an email address: people who work on tills with a PIN only.

Revision ID: 0005_floor_employees
Revises: 0004_invitation_sends
Create Date: 2026-11-30
"""

from alembic import op

revision = "0005_floor_employees"
down_revision = "0004_invitation_sends"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The unique index on (restaurant_id, email) keeps addresses unique; NULLs never collide.
    op.alter_column("employees", "email", nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM employees WHERE email IS NULL")
    op.alter_column("employees", "email", nullable=False)
