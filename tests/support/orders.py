"""Helpers for the orders e2e tests, over the public JSON API through Envoy.

    party = await open_restaurant(edge)                  # owner, manager and staff logged in
    item = await add_menu_item(edge, party.manager, price_minor=450, tax_rate_ppm=200_000)
    order = await place_order(edge, party.staff, [line(item)])
    assert error_reason(response) == "VERSION_CONFLICT"
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import httpx

PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Member:
    user_id: str
    email: str
    role: str
    restaurant_id: str
    access_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.access_token}"}

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.access_token}"),)


@dataclass(frozen=True)
class Party:
    restaurant_id: str
    currency: str
    owner: Member
    manager: Member
    staff: Member


def unique_email(label: str) -> str:
    return f"{label}-{secrets.token_hex(6)}@orders.test"


def error_reason(response: httpx.Response) -> str:
    """The ErrorInfo reason of a JSON error body ('' when there is none)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, ValueError):
        return ""
    for detail in body.get("details", []) if isinstance(body, dict) else []:
        if "reason" in detail:
            return detail["reason"]
    return body.get("reason", "") if isinstance(body, dict) else ""


def grpc_reason(error: grpc.aio.AioRpcError) -> str:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


async def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, f"{response.request.method} {response.request.url}: " \
                                        f"{response.status_code} {response.text}"
    return response.json()


async def register_and_login(edge: httpx.AsyncClient, label: str,
                             restaurant_id: str = "") -> tuple[str, str, str]:
    """(user_id, email, access token); the token has `restaurant_id` as context when given."""
    email = unique_email(label)
    registered = await _ok(await edge.post("/api/v1/auth/register", json={
        "email": email, "password": PASSWORD, "full_name": label.title()}))
    login = await _ok(await edge.post("/api/v1/auth/login", json={
        "email": email, "password": PASSWORD, "restaurant_id": restaurant_id}))
    return registered["user"]["id"], email, login["access_token"]


async def login(edge: httpx.AsyncClient, email: str, restaurant_id: str) -> str:
    body = await _ok(await edge.post("/api/v1/auth/login", json={
        "email": email, "password": PASSWORD, "restaurant_id": restaurant_id}))
    return body["access_token"]


async def open_restaurant(edge: httpx.AsyncClient, *, currency: str = "GBP",
                          timezone: str = "Europe/London") -> Party:
    """A new restaurant (through the staff service) with an owner, a manager and a staff member,
    each logged in with the restaurant as context."""
    owner_id, owner_email, token = await register_and_login(edge, "owner")
    restaurant = await _ok(await edge.post(
        "/api/v1/restaurants", headers={"authorization": f"Bearer {token}"},
        json={"name": f"Bistro {secrets.token_hex(3)}", "timezone": timezone,
              "currency": currency}))
    restaurant_id = restaurant["id"]
    owner = Member(owner_id, owner_email, "owner", restaurant_id,
                   await login(edge, owner_email, restaurant_id))
    members = {}
    for role in ("manager", "staff"):
        email = unique_email(role)
        employee = await _ok(await edge.post(
            "/api/v1/employees", headers=owner.headers,
            json={"first_name": role.title(), "last_name": "Tester", "email": email,
                  "access_role": role, "initial_password": PASSWORD}))
        members[role] = Member(employee["user_id"], email, role, restaurant_id,
                               await login(edge, email, restaurant_id))
    return Party(restaurant_id, currency, owner, members["manager"], members["staff"])


async def add_menu_item(edge: httpx.AsyncClient, member: Member, *, price_minor: int = 450,
                        tax_rate_ppm: int = 200_000, name: str | None = None,
                        available: bool = True, category_id: str | None = None) -> dict:
    item: dict[str, Any] = {"name": name or f"Dish {secrets.token_hex(3)}",
                            "price_minor": str(price_minor), "tax_rate_ppm": tax_rate_ppm,
                            "available": available}
    if category_id is not None:
        item["category_id"] = category_id
    return await _ok(await edge.post(f"/api/v1/restaurants/{member.restaurant_id}/menu/items",
                                     headers=member.headers, json=item))


def line(item: dict, quantity: int = 1, **extra: Any) -> dict:
    return {"menu_item_id": item["id"], "quantity": quantity, **extra}


def order_body(lines: list[dict], *, request_id: str | None = None, order_type: str = "TAKEAWAY",
               table_number: str = "", notes: str = "") -> dict:
    return {"request_id": request_id or str(uuid.uuid4()), "order_type": order_type,
            "table_number": table_number, "lines": lines, "notes": notes}


async def place_order(edge: httpx.AsyncClient, member: Member, lines: list[dict], **options) -> dict:
    return await _ok(await edge.post("/api/v1/orders", headers=member.headers,
                                     json=order_body(lines, **options)))


async def move(edge: httpx.AsyncClient, member: Member, order: dict, status: str) -> httpx.Response:
    return await edge.post(f"/api/v1/orders/{order['id']}/status", headers=member.headers,
                           json={"status": status, "version": order["version"]})


def money_of(order: dict) -> tuple[int, int, int]:
    """(subtotal, tax, total) as ints (int64 fields arrive as JSON strings)."""
    return (int(order["subtotal_minor"]), int(order["tax_minor"]), int(order["total_minor"]))


# -- the event stream, read from the orders service directly (internal feed, gRPC) -------------

BEYOND_HEAD = "9" * 18


def feed_stub(stack):
    from posmesh.orders.v1 import orders_pb2_grpc

    return orders_pb2_grpc.OrderFeedServiceStub(grpc.aio.insecure_channel(stack.addr("orders")))


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
