"""Realtime end to end, delivery: order events from the JSON API to sockets through Envoy, in
order and exactly once, across resumes, an orders restart, slow consumers, two realtime processes
and a realtime shutdown. See docs/realtime.md."""

from __future__ import annotations

import re
import socket
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.orders import add_menu_item, line, move, open_restaurant, place_order
from tests.support.realtime import new_session, process_health, signed_in

EVENT_TYPES = ("order.created", "order.updated", "order.status_changed", "menu.updated")


@pytest.fixture
async def party(edge):
    return await open_restaurant(edge)


@pytest.fixture
async def dish(edge, party):
    return await add_menu_item(edge, party.manager, price_minor=700)


def ids(events: list[dict]) -> list[int]:
    return [int(event["id"]) for event in events]


async def no_more_events(sock, seconds: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        extra = await sock.next(*EVENT_TYPES, timeout=seconds)
        pytest.fail(f"unexpected extra event {extra['type']} {extra['id']}")


async def test_each_change_arrives_once_in_order_with_its_type(stack, edge, party, dish):
    sock = await signed_in(stack, party.staff, "kitchen")
    order = await place_order(edge, party.staff, [line(dish)])
    added = await edge.post(f"/api/v1/orders/{order['id']}/items", headers=party.staff.headers,
                            json={"lines": [line(dish, 2)], "version": order["version"]})
    assert added.status_code == 200, added.text
    moved = await move(edge, party.staff, added.json(), "SENT_TO_KITCHEN")
    assert moved.status_code == 200, moved.text
    stale = await move(edge, party.staff, order, "PREPARING")  # an old version: refused
    assert stale.status_code == 409

    events = await sock.events(3)
    assert [e["type"] for e in events] == ["order.created", "order.updated",
                                           "order.status_changed"]
    first = ids(events)[0]
    assert ids(events) == [first, first + 1, first + 2]
    assert len(events[1]["data"]["order"]["lines"]) == 2
    assert events[2]["data"]["previous_status"] == "OPEN"
    assert events[2]["data"]["order"]["status"] == "SENT_TO_KITCHEN"
    assert all(e["data"]["order"]["id"] == order["id"] for e in events)
    await no_more_events(sock)  # nothing for the refused change, nothing twice
    await sock.close()


async def test_resume_after_a_disconnect_delivers_every_missed_event_once(stack, edge, party, dish):
    sock = await signed_in(stack, party.staff, "kitchen")
    for _ in range(3):
        await place_order(edge, party.staff, [line(dish)])
    seen = ids(await sock.events(3))
    await sock.close()

    missed = [(await place_order(edge, party.staff, [line(dish)]))["id"] for _ in range(4)]
    # Two screens resume at once: Envoy spreads them over both realtime processes, so one of
    # them is served by a process that never followed this restaurant (a catch-up from orders).
    resumed = [await signed_in(stack, await new_session(edge, party.staff), "kitchen",
                               last_event_id=str(seen[-1]))
               for _ in range(2)]
    live = [(await place_order(edge, party.staff, [line(dish)]))["id"] for _ in range(2)]
    for screen in resumed:
        events = await screen.events(6)
        assert ids(events) == list(range(seen[-1] + 1, seen[-1] + 7)), "no gap, no duplicate"
        assert [e["data"]["order"]["id"] for e in events] == missed + live
        await no_more_events(screen)
        await screen.close()


async def test_resume_from_an_id_beyond_the_newest_gets_resync_required(stack, edge, party, dish):
    await place_order(edge, party.staff, [line(dish)])
    sock = await signed_in(stack, party.staff, "pos", last_event_id="999999")
    assert (await sock.next("resync_required"))["data"]["reason"]
    order = await place_order(edge, party.staff, [line(dish)])
    assert (await sock.next("order.created"))["data"]["order"]["id"] == order["id"]
    await sock.close()


async def test_an_orders_restart_mid_stream_loses_nothing(stack, edge, party, dish):
    sock = await signed_in(stack, party.staff, "kitchen")
    before = [await place_order(edge, party.staff, [line(dish)]) for _ in range(2)]
    first = ids(await sock.events(2))

    await stack.stop_every("orders")
    await stack.start_every("orders")
    # At once, while realtime may still be reconnecting its stream.
    after = [await place_order(edge, party.staff, [line(dish)]) for _ in range(3)]
    events = await sock.events(3, timeout=15)
    assert ids(events) == [first[-1] + 1, first[-1] + 2, first[-1] + 3]
    assert [e["data"]["order"]["id"] for e in events] == [o["id"] for o in after]
    assert len(before) == 2
    await no_more_events(sock)
    await sock.close()


async def test_two_realtime_processes_both_deliver(stack, edge, party, dish):
    socks = [await signed_in(stack, await new_session(edge, party.staff), "kitchen")
             for _ in range(6)]
    per_process = []
    for addr in stack.settings.realtime_ws_addrs:
        health = await process_health(stack, addr)
        per_process.append(health["presence"].get(party.restaurant_id, {}).get("kitchen", 0))
    assert len(per_process) == 2 and all(count >= 1 for count in per_process), per_process
    assert sum(per_process) == 6
    order = await place_order(edge, party.staff, [line(dish)])
    for sock in socks:
        assert (await sock.next("order.created"))["data"]["order"]["id"] == order["id"]
        await sock.close()


async def kitchen_counts(stack, restaurant_id: str) -> list[int]:
    """Kitchen sockets of the restaurant on each realtime process."""
    counts = []
    for addr in stack.settings.realtime_ws_addrs:
        presence = (await process_health(stack, addr))["presence"]
        counts.append(presence.get(restaurant_id, {}).get("kitchen", 0))
    return counts


def small_window_socket(stack) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", stack.settings.edge_port))
    sock.setblocking(False)
    return sock


def slow_consumers(metrics: str) -> int:
    match = re.search(r"^posmesh_realtime_slow_consumers_total (\d+)(?:\.0)?$", metrics, re.MULTILINE)
    assert match, "the realtime metrics page has no slow-consumer counter"
    return int(match.group(1))


async def total_slow_consumers(stack) -> int:
    total = 0
    async with httpx.AsyncClient(timeout=5) as client:
        for addr in stack.metrics_targets()["realtime"]:
            total += slow_consumers((await client.get(f"http://{addr}/metrics")).text)
    return total


async def test_a_slow_consumer_is_closed_without_slowing_the_others_and_can_resume(
        stack, edge, party):
    # Big events (100 lines with long notes, ~300 KB each) fill every buffer between the server
    # and a client that stops reading within a few dozen orders.
    heavy = [await add_menu_item(edge, party.manager, name=f"Dish {n} " + "x" * 150)
             for n in range(4)]
    lines = [line(heavy[n % 4], notes="n" * 500, modifiers=[f"m{k}-" + "y" * 90 for k in range(20)])
             for n in range(100)]
    # Never reads from here on; a small TCP window, and the client library itself buffers at
    # most one message: like a phone on a bad network.
    slow = await signed_in(stack, party.manager, "kitchen", max_queue=1,
                           sock=small_window_socket(stack))
    slow_process = (await kitchen_counts(stack, party.restaurant_id)).index(1)
    # Fast screens until one shares the slow one's process (and event loop).
    fast = []
    while (await kitchen_counts(stack, party.restaurant_id))[slow_process] < 2:
        fast.append(await signed_in(stack, await new_session(edge, party.staff), "kitchen"))
    slow_before = await total_slow_consumers(stack)

    delays = []
    last_id = 0
    for _ in range(60):
        order = await place_order(edge, party.staff, lines)
        created_at = time.monotonic()
        for screen in fast:
            event = await screen.next("order.created", timeout=10)
            delays.append(time.monotonic() - created_at)
            assert event["data"]["order"]["id"] == order["id"]
            last_id = int(event["id"])
        if await total_slow_consumers(stack) > slow_before:
            break
    assert await total_slow_consumers(stack) > slow_before, "the slow socket was never closed"
    # Each delay also includes the orders service's own path to realtime (under a loaded suite
    # an event can wait ~1 s for its relay there); a stalled fan-out would take far longer.
    assert max(delays) < 2.0, f"a fast socket was held up: {max(delays):.2f}s"
    assert sorted(delays)[len(delays) // 2] < 0.25, f"fast sockets were slowed: {sorted(delays)}"

    # The slow client reads what reached it, then the close with its reason.
    got = []
    with pytest.raises(ConnectionClosed):
        while True:
            got.append(int((await slow.next(*EVENT_TYPES, timeout=10))["id"]))
    frame = slow.ws.protocol.close_rcvd
    assert frame is not None and (frame.code, frame.reason) == (4008, "SLOW_CONSUMER")
    assert got and got == list(range(got[0], got[0] + len(got))), "in order, nothing twice"
    # It resumes from what it has and gets the rest exactly once.
    resume_from = got[-1]
    resumed = await signed_in(stack, party.manager, "kitchen", last_event_id=str(resume_from))
    rest = ids(await resumed.events(last_id - resume_from, timeout=15))
    assert rest == list(range(resume_from + 1, last_id + 1))
    await resumed.close()
    for screen in fast:
        await screen.close()


async def test_a_realtime_shutdown_closes_its_sockets_with_1001_and_clients_resume_elsewhere(
        stack, edge, party, dish):
    devices = [await new_session(edge, party.staff) for _ in range(5)]
    socks = [await signed_in(stack, device, "pos") for device in devices[:4]]
    await place_order(edge, party.staff, [line(dish)])
    last = [int((await sock.next("order.created"))["id"]) for sock in socks]
    try:
        await stack.stop_service("realtime-2")
        closed = []
        for sock in socks:
            try:
                await sock.ping(timeout=1)
            except Exception:
                closed.append(sock.ws.protocol.close_rcvd)
        assert closed, "no socket was on the stopped process"
        assert all(frame is not None and frame.code == 1001 for frame in closed), closed
        order = await place_order(edge, party.staff, [line(dish)])
        again = await signed_in(stack, devices[4], "pos", last_event_id=str(last[0]))
        assert (await again.next("order.created", timeout=10))["data"]["order"]["id"] == order["id"]
        await again.close()
    finally:
        await stack.start_service("realtime-2")
    for sock in socks:
        await sock.close()
