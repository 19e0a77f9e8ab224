"""Menus, orders, counters and the transactional outbox of order events.

Revision ID: 0001_orders_schema
Revises:
Create Date: 2025-11-21
"""

from alembic import op

revision = "0001_orders_schema"
down_revision = None
branch_labels = None
depends_on = None

# Unqualified names land in the `orders` schema (the migration runner's search_path).
UPGRADE = """
CREATE TABLE menu_categories (
    id            uuid PRIMARY KEY,
    restaurant_id uuid NOT NULL,
    name          text NOT NULL,
    position      integer NOT NULL DEFAULT 0,
    version       integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX menu_categories_name_uq ON menu_categories (restaurant_id, lower(name));

CREATE TABLE menu_items (
    id            uuid PRIMARY KEY,
    restaurant_id uuid NOT NULL,
    category_id   uuid REFERENCES menu_categories (id) ON DELETE SET NULL,
    name          text NOT NULL,
    description   text NOT NULL DEFAULT '',
    price_minor   bigint NOT NULL CHECK (price_minor >= 0),
    currency      char(3) NOT NULL,
    tax_rate_ppm  integer NOT NULL CHECK (tax_rate_ppm BETWEEN 0 AND 1000000),
    available     boolean NOT NULL DEFAULT true,
    version       integer NOT NULL DEFAULT 1,
    deleted_at    timestamptz,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX menu_items_restaurant_ix ON menu_items (restaurant_id) WHERE deleted_at IS NULL;
CREATE INDEX menu_items_category_ix ON menu_items (category_id) WHERE category_id IS NOT NULL;

-- An order is kept as its wire document (posmesh.orders.v1.Order) plus the columns queries use.
CREATE TABLE orders (
    id                  uuid PRIMARY KEY,
    restaurant_id       uuid NOT NULL,
    request_id          text NOT NULL,
    request_fingerprint bytea NOT NULL,
    ticket_number       integer NOT NULL CHECK (ticket_number > 0),
    business_date       date NOT NULL,
    status              text NOT NULL CHECK (status IN ('OPEN', 'SENT_TO_KITCHEN', 'PREPARING',
                                                        'READY', 'SERVED', 'PAID', 'CANCELLED')),
    version             integer NOT NULL CHECK (version > 0),
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    document            bytea NOT NULL
);
-- Idempotency: one order per client request id per restaurant, also under concurrent retries.
CREATE UNIQUE INDEX orders_request_uq ON orders (restaurant_id, request_id);
CREATE UNIQUE INDEX orders_ticket_uq ON orders (restaurant_id, business_date, ticket_number);
CREATE INDEX orders_recent_ix ON orders (restaurant_id, created_at DESC, id DESC);
CREATE INDEX orders_active_ix ON orders (restaurant_id, created_at, id)
    WHERE status NOT IN ('PAID', 'CANCELLED');

CREATE TABLE ticket_counters (
    restaurant_id uuid NOT NULL,
    business_date date NOT NULL,
    last_number   integer NOT NULL,
    PRIMARY KEY (restaurant_id, business_date)
);

CREATE TABLE event_sequences (
    restaurant_id uuid PRIMARY KEY,
    last_sequence bigint NOT NULL
);

-- The transactional outbox: written in the same transaction as the change it records.
CREATE TABLE order_events (
    restaurant_id uuid NOT NULL,
    sequence      bigint NOT NULL,
    type          text NOT NULL,
    order_id      uuid,
    payload       bytea NOT NULL,
    created_at    timestamptz NOT NULL,
    published_at  timestamptz,
    PRIMARY KEY (restaurant_id, sequence)
);
CREATE INDEX order_events_unpublished_ix ON order_events (restaurant_id, sequence)
    WHERE published_at IS NULL;
CREATE INDEX order_events_created_ix ON order_events (created_at);

-- Wakes the relay (LISTEN orders_events) when an event commits.
CREATE FUNCTION notify_order_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orders_events', NEW.restaurant_id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER order_events_notify AFTER INSERT ON order_events
    FOR EACH ROW EXECUTE FUNCTION notify_order_event();
"""

DOWNGRADE = """
DROP TABLE order_events;
DROP FUNCTION notify_order_event();
DROP TABLE event_sequences;
DROP TABLE ticket_counters;
DROP TABLE orders;
DROP TABLE menu_items;
DROP TABLE menu_categories;
"""


def _statements(script: str) -> list[str]:
    """Statements one by one (the asyncpg driver prepares each; it cannot take a script).
    A function body between $$ markers stays whole."""
    statements, current, in_body = [], [], False
    for line in script.strip().splitlines():
        current.append(line)
        in_body ^= line.count("$$") % 2 == 1
        if not in_body and line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";"))
            current = []
    return [statement for statement in statements if statement]


def upgrade() -> None:
    for statement in _statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in _statements(DOWNGRADE):
        op.execute(statement)
