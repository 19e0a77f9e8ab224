"""Every menu, order and realtime route (and the three WebSocket paths) × every kind of caller ×
their own or another restaurant, through Envoy: the exact HTTP status (or close code) and reason,
and no answer ever carries another restaurant's data. The staff routes have the same matrix in
tests/e2e/test_rbac_matrix.py; the expectations follow the same rules: authentication, then the
tenant check, then the role in posmesh/common/permissions.py, then the data (an id of another
restaurant's record is simply not found)."""

from __future__ import annotations

import itertools
import json
import secrets
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio

from posmesh.common import permissions
from posmesh.orders.v1 import orders_pb2
from posmesh.realtime.v1 import realtime_pb2
from tests.support.orders import Party, add_menu_item, error_reason, line, open_restaurant, order_body, place_order
from tests.support.realtime import edge_socket
from tests.support.restaurants import Session, register

pytestmark = pytest.mark.fuzz

SERVICES = [orders_pb2.DESCRIPTOR.services_by_name["MenuService"],
            orders_pb2.DESCRIPTOR.services_by_name["OrderService"],
            realtime_pb2.DESCRIPTOR.services_by_name["RealtimeService"]]
RPCS = [(service.full_name, method.name) for service in SERVICES for method in service.methods]
CALLERS = ("owner", "manager", "staff", "no_context", "no_token")
TARGETS = ("own", "other")
# RPCs whose "other" case names another restaurant's record by id (not the restaurant itself).
ID_BASED = {"GetOrder", "UpdateOrderStatus", "AddOrderItems", "RemoveOrderItem"}


@dataclass
class World:
    a: Party
    a_dish: dict
    a_order: dict
    b: Party
    b_dish: dict
    b_category: dict
    b_order: dict
    b_secrets: tuple[str, ...]
    loner: Session


@pytest_asyncio.fixture(scope="module")
async def world(edge) -> World:
    a, b = await open_restaurant(edge), await open_restaurant(edge)
    a_dish = await add_menu_item(edge, a.manager, price_minor=400)
    secret = secrets.token_hex(4)
    b_category = (await edge.post(f"/api/v1/restaurants/{b.restaurant_id}/menu/categories",
                                  headers=b.manager.headers,
                                  json={"name": f"Hidden Category {secret}"})).json()
    b_dish = await add_menu_item(edge, b.manager, price_minor=1234, name=f"Hidden Dish {secret}",
                                 category_id=b_category["id"])
    b_order = await place_order(edge, b.staff, [line(b_dish)], notes=f"Hidden note {secret}")
    return World(a, a_dish, await place_order(edge, a.staff, [line(a_dish)]), b, b_dish,
                 b_category, b_order, (b_category["name"], b_dish["name"], f"Hidden note {secret}",
                                       b.staff.email, b.owner.email),
                 await register(edge, "loner"))


def expected(service: str, rpc: str, caller: str, target: str) -> tuple[int, str]:
    if caller == "no_token":
        return 401, "TOKEN_INVALID"
    rule = permissions.rule_for(f"/{service}/{rpc}")
    assert rule is not None and rule.access is permissions.Access.RESTAURANT, rpc
    if caller == "no_context":
        return 403, "NO_RESTAURANT_CONTEXT"
    if target == "other" and rpc not in ID_BASED:
        return 403, "TENANT_MISMATCH"
    if caller not in rule.roles:
        return 403, "ROLE_FORBIDDEN"
    if target == "other":
        return 404, "ORDER_NOT_FOUND"
    return 200, ""


async def _own_order(edge, world: World, lines: int = 1) -> dict:
    return await place_order(edge, world.a.staff, [line(world.a_dish)] * lines)


async def _own_category(edge, world: World) -> dict:
    reply = await edge.post(f"/api/v1/restaurants/{world.a.restaurant_id}/menu/categories",
                            headers=world.a.owner.headers, json={"name": f"Cat {secrets.token_hex(4)}"})
    assert reply.status_code == 200, reply.text
    return reply.json()


async def build_request(edge, world: World, rpc: str, target: str) -> dict[str, Any]:
    own = target == "own"
    rid = world.a.restaurant_id if own else world.b.restaurant_id
    menu = f"/api/v1/restaurants/{rid}/menu"
    other_header = {} if own else {"x-restaurant-id": world.b.restaurant_id}
    if rpc == "GetMenu":
        return dict(method="GET", url=menu)
    if rpc == "CreateMenuCategory":
        return dict(method="POST", url=f"{menu}/categories", json={"name": f"New {secrets.token_hex(4)}"})
    if rpc in ("UpdateMenuCategory", "DeleteMenuCategory"):
        category = await _own_category(edge, world) if own else world.b_category
        url = f"{menu}/categories/{category['id']}"
        if rpc == "DeleteMenuCategory":
            return dict(method="DELETE", url=url)
        return dict(method="PATCH", url=url, json={"name": f"Renamed {secrets.token_hex(4)}",
                                                   "version": category["version"]})
    if rpc == "CreateMenuItem":
        return dict(method="POST", url=f"{menu}/items", json={"name": "Intruder", "price_minor": "1"})
    if rpc in ("UpdateMenuItem", "DeleteMenuItem"):
        item = await add_menu_item(edge, world.a.owner) if own else world.b_dish
        url = f"{menu}/items/{item['id']}"
        if rpc == "DeleteMenuItem":
            return dict(method="DELETE", url=url)
        return dict(method="PATCH", url=url, json={"price_minor": "1", "version": item["version"]})
    if rpc == "CreateOrder":
        return dict(method="POST", url="/api/v1/orders", headers=other_header,
                    json=order_body([line(world.a_dish)]))
    if rpc == "ListOrders":
        return dict(method="GET", url="/api/v1/orders", headers=other_header)
    if rpc == "ListActiveOrders":
        return dict(method="GET", url="/api/v1/orders/active", headers=other_header)
    if rpc == "GetOrder":
        return dict(method="GET", url=f"/api/v1/orders/{(world.a_order if own else world.b_order)['id']}")
    order = await _own_order(edge, world, lines=2) if own else world.b_order
    if rpc == "UpdateOrderStatus":
        return dict(method="POST", url=f"/api/v1/orders/{order['id']}/status",
                    json={"status": "SENT_TO_KITCHEN", "version": order["version"]})
    if rpc == "AddOrderItems":
        return dict(method="POST", url=f"/api/v1/orders/{order['id']}/items",
                    json={"lines": [line(world.a_dish)], "version": order["version"]})
    if rpc == "RemoveOrderItem":
        return dict(method="DELETE", url=f"/api/v1/orders/{order['id']}/items/{order['lines'][0]['id']}",
                    params={"version": order["version"]})
    if rpc == "WatchOrders":
        return dict(method="GET", url=f"/api/v1/restaurants/{rid}/orders:watch")
    if rpc == "GetPresence":
        return dict(method="GET", url=f"/api/v1/restaurants/{rid}/presence")
    raise AssertionError(f"no request for {rpc}: add one when adding an RPC")


