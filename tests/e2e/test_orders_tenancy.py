"""No call, with any token, reads or changes another restaurant's menu, orders or events."""

from __future__ import annotations

import grpc
import pytest_asyncio

from posmesh.orders.v1 import orders_pb2 as pb
from posmesh.orders.v1 import orders_pb2_grpc
from tests.support.errors import grpc_reason
from tests.support.orders import (
    add_menu_item,
    error_reason,
    line,
    open_restaurant,
    order_body,
    place_order,
)


@pytest_asyncio.fixture(scope="module")
async def two(stack, edge):
    """Restaurant A with an order, and restaurant B whose people try to reach it."""
    a, b = await open_restaurant(edge), await open_restaurant(edge)
    item = await add_menu_item(edge, a.manager)
    order = await place_order(edge, a.staff, [line(item)])
    return a, b, item, order


async def test_another_restaurants_order_is_not_found(edge, two):
    a, b, _, order = two
    for member in (b.owner, b.manager, b.staff):
        got = await edge.get(f"/api/v1/orders/{order['id']}", headers=member.headers)
        moved = await edge.post(f"/api/v1/orders/{order['id']}/status", headers=member.headers,
                                json={"status": "CANCELLED", "version": 1})
        added = await edge.post(f"/api/v1/orders/{order['id']}/items", headers=member.headers,
                                json={"version": 1, "lines": [{"menu_item_id": order["lines"][0]["menu_item_id"],
                                                                "quantity": 1}]})
        for reply in (got, moved, added):
            assert (reply.status_code, error_reason(reply)) == (404, "ORDER_NOT_FOUND"), reply.text
    still = (await edge.get(f"/api/v1/orders/{order['id']}", headers=a.staff.headers)).json()
    assert (still["status"], still["version"]) == ("OPEN", 1)


async def test_lists_show_only_the_tokens_restaurant(edge, two):
    a, b, _, order = two
    for path in ("/api/v1/orders", "/api/v1/orders/active"):
        theirs = (await edge.get(path, headers=b.owner.headers)).json()["orders"]
        assert order["id"] not in {o["id"] for o in theirs}
        ours = (await edge.get(path, headers=a.staff.headers)).json()["orders"]
        assert order["id"] in {o["id"] for o in ours}


async def test_a_path_restaurant_other_than_the_tokens_is_tenant_mismatch(edge, two):
    a, b, item, _ = two
    attempts = [
        edge.get(f"/api/v1/restaurants/{a.restaurant_id}/menu", headers=b.owner.headers),
        edge.post(f"/api/v1/restaurants/{a.restaurant_id}/menu/items", headers=b.owner.headers,
                  json={"name": "Intruder", "price_minor": "1"}),
        edge.patch(f"/api/v1/restaurants/{a.restaurant_id}/menu/items/{item['id']}",
                   headers=b.owner.headers, json={"price_minor": "1", "version": 1}),
        edge.delete(f"/api/v1/restaurants/{a.restaurant_id}/menu/items/{item['id']}",
                    headers=b.owner.headers),
        edge.get(f"/api/v1/restaurants/{a.restaurant_id}/orders:watch", headers=b.owner.headers),
    ]
    for attempt in attempts:
        reply = await attempt
        assert (reply.status_code, error_reason(reply)) == (403, "TENANT_MISMATCH"), reply.text
        assert a.restaurant_id in reply.json()["message"]


async def test_a_body_or_header_restaurant_other_than_the_tokens_is_tenant_mismatch(edge, two):
    a, b, item, _ = two
    body = order_body([line(item)])
    body["restaurant_id"] = a.restaurant_id
    in_body = await edge.post("/api/v1/orders", headers=b.staff.headers, json=body)
    in_header = await edge.get("/api/v1/orders/active",
                               headers={**b.staff.headers, "x-restaurant-id": a.restaurant_id})
    for reply in (in_body, in_header):
        assert (reply.status_code, error_reason(reply)) == (403, "TENANT_MISMATCH"), reply.text


async def test_another_restaurants_menu_item_cannot_be_changed_through_ones_own_path(edge, two):
    a, b, item, _ = two
    patched = await edge.patch(f"/api/v1/restaurants/{b.restaurant_id}/menu/items/{item['id']}",
                               headers=b.owner.headers, json={"price_minor": "1", "version": 1})
    deleted = await edge.delete(f"/api/v1/restaurants/{b.restaurant_id}/menu/items/{item['id']}",
                                headers=b.owner.headers)
    for reply in (patched, deleted):
        assert (reply.status_code, error_reason(reply)) == (404, "MENU_ITEM_NOT_FOUND")
    menu = (await edge.get(f"/api/v1/restaurants/{a.restaurant_id}/menu", headers=a.staff.headers)).json()
    assert int(next(i for i in menu["items"] if i["id"] == item["id"])["price_minor"]) == int(item["price_minor"])


async def test_staff_read_the_menu_but_only_managers_and_owners_edit_it(edge, two):
    a, _, item, _ = two
    read = await edge.get(f"/api/v1/restaurants/{a.restaurant_id}/menu", headers=a.staff.headers)
    assert read.status_code == 200
    edit = await edge.patch(f"/api/v1/restaurants/{a.restaurant_id}/menu/items/{item['id']}",
                            headers=a.staff.headers, json={"price_minor": "1", "version": 1})
    create = await edge.post(f"/api/v1/restaurants/{a.restaurant_id}/menu/items",
                             headers=a.staff.headers, json={"name": "X", "price_minor": "1"})
    for reply in (edit, create):
        assert (reply.status_code, error_reason(reply)) == (403, "ROLE_FORBIDDEN")


async def test_the_internal_feed_is_not_reachable_through_the_edge(stack, two):
    a, _, _, _ = two
    credentials = grpc.ssl_channel_credentials(stack.ca_file.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{stack.settings.edge_port}", credentials) as channel:
        stub = orders_pb2_grpc.OrderFeedServiceStub(channel)
        for metadata in ((), a.owner.grpc_metadata):
            call = stub.WatchRestaurantOrders(pb.WatchRestaurantOrdersRequest(
                restaurant_id=a.restaurant_id, after_event_id="0"), metadata=metadata, timeout=5)
            try:
                async for _ in call:
                    raise AssertionError("the edge streamed the internal feed")
            except grpc.aio.AioRpcError as error:
                assert error.code() in (grpc.StatusCode.UNAUTHENTICATED,
                                        grpc.StatusCode.PERMISSION_DENIED,
                                        grpc.StatusCode.UNIMPLEMENTED), error


async def test_a_user_stream_of_another_restaurant_over_grpc_is_refused(stack, two):
    a, b, _, _ = two
    async with stack.channel("orders") as channel:
        stub = orders_pb2_grpc.OrderServiceStub(channel)
        call = stub.WatchOrders(pb.WatchOrdersRequest(restaurant_id=a.restaurant_id),
                                metadata=b.owner.grpc_metadata, timeout=5)
        try:
            async for _ in call:
                raise AssertionError("streamed another restaurant's events")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert grpc_reason(error) == "TENANT_MISMATCH"
