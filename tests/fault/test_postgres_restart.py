"""PostgreSQL restarted under a steady load: requests in flight fail clearly and quickly, the
pools recover on their own (pool_pre_ping), and no order is ever half written."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
import pytest_asyncio

from posmesh.common.settings import Settings
from tests.fault.load import SteadyLoad
from tests.support.stacks import edge_client, own_stack
from tests.support.orders import (add_menu_item, money_of, order_body, line, open_restaurant,
                                  read_events)

pytestmark = pytest.mark.fault

# A request may wait for a database connection up to DB_POOL_TIMEOUT (10 s) before it fails
# with UNAVAILABLE; it must never wait longer than that plus a margin.
NO_HANG_SECONDS = 12.0


async def test_a_postgres_restart_fails_in_flight_requests_clearly_and_recovers_alone(
        stack, edge, party, dish):
    async with SteadyLoad(edge, party.staff, dish, rate=20) as load:
        await asyncio.sleep(2)
        restart_began = time.monotonic()
        await stack.restart_postgres()
        restarted_at = time.monotonic()
        await asyncio.sleep(6)

    assert not load.hung(NO_HANG_SECONDS), load.describe(load.hung(NO_HANG_SECONDS))
    unclear = [r for r in load.failures() if r.status != 503 or not r.reason]
    assert not unclear, (f"failures other than a clear 503: {load.describe(unclear)}"
                         f"{unhandled_errors(stack)}")
    # Before the restart, and a little after it, everything works: no manual step was needed.
    before = [r for r in load.replies if r.due < restart_began - 1.0]
    assert before and all(r.status == 200 for r in before), load.describe(before)
    settled = [r for r in load.replies if r.due >= restarted_at + 3]
    assert settled and all(r.status == 200 for r in settled), load.describe(
        [r for r in settled if r.status != 200])

    # Retrying every failed create with its request id yields exactly one order per request id.
    for reply in [r for r in load.creates if r.status != 200]:
        retry = await edge.post("/api/v1/orders", headers=party.staff.headers,
                                json=order_body([line(dish)], request_id=reply.request_id))
        assert retry.status_code == 200, retry.text
        reply.order_id = retry.json()["id"]
    created = [r.order_id for r in load.creates]
    assert len(created) == len(set(created))

    # No half-written order: each is whole (its one line, its totals) and has exactly one
    # order.created event; there is no event for an order that does not exist.
    listed = await edge.get("/api/v1/orders", headers=party.staff.headers, params={"page_size": 200})
    orders = {o["id"]: o for o in listed.json()["orders"]}
    assert set(orders) == set(created)
    unit = int(dish["price_minor"])
    for order in orders.values():
        assert len(order["lines"]) == 1 and order["version"] == 1
        assert money_of(order) == (unit, round(unit * 0.2), unit + round(unit * 0.2))
    events = await read_events(stack, party.restaurant_id)
    assert sorted(e["order"]["id"] for e in events if e["type"] == "order.created") == sorted(created)
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))


def unhandled_errors(stack) -> str:
    """What the processes logged as unexpected (and the edge's 500s), for a failure message."""
    found = [f"\n{name}: {line[:2000]}" for name in stack.children
             for line in stack.service_log(name).splitlines()
             if "unhandled error" in line or re.search(r'"status":\s*"?500\b', line)]
    return "".join(found[:4])


# An overload burst: a stack whose admission limit is small enough that this rate, half of it
# new orders, is far beyond what it admits — certainly so while PostgreSQL restarts midway.
BURST_RATE = 150.0
BURST_SECONDS = 4.0
# One call in flight per priority and process (one process of each service): at this rate, with
# requests taking milliseconds each, the edge refuses some whatever the machine's speed.
SMALL_ADMISSION_LIMIT = 1


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def small_admission():
    queue_ms = Settings.model_fields["admission_max_queue_ms"].default
    async with own_stack(embedded_servers=True, admission_max_in_flight=SMALL_ADMISSION_LIMIT,
                         admission_max_queue_ms=queue_ms, auth_replicas=1, staff_replicas=1,
                         orders_replicas=1) as own:
        async with edge_client(own) as client:
            yield own, client


async def test_an_overload_burst_during_a_postgres_restart_loses_no_order(small_admission):
    """Every answer is a success or a clear refusal with its reason (OVERLOADED at capacity,
    the database's while it restarts), none hangs; retried with their request ids, the refused
    creates give exactly one whole order each, and every accepted order is there."""
    stack, edge = small_admission
    party = await open_restaurant(edge)
    dish = await add_menu_item(edge, party.manager, price_minor=650, tax_rate_ppm=200_000)
    async with SteadyLoad(edge, party.staff, dish, rate=BURST_RATE, create_share=0.5,
                          timeout=20) as load:
        await asyncio.sleep(BURST_SECONDS / 2)
        await stack.restart_postgres()
        await asyncio.sleep(BURST_SECONDS / 2)

    assert not load.hung(NO_HANG_SECONDS), load.describe(load.hung(NO_HANG_SECONDS))
    unclear = [r for r in load.failures() if r.status not in (503, 504) or not r.reason]
    assert not unclear, (f"failures without a clear reason: {load.describe(unclear)}"
                         f"{unhandled_errors(stack)}")
    reasons = {r.reason for r in load.failures()}
    assert "OVERLOADED" in reasons, f"the burst never reached capacity: {reasons}"
    accepted = {r.request_id: r.order_id for r in load.creates if r.status == 200}

    async def retry_until_created(reply) -> None:
        for _ in range(100):
            retry = await edge.post("/api/v1/orders", headers=party.staff.headers,
                                    json=order_body([line(dish)], request_id=reply.request_id))
            if retry.status_code == 200:
                reply.order_id = retry.json()["id"]
                return
            assert retry.status_code in (503, 504), retry.text
            await asyncio.sleep(0.2)
        raise AssertionError(f"order {reply.request_id} was never created")

    refused_creates = [r for r in load.creates if r.status != 200]
    for batch in range(0, len(refused_creates), 20):
        await asyncio.gather(*(retry_until_created(r) for r in refused_creates[batch:batch + 20]))
    created = [r.order_id for r in load.creates]
    assert len(created) == len(set(created)), "a request id made two orders"
    assert all(accepted[request_id] in created for request_id in accepted)

    events = await read_events(stack, party.restaurant_id)
    created_events = sorted(e["order"]["id"] for e in events if e["type"] == "order.created")
    assert created_events == sorted(created)  # one event per order, none for an order not made
    unit = int(dish["price_minor"])
    for event in (e for e in events if e["type"] == "order.created"):
        order = event["order"]
        assert len(order["lines"]) == 1
        assert money_of(order) == (unit, round(unit * 0.2), unit + round(unit * 0.2))
