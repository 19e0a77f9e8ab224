"""Redis stopped for 10 s under a steady load, then started again on the same port."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fault.conftest import eventually
from tests.fault.load import SteadyLoad
from tests.fault.subscriber import ResumingScreen
from tests.support.accounts import error_reason, login
from tests.support.orders import read_events
from tests.support.realtime import new_session

pytestmark = pytest.mark.fault

OUTAGE_SECONDS = 10
# The Redis client gives up within ~2 s (1 s timeouts, one retry); a request should never wait
# much longer than that for an answer, success or failure.
NO_HANG_SECONDS = 5.0


async def test_a_redis_outage_loses_no_order_or_event_and_logins_recover_by_themselves(
        stack, edge, party, dish):
    # Two devices, each with a kitchen and a till socket (one live socket per session and type).
    devices = [party.staff, await new_session(edge, party.staff)]
    screens = [await ResumingScreen.start(stack, device, kind)
               for device in devices for kind in ("kitchen", "pos")]
    logins_during: list[tuple[int, str, float]] = []
    try:
        async with SteadyLoad(edge, party.staff, dish, rate=15) as load:
            await asyncio.sleep(2)
            await stack.stop_redis()
            outage_started = time.monotonic()
            try:
                while time.monotonic() - outage_started < OUTAGE_SECONDS:
                    started = time.monotonic()
                    reply = await login(edge, party.manager.email, restaurant_id=party.restaurant_id)
                    logins_during.append((reply.status_code, error_reason(reply),
                                          time.monotonic() - started))
                    await asyncio.sleep(1.0)
            finally:
                await stack.start_redis()
            recovered_at = time.monotonic()
            await asyncio.sleep(4)

        # Logins during the outage either worked or failed clearly and quickly (never a 500,
        # never a hang) ...
        for status, reason, seconds in logins_during:
            assert status == 200 or (status == 503 and reason), (status, reason)
            assert seconds < NO_HANG_SECONDS, f"a login took {seconds:.1f}s during the outage"
        # ... and work again without anyone doing anything.
        async def login_works():
            return (await login(edge, party.manager.email,
                                restaurant_id=party.restaurant_id)).status_code == 200
        await eventually(login_works, timeout=10, what="a login after Redis returned")

        # What the tills saw: answers, never hangs; failures only as a clear, retryable 503.
        assert not load.hung(NO_HANG_SECONDS), load.describe(load.hung(NO_HANG_SECONDS))
        unclear = [r for r in load.failures() if r.status != 503 or not r.reason]
        assert not unclear, load.describe(unclear)
        assert load.succeeded_after(recovered_at + 2), "requests did not recover after the outage"

        # A failed create may be retried with its request id: it then exists exactly once.
        for reply in [r for r in load.creates if r.status != 200]:
            retry = await edge.post("/api/v1/orders", headers=party.staff.headers, json={
                "request_id": reply.request_id, "order_type": "TAKEAWAY",
                "table_number": "", "notes": "", "lines": [{"menu_item_id": dish["id"], "quantity": 1}]})
            assert retry.status_code == 200, retry.text
            reply.order_id = retry.json()["id"]
        created = [r.order_id for r in load.creates]
        assert len(created) == len(set(created)) and all(created)

        # Every order is stored, and has exactly one order.created event in the outbox stream.
        events = await read_events(stack, party.restaurant_id)
        created_events = [e["order"]["id"] for e in events if e["type"] == "order.created"]
        assert sorted(created_events) == sorted(created)
        sequences = [int(e["sequence"]) for e in events]
        assert sequences == list(range(1, len(sequences) + 1))
        listed = await edge.get("/api/v1/orders", headers=party.staff.headers,
                                params={"page_size": 200})
        assert {o["id"] for o in listed.json()["orders"]} == set(created)

        # Every screen got every order exactly once, in order, across whatever reconnects.
        for screen in screens:
            await screen.wait_for_orders(created, timeout=20)
            screen.assert_no_gap_no_duplicate()
            assert sorted(screen.order_ids()) == sorted(created)
    finally:
        for screen in screens:
            await screen.stop()
