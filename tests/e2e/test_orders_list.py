"""Reading orders through the edge: get, active list, filtered list with cursor pages."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest_asyncio

from tests.support.orders import add_menu_item, error_reason, line, move, open_restaurant, place_order


@pytest_asyncio.fixture(scope="module")
async def shop(stack, edge):
    """A restaurant with 7 orders: 3 open, 1 in the kitchen, 2 paid, 1 cancelled."""
    party = await open_restaurant(edge)
    item = await add_menu_item(edge, party.manager)
    orders = [await place_order(edge, party.staff, [line(item)]) for _ in range(7)]
    for order in orders[3:6]:
        order.update((await move(edge, party.staff, order, "SENT_TO_KITCHEN")).json())
    for order in orders[4:6]:
        for status in ("PREPARING", "READY", "SERVED", "PAID"):
            order.update((await move(edge, party.staff, order, status)).json())
    orders[6].update((await move(edge, party.staff, orders[6], "CANCELLED")).json())
    return party, orders


async def pages(edge, member, path: str, params: dict, key: str = "orders") -> list[list[dict]]:
    params = dict(params)
    collected, token = [], params.pop("page_token", "")
    while True:
        reply = await edge.get(path, headers=member.headers, params={**params, "page_token": token})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        collected.append(body[key])
        token = body["next_page_token"]
        if not token:
            return collected


async def test_get_returns_the_order(edge, shop):
    party, orders = shop
    reply = await edge.get(f"/api/v1/orders/{orders[0]['id']}", headers=party.staff.headers)
    assert reply.status_code == 200
    assert reply.json() == orders[0]


async def test_get_of_an_unknown_or_malformed_id(edge, shop):
    party, _ = shop
    unknown = await edge.get("/api/v1/orders/6f1e7a3c-0000-4000-8000-000000000000",
                             headers=party.staff.headers)
    malformed = await edge.get("/api/v1/orders/12345", headers=party.staff.headers)
    assert (unknown.status_code, error_reason(unknown)) == (404, "ORDER_NOT_FOUND")
    assert (malformed.status_code, error_reason(malformed)) == (400, "INVALID_ID")


async def test_active_orders_are_the_unpaid_uncancelled_ones_oldest_first(edge, shop):
    party, orders = shop
    reply = await edge.get("/api/v1/orders/active", headers=party.staff.headers)
    assert reply.status_code == 200
    active = reply.json()["orders"]
    assert [o["id"] for o in active] == [o["id"] for o in orders[:4]]
    assert reply.json()["next_page_token"] == ""


async def test_active_orders_page_without_gaps_or_repeats(edge, shop):
    party, orders = shop
    got = await pages(edge, party.staff, "/api/v1/orders/active", {"page_size": 1})
    assert [len(page) for page in got] == [1, 1, 1, 1]
    assert [page[0]["id"] for page in got] == [o["id"] for o in orders[:4]]


async def test_list_is_newest_first_and_pages_are_stable_under_inserts(edge, shop):
    party, orders = shop
    first = await edge.get("/api/v1/orders", headers=party.staff.headers, params={"page_size": 3})
    body = first.json()
    assert [o["id"] for o in body["orders"]] == [o["id"] for o in reversed(orders)][:3]
    # An order created while paging does not shift the next page.
    item_id = orders[0]["lines"][0]["menu_item_id"]
    await place_order(edge, party.staff, [{"menu_item_id": item_id, "quantity": 1}])
    rest = await pages(edge, party.staff, "/api/v1/orders",
                       {"page_size": 3, "page_token": body["next_page_token"]})
    rest_ids = [o["id"] for page in rest for o in page]
    assert rest_ids == [o["id"] for o in reversed(orders)][3:]


async def test_list_filters_by_status_and_creation_time(edge, shop):
    party, orders = shop
    paid = await edge.get("/api/v1/orders", headers=party.staff.headers,
                          params={"statuses": ["PAID", "CANCELLED"]})
    assert {o["id"] for o in paid.json()["orders"]} == {o["id"] for o in orders[4:7]}
    middle = orders[2]["create_time"]
    before = await edge.get("/api/v1/orders", headers=party.staff.headers,
                            params={"created_before": middle})
    assert {o["id"] for o in before.json()["orders"]} == {o["id"] for o in orders[:2]}
    window = await edge.get("/api/v1/orders", headers=party.staff.headers,
                            params={"created_after": middle, "created_before": orders[6]["create_time"],
                                    "statuses": "OPEN"})
    assert [o["id"] for o in window.json()["orders"]] == [orders[2]["id"]]
    future = datetime.now(timezone.utc).replace(year=2100).isoformat().replace("+00:00", "Z")
    none = await edge.get("/api/v1/orders", headers=party.staff.headers,
                          params={"created_after": future})
    assert none.json()["orders"] == []


async def test_a_page_token_works_only_with_its_own_filters(edge, shop):
    party, _ = shop
    first = await edge.get("/api/v1/orders", headers=party.staff.headers, params={"page_size": 1})
    token = first.json()["next_page_token"]
    reused = await edge.get("/api/v1/orders", headers=party.staff.headers,
                            params={"page_size": 1, "page_token": token, "statuses": "OPEN"})
    forged = await edge.get("/api/v1/orders", headers=party.staff.headers,
                            params={"page_token": "bm90LWEtdG9rZW4"})
    assert (reused.status_code, error_reason(reused)) == (400, "INVALID_PAGE_TOKEN")
    assert (forged.status_code, error_reason(forged)) == (400, "INVALID_PAGE_TOKEN")

