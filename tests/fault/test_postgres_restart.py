"""PostgreSQL restarted under a steady load: requests in flight fail clearly and quickly, the
pools recover on their own (pool_pre_ping), and no order is ever half written."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fault.load import SteadyLoad
from tests.support.orders import money_of, order_body, line, read_events

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
    assert not unclear, f"failures other than a clear 503: {load.describe(unclear)}"
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
