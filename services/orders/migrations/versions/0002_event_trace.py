"""orders: the trace context of the request that wrote each order event

Revision ID: 0002_event_trace
Revises: 0001_orders_schema
Create Date: 2026-11-29

The relay and realtime continue that trace when they publish and deliver the event
(docs/observability.md, "One trace from the till to the kitchen screen").
"""

from alembic import op

revision = "0002_event_trace"
down_revision = "0001_orders_schema"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A W3C traceparent (55 characters) or '' when the write had no trace context.
    op.execute("ALTER TABLE order_events ADD COLUMN traceparent text NOT NULL DEFAULT ''")


def downgrade() -> None:
    op.execute("ALTER TABLE order_events DROP COLUMN traceparent")
