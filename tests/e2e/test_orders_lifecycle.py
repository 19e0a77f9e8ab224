"""Order status and lines through the edge: the transition table, versions, concurrent updates."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from services.orders.domain import TRANSITIONS, OrderStatus
from tests.support.orders import (
    add_menu_item,
    error_reason,
    line,
    money_of,
    move,
    open_restaurant,
    place_order,
    read_events,
)

# The shortest legal path from OPEN to each status.
PATH_TO = {
    OrderStatus.OPEN: [],
    OrderStatus.SENT_TO_KITCHEN: [OrderStatus.SENT_TO_KITCHEN],
    OrderStatus.PREPARING: [OrderStatus.SENT_TO_KITCHEN, OrderStatus.PREPARING],
    OrderStatus.READY: [OrderStatus.SENT_TO_KITCHEN, OrderStatus.PREPARING, OrderStatus.READY],
    OrderStatus.SERVED: [OrderStatus.SENT_TO_KITCHEN, OrderStatus.PREPARING, OrderStatus.READY,
                         OrderStatus.SERVED],
    OrderStatus.PAID: [OrderStatus.SENT_TO_KITCHEN, OrderStatus.PREPARING, OrderStatus.READY,
                       OrderStatus.SERVED, OrderStatus.PAID],
    OrderStatus.CANCELLED: [OrderStatus.CANCELLED],
}


@pytest_asyncio.fixture(scope="module")
async def party(stack, edge):
    return await open_restaurant(edge)


@pytest_asyncio.fixture(scope="module")
async def soup(edge, party):
    return await add_menu_item(edge, party.manager, name="Soup", price_minor=600, tax_rate_ppm=200_000)


async def walk(edge, member, order: dict, statuses) -> dict:
    for status in statuses:
        reply = await move(edge, member, order, status.value)
        assert reply.status_code == 200, reply.text
        order = reply.json()
    return order


async def test_an_order_goes_through_its_whole_lifecycle(edge, party, soup):
    order = await place_order(edge, party.staff, [line(soup)], order_type="DINE_IN", table_number="3")
    assert (order["status"], order["version"]) == ("OPEN", 1)
    paid = await walk(edge, party.staff, order, PATH_TO[OrderStatus.PAID])
    assert (paid["status"], paid["version"]) == ("PAID", 6)


@pytest.mark.parametrize("current", list(OrderStatus), ids=[s.value for s in OrderStatus])
async def test_every_transition_outside_the_table_is_refused_and_changes_nothing(
        edge, party, soup, current):
    order = await walk(edge, party.staff, await place_order(edge, party.staff, [line(soup)]),
                       PATH_TO[current])
    illegal = [target for target in OrderStatus if target not in TRANSITIONS[current]]
    assert illegal, "every status has some illegal target (at least itself)"
    for target in illegal:
        reply = await move(edge, party.staff, order, target.value)
        assert reply.status_code == 409, f"{current} -> {target}: {reply.text}"
        assert error_reason(reply) == "INVALID_TRANSITION"
        metadata = reply.json()["details"][0]["metadata"]
        assert (metadata["from"], metadata["to"]) == (current.value, target.value)
    after = (await edge.get(f"/api/v1/orders/{order['id']}", headers=party.staff.headers)).json()
    assert (after["status"], after["version"]) == (current.value, order["version"])


async def test_patch_is_accepted_for_status_changes_as_existing_apps_send_it(edge, party, soup):
    order = await place_order(edge, party.staff, [line(soup)])
    reply = await edge.patch(f"/api/v1/orders/{order['id']}/status", headers=party.staff.headers,
                             json={"status": "SENT_TO_KITCHEN", "version": 1})
    assert reply.status_code == 200 and reply.json()["status"] == "SENT_TO_KITCHEN"


async def test_an_empty_order_cannot_be_sent_to_the_kitchen(edge, party):
    order = await place_order(edge, party.staff, [], order_type="DINE_IN", table_number="9")
    reply = await move(edge, party.staff, order, "SENT_TO_KITCHEN")
    assert reply.status_code == 409 and error_reason(reply) == "ORDER_EMPTY"


async def test_a_stale_version_is_a_conflict_and_changes_nothing(edge, party, soup):
    order = await place_order(edge, party.staff, [line(soup)])
    moved = await walk(edge, party.staff, order, [OrderStatus.SENT_TO_KITCHEN])
    stale = await move(edge, party.staff, order, "CANCELLED")  # based on version 1
    assert stale.status_code == 409 and error_reason(stale) == "VERSION_CONFLICT"
    assert stale.json()["details"][0]["metadata"] == {"expected_version": "1", "current_version": "2"}
    now = (await edge.get(f"/api/v1/orders/{order['id']}", headers=party.staff.headers)).json()
    assert now == moved


async def test_a_missing_version_or_status_is_400(edge, party, soup):
    order = await place_order(edge, party.staff, [line(soup)])
    no_version = await edge.post(f"/api/v1/orders/{order['id']}/status", headers=party.staff.headers,
                                 json={"status": "SENT_TO_KITCHEN"})
    no_status = await edge.post(f"/api/v1/orders/{order['id']}/status", headers=party.staff.headers,
                                json={"version": 1})
    assert (no_version.status_code, error_reason(no_version)) == (400, "FIELD_REQUIRED")
    assert (no_status.status_code, error_reason(no_status)) == (400, "FIELD_REQUIRED")


async def test_lines_are_added_and_removed_while_open_with_totals_recomputed(edge, party, soup):
    bread = await add_menu_item(edge, party.manager, price_minor=250, tax_rate_ppm=0)
    order = await place_order(edge, party.staff, [line(soup)], order_type="DINE_IN", table_number="5")
    added = await edge.post(f"/api/v1/orders/{order['id']}/items", headers=party.staff.headers,
                            json={"version": 1, "lines": [line(bread, 2, notes="warm",
                                                               modifiers=["butter"])]})
    assert added.status_code == 200, added.text
    grown = added.json()
    assert money_of(grown) == (1100, 120, 1220) and grown["version"] == 2
    assert grown["lines"][1]["modifiers"] == ["butter"]
    soup_line = grown["lines"][0]["id"]
    removed = await edge.delete(f"/api/v1/orders/{order['id']}/items/{soup_line}",
                                headers=party.staff.headers, params={"version": 2})
    assert removed.status_code == 200, removed.text
    assert money_of(removed.json()) == (500, 0, 500) and removed.json()["version"] == 3
    missing = await edge.delete(f"/api/v1/orders/{order['id']}/items/{soup_line}",
                                headers=party.staff.headers, params={"version": 3})
    assert (missing.status_code, error_reason(missing)) == (404, "LINE_NOT_FOUND")


async def test_lines_cannot_change_once_the_order_left_open(edge, party, soup):
    order = await walk(edge, party.staff, await place_order(edge, party.staff, [line(soup)]),
                       [OrderStatus.SENT_TO_KITCHEN])
    added = await edge.post(f"/api/v1/orders/{order['id']}/items", headers=party.staff.headers,
                            json={"version": order["version"], "lines": [line(soup)]})
    removed = await edge.delete(f"/api/v1/orders/{order['id']}/items/{order['lines'][0]['id']}",
                                headers=party.staff.headers, params={"version": order["version"]})
    assert (added.status_code, error_reason(added)) == (409, "ORDER_NOT_EDITABLE")
    assert (removed.status_code, error_reason(removed)) == (409, "ORDER_NOT_EDITABLE")


async def test_50_concurrent_conflicting_updates_lose_nothing(stack, edge, party, soup):
    order = await place_order(edge, party.staff, [line(soup)])
    head_before = await _head(stack, party)

    async def attempt(index: int):
        # Each till reads the order, then adds a line or removes the newest extra line, based on
        # the version it read: they all race for the same order.
        current = (await edge.get(f"/api/v1/orders/{order['id']}", headers=party.staff.headers)).json()
        if index % 2 and len(current["lines"]) > 1:
            newest = current["lines"][-1]["id"]
            return await edge.delete(f"/api/v1/orders/{order['id']}/items/{newest}",
                                     headers=party.staff.headers,
                                     params={"version": current["version"]})
        return await edge.post(f"/api/v1/orders/{order['id']}/items", headers=party.staff.headers,
                               json={"version": current["version"], "lines": [line(soup)]})

    replies = await asyncio.gather(*(attempt(i) for i in range(50)))
    outcomes = {(reply.status_code, error_reason(reply)) for reply in replies}
    assert outcomes <= {(200, ""), (409, "VERSION_CONFLICT")}, outcomes
    successes = [reply.json() for reply in replies if reply.status_code == 200]
    assert successes, "at least one update succeeds"
    final = (await edge.get(f"/api/v1/orders/{order['id']}", headers=party.staff.headers)).json()
    assert final["version"] == 1 + len(successes)
    # Each success was based on a distinct version: no two updates applied to the same state.
    assert sorted(s["version"] for s in successes) == list(range(2, 2 + len(successes)))
    # No lost update: replaying the successes in version order gives the final lines.
    by_version = sorted(successes, key=lambda s: s["version"])
    assert [ln["id"] for ln in by_version[-1]["lines"]] == [ln["id"] for ln in final["lines"]]
    for before, after in zip([order] + by_version, by_version):
        assert abs(len(after["lines"]) - len(before["lines"])) == 1
    # One event per success, contiguous sequence numbers, versions in order.
    events = [e for e in await read_events(stack, party.restaurant_id, after=head_before)
              if e.get("order", {}).get("id") == order["id"]]
    assert len(events) == len(successes)
    sequences = [int(e["sequence"]) for e in events]
    assert sequences == list(range(sequences[0], sequences[0] + len(events)))
    assert [e["order"]["version"] for e in events] == list(range(2, 2 + len(successes)))
    assert all(e["type"] == "order.updated" for e in events)


async def test_50_concurrent_updates_on_one_version_have_exactly_one_winner(stack, edge, party, soup):
    order = await place_order(edge, party.staff, [line(soup)])
    replies = await asyncio.gather(*(move(edge, party.staff, order, "SENT_TO_KITCHEN" if i % 2
                                          else "CANCELLED") for i in range(50)))
    codes = [(reply.status_code, error_reason(reply)) for reply in replies]
    assert codes.count((200, "")) == 1
    assert codes.count((409, "VERSION_CONFLICT")) == 49
    final = (await edge.get(f"/api/v1/orders/{order['id']}", headers=party.staff.headers)).json()
    assert final["version"] == 2


async def _head(stack, party) -> int:
    from tests.support.orders import event_head

    return await event_head(stack, party.restaurant_id)
