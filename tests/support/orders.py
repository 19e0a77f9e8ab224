"""Helpers for the orders e2e tests, over the public JSON API through Envoy.

    party = await open_restaurant(edge)                  # owner, manager and staff logged in
    item = await add_menu_item(edge, party.manager, price_minor=450, tax_rate_ppm=200_000)
    order = await place_order(edge, party.staff, [line(item)])
    assert error_reason(response) == "VERSION_CONFLICT"
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.restaurants import (
    Session,
    add_employee,
    create_restaurant_as_owner,
    error_reason,
)

# A restaurant member's logged-in session (the name other suites import).
Member = Session

__all__ = ["Member", "Party", "Session", "error_reason", "open_restaurant", "add_menu_item",
           "line", "order_body", "place_order", "move", "money_of", "feed_stub", "event_head",
           "read_events"]


@dataclass(frozen=True)
class Party:
    """A restaurant and three of its people, each logged in with the restaurant as context."""

    restaurant_id: str
    currency: str
    owner: Session
    manager: Session
    staff: Session


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, f"{response.request.method} {response.request.url}: " \
                                        f"{response.status_code} {response.text}"
    return response.json()


async def open_restaurant(edge: httpx.AsyncClient, *, currency: str = "GBP",
                          timezone: str = "Europe/London") -> Party:
    """A new restaurant (through the staff service) with an owner, a manager and a staff member."""
    owner, restaurant = await create_restaurant_as_owner(edge, currency=currency, timezone=timezone)
    manager = await add_employee(edge, owner, "manager")
    staff = await add_employee(edge, owner, "staff")
    return Party(restaurant["id"], currency, owner, manager, staff)


async def add_menu_item(edge: httpx.AsyncClient, member: Session, *, price_minor: int = 450,
                        tax_rate_ppm: int = 200_000, name: str | None = None,
                        available: bool = True, category_id: str | None = None) -> dict:
    item: dict[str, Any] = {"name": name or f"Dish {secrets.token_hex(3)}",
                            "price_minor": str(price_minor), "tax_rate_ppm": tax_rate_ppm,
                            "available": available}
    if category_id is not None:
        item["category_id"] = category_id
    return _ok(await edge.post(f"/api/v1/restaurants/{member.restaurant_id}/menu/items",
                               headers=member.headers, json=item))


def line(item: dict, quantity: int = 1, **extra: Any) -> dict:
    return {"menu_item_id": item["id"], "quantity": quantity, **extra}


def order_body(lines: list[dict], *, request_id: str | None = None, order_type: str = "TAKEAWAY",
               table_number: str = "", notes: str = "") -> dict:
    return {"request_id": request_id or str(uuid.uuid4()), "order_type": order_type,
            "table_number": table_number, "lines": lines, "notes": notes}


async def place_order(edge: httpx.AsyncClient, member: Session, lines: list[dict], **options) -> dict:
    return _ok(await edge.post("/api/v1/orders", headers=member.headers,
                               json=order_body(lines, **options)))


async def move(edge: httpx.AsyncClient, member: Session, order: dict, status: str) -> httpx.Response:
    return await edge.post(f"/api/v1/orders/{order['id']}/status", headers=member.headers,
                           json={"status": status, "version": order["version"]})


def money_of(order: dict) -> tuple[int, int, int]:
    """(subtotal, tax, total) as ints (int64 fields arrive as JSON strings)."""
    return (int(order["subtotal_minor"]), int(order["tax_minor"]), int(order["total_minor"]))


# -- the event stream, read from the orders service directly (internal feed, gRPC) -------------

BEYOND_HEAD = "9" * 18


def feed_stub(stack):
    from posmesh.orders.v1 import orders_pb2_grpc

    return orders_pb2_grpc.OrderFeedServiceStub(stack.channel("orders", as_identity="realtime"))


async def event_head(stack, restaurant_id: str) -> int:
    """The restaurant's newest event id (a watch beyond it answers resync_required with it)."""
    from posmesh.orders.v1 import orders_pb2 as pb

    call = feed_stub(stack).WatchRestaurantOrders(
        pb.WatchRestaurantOrdersRequest(restaurant_id=restaurant_id, after_event_id=BEYOND_HEAD),
        timeout=10)
    async for message in call:
        assert message.resync_required
        return int(message.last_event_id)
    raise AssertionError("no answer")


async def read_events(stack, restaurant_id: str, after: int = 0) -> list[dict]:
    """Every event after `after` up to the newest now, as JSON-like dicts (proto field names)."""
    from google.protobuf import json_format

    from posmesh.orders.v1 import orders_pb2 as pb

    head = await event_head(stack, restaurant_id)
    events: list[dict] = []
    if head <= after:
        return events
    call = feed_stub(stack).WatchRestaurantOrders(
        pb.WatchRestaurantOrdersRequest(restaurant_id=restaurant_id, after_event_id=str(after)),
        timeout=30)
    async for message in call:
        if message.HasField("event"):
            events.append(json_format.MessageToDict(message.event, preserving_proto_field_name=True))
            if message.event.sequence >= head:
                call.cancel()
                break
    return events
