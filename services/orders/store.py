"""The orders service's SQL, on plain asyncpg (the `orders` schema).

Why asyncpg and not SQLAlchemy here: get, list-active and create are the hot paths, and
SQLAlchemy's execution layer costs 0.3–0.9 ms of CPU per statement on this machine (see
platform-facts). Statements are hand-written and prepared once per connection by asyncpg.
The SQLAlchemy engine is still made by main.py for Alembic and the health check.

Orders are kept as their wire document (`document`, a serialised posmesh.orders.v1.Order) next
to the columns that are filtered on; events as serialised OrderEvent payloads.

Every statement is scoped by restaurant_id. Database failures become UNAVAILABLE (retryable)
with a reason, never INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import AsyncIterator, Sequence

import asyncpg
from opentelemetry import trace

from posmesh.common import telemetry
from posmesh.common.database_errors import database_error
from posmesh.common.errors import AlreadyExists, Unavailable
from posmesh.common.metrics import queue_waiters
from posmesh.common.settings import Settings
from services.orders import wire
from services.orders.domain import (
    EventDraft,
    MenuCategory,
    MenuItem,
    Order,
    OrderFilter,
)

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("posmesh.orders.store")

SCHEMA = "orders"
# Final statuses, spelled as in the partial index `orders_active_ix` so the planner uses it.
_ACTIVE_PREDICATE = "status NOT IN ('PAID', 'CANCELLED')"
RELAY_LOCK_KEY = "posmesh-orders-relay"
NOTIFY_CHANNEL = "orders_events"



def dsn(settings: Settings) -> str:
    """DATABASE_URL in libpq form (asyncpg's), whichever form it was given in."""
    url = settings.database_url
    if not url:
        raise RuntimeError("DATABASE_URL is not set (`posmesh run` sets it for the services it starts)")
    for prefix in ("postgresql+asyncpg://", "postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    raise RuntimeError("DATABASE_URL must be a postgresql:// URL")


def server_settings(settings: Settings, application: str) -> dict[str, str]:
    return {
        "application_name": application,
        "search_path": f"{SCHEMA},public",
        "statement_timeout": str(settings.db_statement_timeout_ms),
        # A transaction left open by a crashed request must not hold locks for ever.
        "idle_in_transaction_session_timeout": str(settings.db_statement_timeout_ms * 4),
    }


async def _init_connection(connection: asyncpg.Connection) -> None:
    # Ids travel as canonical strings end to end; no uuid.UUID round trips.
    await connection.set_type_codec("uuid", encoder=str, decoder=str, schema="pg_catalog",
                                    format="text")


async def _no_reset(connection: asyncpg.Connection) -> None:
    # asyncpg rolls back an open transaction itself; we never leave session state (no SET, no
    # LISTEN, no session advisory locks on pooled connections), so skip the RESET ALL round trip.
    return None


def translate(exc: BaseException) -> Exception | None:
    """The ApiError for a database failure, or None when it is not one."""
    if isinstance(exc, asyncio.TimeoutError):  # no pooled connection came free in time
        return Unavailable("DATABASE_BUSY", "no database connection was free in time; retry shortly",
                           retryable="true")
    if isinstance(exc, (OSError, EOFError)):  # the server's socket went away mid-read
        return Unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry shortly",
                           retryable="true")
    return database_error(exc)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    restaurant_id: str
    sequence: int
    payload: bytes
    created_at: datetime
    # The W3C trace context of the request that wrote the event ('' when it had none).
    traceparent: str = ""


@dataclass(frozen=True, slots=True)
class ListedOrder:
    created_at: datetime
    id: str
    document: bytes


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    order_id: str
    fingerprint: bytes
    document: bytes


class OrdersStore:
    def __init__(self, pool: asyncpg.Pool, acquire_timeout: float, steady_size: int) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout
        self._steady_size = steady_size

    @classmethod
    async def open(cls, settings: Settings) -> "OrdersStore":
        pool = await asyncpg.create_pool(
            dsn(settings),
            min_size=min(2, settings.db_pool_size),
            # The same budget the platform gives a service's SQLAlchemy pool.
            max_size=settings.db_pool_size + settings.db_max_overflow,
            max_inactive_connection_lifetime=min(300.0, float(settings.db_pool_recycle)),
            init=_init_connection,
            reset=_no_reset,
            timeout=5,
            command_timeout=settings.db_statement_timeout_ms / 1000 + 5,
            statement_cache_size=256,
            server_settings=server_settings(settings, "posmesh-orders"),
        )
        return cls(pool, settings.db_pool_timeout, settings.db_pool_size)

    async def close(self) -> None:
        await asyncio.wait_for(self._pool.close(), 10)

    async def ping(self) -> None:
        """A round trip on a pooled connection (the platform's health check)."""
        async with self._pool.acquire(timeout=self._acquire_timeout) as connection:
            await connection.fetchval("SELECT 1")

    def pool_stats(self) -> dict[str, int]:
        """This pool in the platform's terms: `size` is the steady pool (DB_POOL_SIZE),
        connections opened beyond it count as overflow (up to DB_MAX_OVERFLOW)."""
        opened, idle = self._pool.get_size(), self._pool.get_idle_size()
        return {"size": self._steady_size, "checked_out": opened - idle, "checked_in": idle,
                "overflow": max(0, opened - self._steady_size),
                "max_overflow": self._pool.get_max_size() - self._steady_size}

    def pool_waiting(self) -> int:
        """Requests waiting for a pooled connection now (asyncpg hands them out from a queue)."""
        return queue_waiters(getattr(self._pool, "_queue", None))

    # -- plumbing ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self, operation: str) -> AsyncIterator[asyncpg.Connection]:
        with _tracer.start_as_current_span(f"orders.store.{operation}",
                                           kind=trace.SpanKind.CLIENT,
                                           attributes={"db.system": "postgresql"}):
            try:
                async with self._pool.acquire(timeout=self._acquire_timeout) as connection:
                    yield connection
            except Exception as exc:
                translated = translate(exc)
                if translated is None:
                    raise
                log.warning("database failure in %s: %r", operation, exc)
                if translated.reason == "DATABASE_UNAVAILABLE":
                    # PostgreSQL restarted or the network broke: every idle pooled connection is
                    # likely dead too. Replace them on their next use instead of failing one
                    # request per connection.
                    await self._pool.expire_connections()
                raise translated from exc

    async def _read(self, operation: str, sql: str, *args, fetch: str = "fetch"):
        """A read-only statement, retried once when the connection turned out to be dead
        (e.g. after PostgreSQL restarted, every pooled connection fails once)."""
        for attempt in (1, 2):
            try:
                async with self._connection(operation) as connection:
                    return await getattr(connection, fetch)(sql, *args)
            except Unavailable as error:
                if attempt == 2 or error.reason != "DATABASE_UNAVAILABLE":
                    raise
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def transaction(self, operation: str) -> AsyncIterator["Transaction"]:
        async with self._connection(operation) as connection:
            async with connection.transaction():
                yield Transaction(connection)

    # -- orders: reads -------------------------------------------------------------------------

    async def order_document(self, restaurant_id: str, order_id: str) -> bytes | None:
        return await self._read(
            "get_order", "SELECT document FROM orders WHERE restaurant_id = $1 AND id = $2",
            restaurant_id, order_id, fetch="fetchval")

    async def order_by_request(self, restaurant_id: str, request_id: str) -> IdempotencyRecord | None:
        row = await self._read(
            "order_by_request",
            "SELECT id, request_fingerprint, document FROM orders "
            "WHERE restaurant_id = $1 AND request_id = $2",
            restaurant_id, request_id, fetch="fetchrow")
        return IdempotencyRecord(row[0], row[1], row[2]) if row else None

    async def list_active(self, restaurant_id: str, after: tuple[datetime, str] | None,
                          limit: int) -> list[ListedOrder]:
        if after is None:
            rows = await self._read(
                "list_active",
                f"SELECT created_at, id, document FROM orders WHERE restaurant_id = $1 "
                f"AND {_ACTIVE_PREDICATE} ORDER BY created_at, id LIMIT $2",
                restaurant_id, limit)
        else:
            rows = await self._read(
                "list_active",
                f"SELECT created_at, id, document FROM orders WHERE restaurant_id = $1 "
                f"AND {_ACTIVE_PREDICATE} AND (created_at, id) > ($2, $3::uuid) "
                f"ORDER BY created_at, id LIMIT $4",
                restaurant_id, after[0], after[1], limit)
        return [ListedOrder(row[0], row[1], row[2]) for row in rows]

    async def list_orders(self, restaurant_id: str, filters: OrderFilter,
                          before: tuple[datetime, str] | None, limit: int) -> list[ListedOrder]:
        """Newest first; `before` is the keyset position of the previous page's last order."""
        clauses, args = ["restaurant_id = $1"], [restaurant_id]

        def arg(value) -> str:
            args.append(value)
            return f"${len(args)}"

        if filters.statuses:
            clauses.append(f"status = ANY({arg(sorted(s.value for s in filters.statuses))}::text[])")
        if filters.created_after is not None:
            clauses.append(f"created_at >= {arg(filters.created_after)}")
        if filters.created_before is not None:
            clauses.append(f"created_at < {arg(filters.created_before)}")
        if before is not None:
            clauses.append(f"(created_at, id) < ({arg(before[0])}, {arg(before[1])}::uuid)")
        sql = (f"SELECT created_at, id, document FROM orders WHERE {' AND '.join(clauses)} "
               f"ORDER BY created_at DESC, id DESC LIMIT {arg(limit)}")
        rows = await self._read("list_orders", sql, *args)
        return [ListedOrder(row[0], row[1], row[2]) for row in rows]

    # -- menu: reads ---------------------------------------------------------------------------

    async def menu(self, restaurant_id: str, include_unavailable: bool
                   ) -> tuple[list[MenuCategory], list[MenuItem]]:
        categories = await self._read(
            "menu_categories",
            "SELECT id, restaurant_id, name, position, version FROM menu_categories "
            "WHERE restaurant_id = $1 ORDER BY position, lower(name), id", restaurant_id)
        items = await self._read(
            "menu_items",
            f"SELECT {_ITEM_COLUMNS} FROM menu_items i "
            "LEFT JOIN menu_categories c ON c.id = i.category_id "
            "WHERE i.restaurant_id = $1 AND i.deleted_at IS NULL AND (i.available OR $2) "
            "ORDER BY c.position NULLS LAST, lower(i.name), i.id",
            restaurant_id, include_unavailable)
        return [_category(row) for row in categories], [_item(row) for row in items]

    async def menu_items(self, restaurant_id: str, item_ids: Sequence[str]) -> dict[str, MenuItem]:
        """Items on the menu now (not deleted), by id."""
        rows = await self._read(
            "menu_items_by_id",
            f"SELECT {_ITEM_COLUMNS} FROM menu_items i "
            "WHERE i.restaurant_id = $1 AND i.id = ANY($2::uuid[]) AND i.deleted_at IS NULL",
            restaurant_id, list(set(item_ids)))
        return {row["id"]: _item(row) for row in rows}

    # -- events: reads -------------------------------------------------------------------------

    async def event_head(self, restaurant_id: str) -> int:
        """The restaurant's newest event sequence (0 before its first event)."""
        value = await self._read(
            "event_head", "SELECT last_sequence FROM event_sequences WHERE restaurant_id = $1",
            restaurant_id, fetch="fetchval")
        return int(value or 0)

    async def oldest_event(self, restaurant_id: str) -> int | None:
        """The oldest sequence still kept (older ones were pruned), None when none are kept."""
        return await self._read(
            "oldest_event", "SELECT min(sequence) FROM order_events WHERE restaurant_id = $1",
            restaurant_id, fetch="fetchval")

    async def events_after(self, restaurant_id: str, after: int, limit: int,
                           through: int | None = None) -> list[StoredEvent]:
        rows = await self._read(
            "events_after",
            "SELECT sequence, payload, created_at, traceparent FROM order_events "
            "WHERE restaurant_id = $1 AND sequence > $2 AND sequence <= $3 "
            "ORDER BY sequence LIMIT $4",
            restaurant_id, after, through if through is not None else 2**62, limit)
        return [StoredEvent(restaurant_id, row[0], row[1], row[2], row[3]) for row in rows]

    # -- relay ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def relay_round(self) -> AsyncIterator["RelayRound | None"]:
        """A transaction holding the relay lock, or None when another process holds it.

        The lock is transaction-scoped, so one relay publishes at a time across every orders
        process, in sequence order, and a crashed relay releases it with its connection.
        """
        async with self.transaction("relay_round") as tx:
            locked = await tx.connection.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtext($1))", RELAY_LOCK_KEY)
            yield RelayRound(tx.connection) if locked else None

    async def outbox_backlog(self) -> tuple[float, int]:
        """(seconds since the oldest unpublished event was committed, how many are waiting):
        (0, 0) when the relay is up to date. The partial index on unpublished events keeps
        this cheap while the backlog is small."""
        row = await self._read(
            "outbox_backlog",
            "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0), "
            "count(*) FROM order_events WHERE published_at IS NULL", fetch="fetchrow")
        return max(0.0, float(row[0])), int(row[1])

    async def prune_events(self, older_than: datetime, batch: int) -> int:
        """Deletes published events older than `older_than`, at most `batch` of them."""
        async with self._connection("prune_events") as connection:
            status = await connection.execute(
                "DELETE FROM order_events WHERE ctid = ANY(ARRAY("
                "SELECT ctid FROM order_events WHERE published_at IS NOT NULL "
                "AND created_at < $1 LIMIT $2))", older_than, batch)
        return int(status.split()[-1])


