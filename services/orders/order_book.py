"""Order use cases: the rules of domain.py applied through the store, one transaction each.

Every change writes the order and its event in the same transaction (the outbox). Writes take
the order row lock (SELECT ... FOR UPDATE) and compare the client's version under it, so of two
concurrent changes based on the same version exactly one succeeds and the other gets
VERSION_CONFLICT having changed nothing.
"""

from __future__ import annotations

import uuid
import zoneinfo
from datetime import datetime, timezone
from typing import Callable

from posmesh.common import security_events
from posmesh.common.approvals import Approval, approval_invalid, manager_approval_required
from posmesh.common.errors import Unavailable
from posmesh.common.permissions import CANCEL_SENT_ORDER
from services.orders import paging, wire
from services.orders.domain import (
    ORDER_CREATED,
    ORDER_STATUS_CHANGED,
    ORDER_UPDATED,
    Actor,
    EventDraft,
    LineInput,
    Order,
    OrderDraft,
    OrderFilter,
    OrderStatus,
    Page,
    check_approval,
    check_device_may_move,
    check_version,
    fingerprint,
    idempotency_mismatch,
    needs_manager,
    new_order,
    order_not_found,
    price_lines,
    with_line_removed,
    with_lines_added,
    with_status,
)
from services.orders.restaurants import RestaurantDirectory
from services.orders.store import IdempotencyRecord, ListedOrder, OrdersStore

LIST_DEFAULT, LIST_MAX = 50, 200
ACTIVE_DEFAULT, ACTIVE_MAX = 100, 500


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class _RequestIdTaken(Exception):
    """Another transaction created the order for this request_id first."""


