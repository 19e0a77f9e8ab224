"""Creating orders through the edge: idempotent retries, money, ticket numbers, bad input."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import pytest_asyncio

from tests.support.orders import (
    add_menu_item,
    error_reason,
    line,
    money_of,
    open_restaurant,
    order_body,
    place_order,
    read_events,
)


@pytest_asyncio.fixture(scope="module")
async def party(stack, edge):
    return await open_restaurant(edge, currency="USD", timezone="America/New_York")


@pytest_asyncio.fixture(scope="module")
async def tea(edge, party):
    return await add_menu_item(edge, party.manager, name="Tea", price_minor=250, tax_rate_ppm=88_750)


async def created_events(stack, party, order_id: str) -> list[dict]:
    events = await read_events(stack, party.restaurant_id, after=0)
    return [e for e in events if e["type"] == "order.created" and e["order"]["id"] == order_id]


async def test_a_sequential_retry_returns_the_same_order_and_writes_one_event(stack, edge, party, tea):
    body = order_body([line(tea, 2)])
    first = await edge.post("/api/v1/orders", headers=party.staff.headers, json=body)
    retry = await edge.post("/api/v1/orders", headers=party.staff.headers, json=body)
    assert first.status_code == retry.status_code == 200
    assert retry.json() == first.json()
    assert len(await created_events(stack, party, first.json()["id"])) == 1


async def test_concurrent_retries_with_one_key_create_exactly_one_order(stack, edge, party, tea):
    body = order_body([line(tea, 1)], order_type="DINE_IN", table_number="12")
    replies = await asyncio.gather(*(
        edge.post("/api/v1/orders", headers=party.staff.headers, json=body) for _ in range(12)))
    assert {reply.status_code for reply in replies} == {200}
    ids = {reply.json()["id"] for reply in replies}
    tickets = {reply.json()["ticket_number"] for reply in replies}
    assert len(ids) == 1 and len(tickets) == 1
    assert len(await created_events(stack, party, ids.pop())) == 1


async def test_the_same_key_with_another_body_is_idempotency_mismatch(edge, party, tea):
    key = str(uuid.uuid4())
    original = await place_order(edge, party.staff, [line(tea, 1)], request_id=key)
    reply = await edge.post("/api/v1/orders", headers=party.staff.headers,
                            json=order_body([line(tea, 2)], request_id=key))
    assert reply.status_code == 409
    assert error_reason(reply) == "IDEMPOTENCY_MISMATCH"
    assert original["id"] in reply.json()["message"]


@pytest.mark.parametrize(
    ("price", "quantity", "rate_ppm", "expected"),
    [
        (400, 1, 88_750, (400, 36, 436)),  # 8.875 %: 35.5 -> 36
        (20, 1, 125_000, (20, 3, 23)),  # 12.5 %: 2.5 -> 3, never to even
        (5000, 1, 100, (5000, 1, 5001)),  # 0.01 %: 0.5 -> 1
        (4999, 1, 100, (4999, 0, 4999)),  # 0.01 %: 0.4999 -> 0
        (150, 1, 333_300, (150, 50, 200)),  # 33.33 %: 49.995 -> 50
        (999, 999, 333_300, (998_001, 332_634, 1_330_635)),
    ],
)
async def test_totals_are_computed_in_minor_units_with_tax_rounded_half_up_per_line(
        edge, party, price, quantity, rate_ppm, expected):
    item = await add_menu_item(edge, party.manager, price_minor=price, tax_rate_ppm=rate_ppm)
    order = await place_order(edge, party.staff, [line(item, quantity)])
    assert money_of(order) == expected
    (priced,) = order["lines"]
    assert (int(priced["unit_price_minor"]), priced["tax_rate_ppm"]) == (price, rate_ppm)
    assert int(priced["tax_minor"]) == expected[1]
    assert order["currency"] == "USD"


async def test_order_tax_sums_line_taxes_rounded_one_by_one(edge, party):
    item = await add_menu_item(edge, party.manager, price_minor=4, tax_rate_ppm=125_000)
    order = await place_order(edge, party.staff, [line(item), line(item), line(item)])
    assert money_of(order) == (12, 3, 15)  # 3 × round_half_up(0.5); the whole order would give 2


async def test_the_price_is_snapshotted_when_the_order_is_taken(edge, party):
    item = await add_menu_item(edge, party.manager, price_minor=300, tax_rate_ppm=0)
    order = await place_order(edge, party.staff, [line(item, 2)])
    changed = await edge.patch(f"/api/v1/restaurants/{party.restaurant_id}/menu/items/{item['id']}",
                               headers=party.manager.headers,
                               json={"price_minor": "900", "version": item["version"]})
    assert changed.status_code == 200
    again = (await edge.get(f"/api/v1/orders/{order['id']}", headers=party.staff.headers)).json()
    assert money_of(again) == (600, 0, 600)


async def test_ticket_numbers_count_up_per_restaurant_per_business_day(edge, party, tea):
    first = await place_order(edge, party.staff, [line(tea)])
    second = await place_order(edge, party.staff, [line(tea)])
    assert second["ticket_number"] == first["ticket_number"] + 1
    assert first["business_date"] == second["business_date"]
    other = await open_restaurant(edge)
    item = await add_menu_item(edge, other.manager)
    assert (await place_order(edge, other.staff, [line(item)]))["ticket_number"] == 1


async def test_concurrent_creates_get_distinct_consecutive_ticket_numbers(edge, party, tea):
    replies = await asyncio.gather(*(
        edge.post("/api/v1/orders", headers=party.staff.headers, json=order_body([line(tea)]))
        for _ in range(10)))
    tickets = sorted(reply.json()["ticket_number"] for reply in replies)
    assert tickets == list(range(tickets[0], tickets[0] + 10))


async def test_unavailable_deleted_and_unknown_items_cannot_be_ordered(edge, party):
    off = await add_menu_item(edge, party.manager, available=False)
    gone = await add_menu_item(edge, party.manager)
    deleted = await edge.delete(f"/api/v1/restaurants/{party.restaurant_id}/menu/items/{gone['id']}",
                                headers=party.manager.headers)
    assert deleted.status_code == 200
    for item_id in (off["id"], gone["id"], str(uuid.uuid4())):
        reply = await edge.post("/api/v1/orders", headers=party.staff.headers,
                                json=order_body([{"menu_item_id": item_id, "quantity": 1}]))
        assert reply.status_code == 409, reply.text
        assert error_reason(reply) == "ITEM_UNAVAILABLE"
        assert reply.json()["details"][0]["metadata"]["menu_item_id"] == item_id


async def test_an_item_of_another_restaurant_is_unknown_here(edge, party):
    other = await open_restaurant(edge)
    foreign = await add_menu_item(edge, other.manager)
    reply = await edge.post("/api/v1/orders", headers=party.staff.headers,
                            json=order_body([line(foreign)]))
    assert reply.status_code == 409
    assert error_reason(reply) == "ITEM_UNAVAILABLE"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda b: b.update(request_id=""), "FIELD_REQUIRED"),
        (lambda b: b.pop("request_id"), "FIELD_REQUIRED"),
        (lambda b: b["lines"][0].update(quantity=-1), "VALUE_OUT_OF_RANGE"),
        (lambda b: b["lines"][0].update(quantity=0), "VALUE_OUT_OF_RANGE"),
        (lambda b: b["lines"][0].update(quantity=1000), "VALUE_OUT_OF_RANGE"),
        (lambda b: b.update(notes="n" * 5000), "FIELD_TOO_LONG"),
        (lambda b: b["lines"][0].update(notes="n" * 501), "FIELD_TOO_LONG"),
        (lambda b: b["lines"][0].update(modifiers=["m"] * 21), "TOO_MANY_MODIFIERS"),
        (lambda b: b["lines"][0].update(menu_item_id="not-an-id"), "INVALID_ID"),
        (lambda b: b.update(order_type="DINE_IN", table_number=""), "TABLE_REQUIRED"),
        (lambda b: b.update(order_type="TAKEAWAY", table_number="4"), "TABLE_NOT_ALLOWED"),
        (lambda b: b.pop("order_type"), "FIELD_REQUIRED"),
        (lambda b: b.update(order_type=7), "INVALID_ENUM"),
        (lambda b: b.update(lines=b["lines"] * 101), "TOO_MANY_LINES"),
    ],
    ids=["empty request_id", "missing request_id", "negative quantity", "zero quantity",
         "quantity 1000", "huge notes", "huge line notes", "too many modifiers", "bad item id",
         "dine-in without table", "takeaway with table", "missing order type",
         "unknown enum number", "too many lines"],
)
async def test_bad_input_is_400_with_a_reason(edge, party, tea, change, reason):
    body = order_body([line(tea)])
    change(body)
    reply = await edge.post("/api/v1/orders", headers=party.staff.headers, json=body)
    assert reply.status_code == 400, reply.text
    assert error_reason(reply) == reason


async def test_an_unknown_enum_name_is_400(edge, party, tea):
    body = order_body([line(tea)])
    body["order_type"] = "DRIVE_THRU"
    reply = await edge.post("/api/v1/orders", headers=party.staff.headers, json=body)
    assert reply.status_code == 400


async def test_an_order_without_a_token_is_401(edge, tea):
    reply = await edge.post("/api/v1/orders", json=order_body([line(tea)]))
    assert reply.status_code == 401