class Transaction:
    """Statements that run inside one transaction (see OrdersStore.transaction)."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    # -- orders --------------------------------------------------------------------------------

    async def next_ticket_number(self, restaurant_id: str, business_date: date) -> int:
        # The upsert locks the counter row until commit: numbers are unique, in commit order, and
        # a rolled-back order gives its number back.
        return await self.connection.fetchval(
            "INSERT INTO ticket_counters AS t (restaurant_id, business_date, last_number) "
            "VALUES ($1, $2, 1) ON CONFLICT (restaurant_id, business_date) "
            "DO UPDATE SET last_number = t.last_number + 1 RETURNING last_number",
            restaurant_id, business_date)

    async def insert_order(self, order: Order, fingerprint: bytes) -> bool:
        """False when the restaurant already has an order with this request_id."""
        inserted = await self.connection.fetchval(
            "INSERT INTO orders (id, restaurant_id, request_id, request_fingerprint, "
            "ticket_number, business_date, status, version, created_at, updated_at, document) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
            "ON CONFLICT (restaurant_id, request_id) DO NOTHING RETURNING id",
            order.id, order.restaurant_id, order.request_id, fingerprint, order.ticket_number,
            order.business_date, order.status.value, order.version, order.create_time,
            order.update_time, wire.encode_order(order))
        return inserted is not None

    async def lock_order(self, restaurant_id: str, order_id: str) -> Order | None:
        document = await self.connection.fetchval(
            "SELECT document FROM orders WHERE restaurant_id = $1 AND id = $2 FOR UPDATE",
            restaurant_id, order_id)
        return wire.decode_order(document) if document is not None else None

    async def save_order(self, order: Order) -> None:
        await self.connection.execute(
            "UPDATE orders SET status = $3, version = $4, updated_at = $5, document = $6 "
            "WHERE restaurant_id = $1 AND id = $2",
            order.restaurant_id, order.id, order.status.value, order.version, order.update_time,
            wire.encode_order(order))

    # -- events --------------------------------------------------------------------------------

    async def spend_approval(self, approval, order_id: str) -> bool:
        """Records a manager's approval as used; False when it was used already."""
        spent = await self.connection.fetchval(
            "INSERT INTO spent_approvals (id, restaurant_id, order_id, approver, action, spent_at)"
            " VALUES ($1, $2, $3, $4, $5, clock_timestamp()) ON CONFLICT (id) DO NOTHING"
            " RETURNING 1", approval.jti, approval.restaurant_id, order_id, approval.approver,
            approval.action)
        return spent is not None

    async def append_event(self, restaurant_id: str, draft: EventDraft) -> int:
        """Writes the event with the restaurant's next sequence number; returns the number.

        The counter row stays locked until commit, so sequence numbers have no gaps and commit
        in order: a reader that sees event n has every event before it. Call this last in a
        transaction to hold the lock briefly. A trigger NOTIFYs the relay on commit. The
        current trace context is stored with the event: its publication and delivery join the
        request's trace.
        """
        order_id = draft.order.id if draft.order is not None else None
        return await self.connection.fetchval(
            "WITH next AS ("
            " INSERT INTO event_sequences AS s (restaurant_id, last_sequence) VALUES ($1, 1)"
            " ON CONFLICT (restaurant_id) DO UPDATE SET last_sequence = s.last_sequence + 1"
            " RETURNING last_sequence) "
            "INSERT INTO order_events (restaurant_id, sequence, type, order_id, payload, created_at,"
            " traceparent) "
            "SELECT $1, last_sequence, $2, $3, $4, clock_timestamp(), $5 FROM next "
            "RETURNING sequence",
            restaurant_id, draft.type, order_id, wire.event_payload(restaurant_id, draft),
            telemetry.current_traceparent())

    # -- menu ----------------------------------------------------------------------------------

    async def category_in_restaurant(self, restaurant_id: str, category_id: str) -> bool:
        # KEY SHARE: a concurrent delete of the category waits until this transaction ends.
        found = await self.connection.fetchval(
            "SELECT 1 FROM menu_categories WHERE restaurant_id = $1 AND id = $2 FOR KEY SHARE",
            restaurant_id, category_id)
        return found is not None

    async def insert_category(self, category: MenuCategory, now: datetime) -> None:
        try:
            await self.connection.execute(
                "INSERT INTO menu_categories (id, restaurant_id, name, position, version, "
                "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
                category.id, category.restaurant_id, category.name, category.position,
                category.version, now)
        except asyncpg.exceptions.UniqueViolationError:
            raise _category_exists(category.name) from None

    async def lock_category(self, restaurant_id: str, category_id: str) -> MenuCategory | None:
        row = await self.connection.fetchrow(
            "SELECT id, restaurant_id, name, position, version FROM menu_categories "
            "WHERE restaurant_id = $1 AND id = $2 FOR UPDATE", restaurant_id, category_id)
        return _category(row) if row else None

    async def save_category(self, category: MenuCategory, now: datetime) -> None:
        try:
            await self.connection.execute(
                "UPDATE menu_categories SET name = $3, position = $4, version = $5, updated_at = $6 "
                "WHERE restaurant_id = $1 AND id = $2",
                category.restaurant_id, category.id, category.name, category.position,
                category.version, now)
        except asyncpg.exceptions.UniqueViolationError:
            raise _category_exists(category.name) from None

    async def delete_category(self, restaurant_id: str, category_id: str, now: datetime) -> None:
        # Its items stay on the menu, uncategorised; their versions move so stale edits conflict.
        await self.connection.execute(
            "UPDATE menu_items SET category_id = NULL, version = version + 1, updated_at = $3 "
            "WHERE restaurant_id = $1 AND category_id = $2", restaurant_id, category_id, now)
        await self.connection.execute(
            "DELETE FROM menu_categories WHERE restaurant_id = $1 AND id = $2",
            restaurant_id, category_id)

    async def insert_menu_item(self, item: MenuItem, now: datetime) -> None:
        await self.connection.execute(
            "INSERT INTO menu_items (id, restaurant_id, category_id, name, description, "
            "price_minor, currency, tax_rate_ppm, available, version, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
            item.id, item.restaurant_id, item.category_id, item.name, item.description,
            item.price_minor, item.currency, item.tax_rate_ppm, item.available, item.version, now)

    async def lock_menu_item(self, restaurant_id: str, item_id: str) -> MenuItem | None:
        row = await self.connection.fetchrow(
            f"SELECT {_ITEM_COLUMNS} FROM menu_items i WHERE i.restaurant_id = $1 AND i.id = $2 "
            "AND i.deleted_at IS NULL FOR UPDATE", restaurant_id, item_id)
        return _item(row) if row else None

    async def save_menu_item(self, item: MenuItem, now: datetime) -> None:
        await self.connection.execute(
            "UPDATE menu_items SET category_id = $3, name = $4, description = $5, "
            "price_minor = $6, currency = $7, tax_rate_ppm = $8, available = $9, version = $10, "
            "updated_at = $11 WHERE restaurant_id = $1 AND id = $2",
            item.restaurant_id, item.id, item.category_id, item.name, item.description,
            item.price_minor, item.currency, item.tax_rate_ppm, item.available, item.version, now)

    async def delete_menu_item(self, restaurant_id: str, item_id: str, now: datetime) -> None:
        # Soft: orders keep their snapshot, reports keep the item.
        await self.connection.execute(
            "UPDATE menu_items SET deleted_at = $3, updated_at = $3, version = version + 1 "
            "WHERE restaurant_id = $1 AND id = $2", restaurant_id, item_id, now)