class OrderBook:
    def __init__(self, store: OrdersStore, restaurants: RestaurantDirectory,
                 clock: Callable[[], datetime] = utc_now,
                 verify_approval: Callable[[str], Approval] | None = None) -> None:
        self._store = store
        self._restaurants = restaurants
        self._clock = clock
        self._verify_approval = verify_approval

    # -- create --------------------------------------------------------------------------------

    async def create(self, actor: Actor, bearer_token: str, draft: OrderDraft) -> Order:
        # Creating is idempotent (request_id), so a create that lost its database connection
        # (possibly after committing) is simply tried once more.
        try:
            return await self._create(actor, bearer_token, draft)
        except Unavailable as error:
            if error.reason != "DATABASE_UNAVAILABLE":
                raise
            return await self._create(actor, bearer_token, draft)

    async def _create(self, actor: Actor, bearer_token: str, draft: OrderDraft) -> Order:
        digest = fingerprint(draft)
        # A retry usually finds its order here, without writing anything.
        existing = await self._store.order_by_request(actor.restaurant_id, draft.request_id)
        if existing is not None:
            return self._replay(existing, digest, draft.request_id)
        profile = await self._restaurants.profile(actor.restaurant_id, bearer_token)
        menu = (await self._store.menu_items(actor.restaurant_id,
                                             [line.menu_item_id for line in draft.lines])
                if draft.lines else {})
        lines = price_lines(draft.lines, menu, profile.currency)
        now = self._clock()
        business_date = now.astimezone(zoneinfo.ZoneInfo(profile.timezone)).date()
        try:
            async with self._store.transaction("create_order") as tx:
                ticket = await tx.next_ticket_number(actor.restaurant_id, business_date)
                order = new_order(order_id=str(uuid.uuid4()), actor=actor, draft=draft, lines=lines,
                                  currency=profile.currency, ticket_number=ticket,
                                  business_date=business_date, now=now)
                if not await tx.insert_order(order, digest):
                    # Rolls back, giving the ticket number back.
                    raise _RequestIdTaken()
                await tx.append_event(actor.restaurant_id, EventDraft(ORDER_CREATED, order=order))
            return order
        except _RequestIdTaken:
            # A concurrent request with the same key won; answer as its retry.
            existing = await self._store.order_by_request(actor.restaurant_id, draft.request_id)
            assert existing is not None, "the unique index reported a conflict with no row"
            return self._replay(existing, digest, draft.request_id)

    @staticmethod
    def _replay(existing: IdempotencyRecord, digest: bytes, request_id: str) -> Order:
        if existing.fingerprint != digest:
            raise idempotency_mismatch(request_id, existing.order_id)
        # The order as it is now: a late retry sees the changes made since.
        return wire.decode_order(existing.document)

    # -- changes -------------------------------------------------------------------------------

    async def update_status(self, actor: Actor, order_id: str, target: OrderStatus,
                            expected_version: int, approval: str = "") -> Order:
        """`approval`: a manager's approval (posmesh.common.approvals) when the change needs
        one; it is checked before the order is locked and spent in the change's transaction."""
        check_device_may_move(actor, target)
        approved = self._approval(approval, actor, order_id) if approval else None
        async with self._store.transaction("update_order_status") as tx:
            order = await self._locked(tx, actor, order_id)
            check_version(order, expected_version)
            updated = with_status(order, target, self._clock())
            approver = ""
            if needs_manager(order, target, actor):
                if approved is None:
                    raise manager_approval_required(CANCEL_SENT_ORDER)
                if not await tx.spend_approval(approved, order_id):
                    raise approval_invalid("the approval was used already")
                approver = approved.approver
            await tx.save_order(updated)
            await tx.append_event(actor.restaurant_id, EventDraft(
                ORDER_STATUS_CHANGED, order=updated, previous_status=order.status,
                actor_user_id=actor.user_id, device_id=actor.device_id, approved_by=approver))
        if approver:
            security_events.record(
                "MANAGER_OVERRIDE", severity=security_events.INFO, user_id=actor.user_id,
                restaurant_id=actor.restaurant_id, approver=approver, action=CANCEL_SENT_ORDER,
                order_id=order_id, device_id=actor.device_id, approval_id=approved.jti,
                previous_status=order.status.value)
        return updated

    def _approval(self, token: str, actor: Actor, order_id: str) -> Approval:
        if self._verify_approval is None:
            raise approval_invalid("approvals are not accepted here")
        approved = self._verify_approval(token)
        check_approval(approved, action=CANCEL_SENT_ORDER, order_id=order_id, actor=actor)
        return approved

    async def add_items(self, actor: Actor, order_id: str, inputs: tuple[LineInput, ...],
                        expected_version: int) -> Order:
        menu = await self._store.menu_items(actor.restaurant_id,
                                            [line.menu_item_id for line in inputs])
        async with self._store.transaction("add_order_items") as tx:
            order = await self._locked(tx, actor, order_id)
            check_version(order, expected_version)
            # Lines are priced in the order's currency, whatever the restaurant uses since.
            updated = with_lines_added(order, price_lines(inputs, menu, order.currency),
                                       self._clock())
            await tx.save_order(updated)
            await tx.append_event(actor.restaurant_id, EventDraft(ORDER_UPDATED, order=updated))
        return updated

    async def remove_item(self, actor: Actor, order_id: str, line_id: str,
                          expected_version: int) -> Order:
        async with self._store.transaction("remove_order_item") as tx:
            order = await self._locked(tx, actor, order_id)
            check_version(order, expected_version)
            updated = with_line_removed(order, line_id, self._clock())
            await tx.save_order(updated)
            await tx.append_event(actor.restaurant_id, EventDraft(ORDER_UPDATED, order=updated))
        return updated

    @staticmethod
    async def _locked(tx, actor: Actor, order_id: str) -> Order:
        order = await tx.lock_order(actor.restaurant_id, order_id)
        if order is None:
            raise order_not_found(order_id)
        return order

    # -- reads (documents: serialised Order messages) ------------------------------------------

    async def get(self, actor: Actor, order_id: str) -> bytes:
        document = await self._store.order_document(actor.restaurant_id, order_id)
        if document is None:
            raise order_not_found(order_id)
        return document

    async def list_active(self, actor: Actor, page_size: int, page_token: str) -> Page:
        size = paging.page_size(page_size, default=ACTIVE_DEFAULT, maximum=ACTIVE_MAX)
        scope = f"{actor.restaurant_id}|active"
        rows = await self._store.list_active(actor.restaurant_id, paging.decode(page_token, scope),
                                             size + 1)
        return _page(rows, size, scope)

    async def list_orders(self, actor: Actor, filters: OrderFilter, page_size: int,
                          page_token: str) -> Page:
        size = paging.page_size(page_size, default=LIST_DEFAULT, maximum=LIST_MAX)
        scope = "|".join([
            actor.restaurant_id, "list", ",".join(sorted(filters.statuses)),
            filters.created_after.isoformat() if filters.created_after else "",
            filters.created_before.isoformat() if filters.created_before else ""])
        rows = await self._store.list_orders(actor.restaurant_id, filters,
                                             paging.decode(page_token, scope), size + 1)
        return _page(rows, size, scope)


def _page(rows: list[ListedOrder], size: int, scope: str) -> Page:
    """`rows` holds up to size + 1 rows; the extra one only says that another page exists."""
    shown = rows[:size]
    token = paging.encode(shown[-1].created_at, shown[-1].id, scope) if len(rows) > size else ""
    return Page([row.document for row in shown], token)
