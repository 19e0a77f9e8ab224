"""Restaurants, employees and the history of employee changes.

Revision ID: 0001
Revises:
Create Date: 2025-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UUID = pg.UUID(as_uuid=True)
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "restaurants",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("timezone", sa.Text, nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False),
        sa.Column("address_line1", sa.Text),
        sa.Column("address_line2", sa.Text),
        sa.Column("address_city", sa.Text),
        sa.Column("address_region", sa.Text),
        sa.Column("address_postal_code", sa.Text),
        sa.Column("address_country", sa.CHAR(2)),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("create_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.Column("update_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 120", name="ck_restaurants_name_length"),
        sa.CheckConstraint("version >= 1", name="ck_restaurants_version"),
    )
    op.create_table(
        "employees",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("restaurant_id", UUID, sa.ForeignKey("restaurants.id"), nullable=False),
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("first_name", sa.Text, nullable=False),
        sa.Column("last_name", sa.Text),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("phone", sa.Text),
        sa.Column("access_role", sa.Text, nullable=False),
        sa.Column("job_title", sa.Text),
        sa.Column("hourly_rate_minor", sa.BigInteger),
        sa.Column("start_date", sa.Date),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("create_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.Column("update_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.Column("deactivate_time", TIMESTAMP),
        sa.UniqueConstraint("restaurant_id", "user_id", name="uq_employees_restaurant_user"),
        sa.CheckConstraint("access_role IN ('owner', 'manager', 'staff')",
                           name="ck_employees_access_role"),
        sa.CheckConstraint("hourly_rate_minor >= 0", name="ck_employees_hourly_rate"),
        sa.CheckConstraint("version >= 1", name="ck_employees_version"),
        sa.CheckConstraint("active = (deactivate_time IS NULL)", name="ck_employees_deactivate_time"),
    )
    # Keyset pagination of one restaurant's employees.
    op.create_index("ix_employees_restaurant_page", "employees",
                    ["restaurant_id", "create_time", "id"])
    # "Which restaurants does this user work at?" (ListRestaurants, GetRestaurant).
    op.create_index("ix_employees_active_user", "employees", ["user_id"],
                    postgresql_where=sa.text("active"))
    op.create_table(
        "employee_changes",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("restaurant_id", UUID, nullable=False),
        sa.Column("employee_id", UUID, sa.ForeignKey("employees.id"), nullable=False),
        sa.Column("actor_user_id", UUID, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("changes", pg.JSONB, nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_employee_changes_employee", "employee_changes",
                    ["restaurant_id", "employee_id", "create_time"])


def downgrade() -> None:
    op.drop_table("employee_changes")
    op.drop_table("employees")
    op.drop_table("restaurants")