class RelayRound:
    """The relay's statements, inside a transaction that holds the relay lock."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def unpublished(self, limit: int) -> list[StoredEvent]:
        rows = await self._connection.fetch(
            "SELECT restaurant_id, sequence, payload, created_at, traceparent FROM order_events "
            "WHERE published_at IS NULL ORDER BY restaurant_id, sequence LIMIT $1", limit)
        return [StoredEvent(row[0], row[1], row[2], row[3], row[4]) for row in rows]

    async def mark_published(self, events: Sequence[StoredEvent]) -> None:
        await self._connection.execute(
            "UPDATE order_events e SET published_at = clock_timestamp() "
            "FROM unnest($1::uuid[], $2::bigint[]) AS p(restaurant_id, sequence) "
            "WHERE e.restaurant_id = p.restaurant_id AND e.sequence = p.sequence",
            [event.restaurant_id for event in events], [event.sequence for event in events])


_ITEM_COLUMNS = ("i.id, i.restaurant_id, i.category_id, i.name, i.description, i.price_minor, "
                 "i.currency, i.tax_rate_ppm, i.available, i.version")


def _item(row) -> MenuItem:
    return MenuItem(id=row["id"], restaurant_id=row["restaurant_id"], category_id=row["category_id"],
                    name=row["name"], description=row["description"],
                    price_minor=row["price_minor"], currency=row["currency"],
                    tax_rate_ppm=row["tax_rate_ppm"], available=row["available"],
                    version=row["version"])


def _category(row) -> MenuCategory:
    return MenuCategory(id=row["id"], restaurant_id=row["restaurant_id"], name=row["name"],
                        position=row["position"], version=row["version"])


def _category_exists(name: str) -> AlreadyExists:
    return AlreadyExists("CATEGORY_EXISTS", f"category.name: the menu already has a category "
                         f"named {name!r}", field="category.name")