def caller_session(world: World, caller: str):
    return {"owner": world.a.owner, "manager": world.a.manager, "staff": world.a.staff,
            "no_context": world.loner}.get(caller)


def test_the_matrix_covers_every_menu_order_and_realtime_rpc():
    assert {rpc for _, rpc in RPCS} == {
        "GetMenu", "CreateMenuCategory", "UpdateMenuCategory", "DeleteMenuCategory",
        "CreateMenuItem", "UpdateMenuItem", "DeleteMenuItem", "CreateOrder", "ListOrders",
        "ListActiveOrders", "GetOrder", "UpdateOrderStatus", "AddOrderItems", "RemoveOrderItem",
        "WatchOrders", "GetPresence"}


@pytest.mark.parametrize("service, rpc, caller, target",
                         [(s, r, c, t) for (s, r), c, t in itertools.product(RPCS, CALLERS, TARGETS)])
async def test_access(edge: httpx.AsyncClient, world: World, service, rpc, caller, target):
    request = await build_request(edge, world, rpc, target)
    session = caller_session(world, caller)
    request["headers"] = {**request.get("headers", {}), **(session.headers if session else {})}
    response = await edge.send(edge.build_request(**request), stream=True)
    try:
        streaming = rpc == "WatchOrders" and response.status_code == 200
        text = "" if streaming else (await response.aread()).decode()
    finally:
        await response.aclose()
    status, reason = expected(service, rpc, caller, target)
    got_reason = "" if streaming else error_reason(httpx.Response(response.status_code, text=text))
    assert (response.status_code, got_reason) == (status, reason), text[:300]
    for secret in world.b_secrets:
        assert secret not in text, f"{rpc} as {caller} leaked another restaurant's data"
    if status == 200 and not streaming:
        body = json.loads(text)
        for order in body.get("orders", [body] if "ticket_number" in body else []):
            assert order["restaurant_id"] == world.a.restaurant_id


WS_CALLERS = ("owner", "manager", "staff", "no_context", "no_token")


def ws_expected(kind: str, caller: str, target: str) -> tuple[str, str, int]:
    if caller == "no_token":
        return "auth_error", "TOKEN_INVALID", 4001
    if caller == "no_context":
        return "auth_success", "", 0  # user-scoped: the user's own events, no restaurant's
    if target == "other":
        return "auth_error", "TENANT_MISMATCH", 4003
    if kind == "management" and caller == "staff":
        return "auth_error", "ROLE_FORBIDDEN", 4003
    return "auth_success", "", 0


@pytest.mark.parametrize("kind, caller, target",
                         list(itertools.product(("pos", "kitchen", "management"), WS_CALLERS, TARGETS)))
async def test_socket_access(stack, world: World, kind, caller, target):
    rid = world.a.restaurant_id if target == "own" else world.b.restaurant_id
    session = caller_session(world, caller)
    sock = await edge_socket(stack, kind, rid)
    token = session.access_token if session else ""
    user_id = session.user_id if session else world.a.staff.user_id
    reply = await sock.authenticate(token, user_id)
    kind_, code, close = ws_expected(kind, caller, target)
    assert (reply["type"], reply["data"].get("code", "")) == (kind_, code), reply
    for secret in world.b_secrets:
        assert secret not in str(sock.received)
    if close:
        assert (await sock.closed())[0] == close
    elif caller == "no_context":
        assert reply["data"]["scope"] == "user" and reply["data"]["restaurant_id"] is None
        await sock.close()
    else:
        assert reply["data"]["scope"] == "restaurant"
        assert reply["data"]["restaurant_id"] == world.a.restaurant_id
        await sock.close()


async def test_nothing_in_the_other_restaurant_changed(edge, world: World):
    menu = (await edge.get(f"/api/v1/restaurants/{world.b.restaurant_id}/menu",
                           headers=world.b.manager.headers)).json()
    assert [(i["id"], i["price_minor"], i["version"]) for i in menu["items"]] == [
        (world.b_dish["id"], "1234", 1)]
    assert [(c["id"], c["name"]) for c in menu["categories"]] == [
        (world.b_category["id"], world.b_category["name"])]
    orders = (await edge.get("/api/v1/orders", headers=world.b.owner.headers)).json()["orders"]
    assert [(o["id"], o["status"], o["version"], len(o["lines"])) for o in orders] == [
        (world.b_order["id"], "OPEN", 1, 1)]
