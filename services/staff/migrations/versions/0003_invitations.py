"""Employees are invited, not created with an account: a state, no user until the invitation is
accepted, and the invitations themselves.

Revision ID: 0003_invitations
Revises: 0002_mail_outbox
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0003_invitations"
down_revision = "0002_mail_outbox"
branch_labels = None
depends_on = None

UUID = pg.UUID(as_uuid=True)
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("employees", sa.Column("state", sa.Text, nullable=False,
                                         server_default="active"))
    op.execute("UPDATE employees SET state = CASE WHEN active THEN 'active' ELSE 'deactivated' END")
    op.alter_column("employees", "state", server_default=None)
    op.alter_column("employees", "user_id", nullable=True)
    op.create_check_constraint("ck_employees_state", "employees",
                               "state IN ('invited', 'active', 'deactivated')")
    # `active` stays (it is what every membership check reads) and follows the state.
    op.create_check_constraint("ck_employees_active_state", "employees",
                               "active = (state = 'active')")
    op.create_check_constraint("ck_employees_active_user", "employees",
                               "state <> 'active' OR user_id IS NOT NULL")
    op.drop_constraint("ck_employees_deactivate_time", "employees")
    op.create_check_constraint("ck_employees_deactivate_time", "employees",
                               "(state = 'deactivated') = (deactivate_time IS NOT NULL)")
    # One live record per address in a restaurant (invited or active).
    op.create_index("uq_employees_restaurant_email", "employees", ["restaurant_id", "email"],
                    unique=True, postgresql_where=sa.text("state <> 'deactivated'"))

    op.create_table(
        "invitations",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("restaurant_id", UUID, sa.ForeignKey("restaurants.id"), nullable=False),
        sa.Column("employee_id", UUID, sa.ForeignKey("employees.id"), nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        # Only a SHA-256 of the current link's token; a resend replaces it.
        sa.Column("token_hash", sa.LargeBinary, nullable=False),
        sa.Column("invited_by", UUID, nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("expire_time", TIMESTAMP, nullable=False),
        sa.Column("send_time", TIMESTAMP, nullable=False),
        sa.Column("send_count", sa.Integer, nullable=False, server_default="1"),
        sa.Column("accept_time", TIMESTAMP),
        sa.Column("accepted_by", UUID),
        sa.Column("revoke_time", TIMESTAMP),
        sa.CheckConstraint("octet_length(token_hash) = 32", name="ck_invitations_hash_length"),
        sa.CheckConstraint("accept_time IS NULL OR revoke_time IS NULL",
                           name="ck_invitations_one_outcome"),
    )
    op.create_index("uq_invitations_token_hash", "invitations", ["token_hash"], unique=True)
    op.create_index("ix_invitations_restaurant_page", "invitations",
                    ["restaurant_id", "create_time", "id"])
    op.create_index("ix_invitations_pending_email", "invitations", ["email"],
                    postgresql_where=sa.text("accept_time IS NULL AND revoke_time IS NULL"))
    op.create_index("uq_invitations_open_per_employee", "invitations", ["employee_id"],
                    unique=True,
                    postgresql_where=sa.text("accept_time IS NULL AND revoke_time IS NULL"))


def downgrade() -> None:
    op.drop_table("invitations")
    op.drop_index("uq_employees_restaurant_email", "employees")
    op.drop_constraint("ck_employees_deactivate_time", "employees")
    op.create_check_constraint("ck_employees_deactivate_time", "employees",
                               "active = (deactivate_time IS NULL)")
    for name in ("ck_employees_active_user", "ck_employees_active_state", "ck_employees_state"):
        op.drop_constraint(name, "employees")
    op.execute("DELETE FROM employees WHERE user_id IS NULL")
    op.alter_column("employees", "user_id", nullable=False)
    op.drop_column("employees", "state")
