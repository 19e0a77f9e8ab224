"""Replicas of the stateless services (AUTH/STAFF/ORDERS_REPLICAS; the session stack runs two of
each): the edge spreads requests over every replica, a service's calls to another spread over
the callee's replicas, and the outbox relay stays one ordered flow with several orders
processes. See docs/platform.md "Replicas"."""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil
import pytest

from tests.support.orders import add_menu_item, line, open_restaurant, place_order
from tests.support.realtime import signed_in
from tests.support.restaurants import create_restaurant_as_owner, switch_restaurant


async def _requests_per_replica(stack, cluster: str) -> dict[str, int]:
    """Requests Envoy has sent to each endpoint of `cluster` ("host:port" -> count)."""
    url = f"http://127.0.0.1:{stack.settings.envoy_admin_port}/clusters?format=json"
    async with httpx.AsyncClient(timeout=5) as admin:
        body = (await admin.get(url)).json()
    (status,) = [c for c in body["cluster_statuses"] if c["name"] == cluster]
    counts = {}
    for host in status["host_statuses"]:
        address = host["address"]["socket_address"]
        stats = {stat["name"]: int(stat.get("value", 0)) for stat in host["stats"]}
        counts[f"{address['address']}:{address['port_value']}"] = stats["rq_total"]
    return counts


IDLE_SECONDS = 2.0


def _bytes_read(stack, service: str) -> dict[str, int]:
    """Bytes each process of `service` has read (sockets included: /proc/<pid>/io rchar)."""
    pids = stack.pids()
    return {name: psutil.Process(pids[name][0]).io_counters().read_chars
            for name in stack.replicas(service)}


async def test_requests_through_the_edge_reach_every_orders_replica(stack, edge):
    party = await open_restaurant(edge)
    before = await _requests_per_replica(stack, "orders")
    assert sorted(before) == sorted(stack.settings.orders_addrs)
    assert len(before) == 2

    for _ in range(20):
        reply = await edge.get("/api/v1/orders/active", headers=party.staff.headers)
        assert reply.status_code == 200, reply.text

    after = await _requests_per_replica(stack, "orders")
    served = {addr: after[addr] - before[addr] for addr in before}
    assert sum(served.values()) >= 20
    assert all(count >= 2 for count in served.values()), served


async def test_calls_from_orders_to_staff_spread_over_every_staff_replica(stack, edge):
    # Orders asks staff for a restaurant's currency once per restaurant (then caches it): each
    # new restaurant's first menu item is one internal GetRestaurant call.
    owner, restaurant = await create_restaurant_as_owner(edge)
    restaurants = [restaurant["id"]]
    for _ in range(7):
        owner, restaurant = await create_restaurant_as_owner(edge, owner=owner)
        restaurants.append(restaurant["id"])
    await asyncio.sleep(0.5)
    idle_start = _bytes_read(stack, "staff")
    await asyncio.sleep(IDLE_SECONDS)
    idle_rate = {name: (read - idle_start[name]) / IDLE_SECONDS
                 for name, read in _bytes_read(stack, "staff").items()}

    read, measured = dict.fromkeys(idle_rate, 0), 0.0
    for restaurant_id in restaurants:
        # Switching restaurants ends the previous session: a new one for each.
        owner = await switch_restaurant(edge, owner, restaurant_id)
        before, started = _bytes_read(stack, "staff"), time.monotonic()
        await add_menu_item(edge, owner)
        measured += time.monotonic() - started
        for name, count in _bytes_read(stack, "staff").items():
            read[name] += count - before[name]

    # Beyond what an idle replica reads meanwhile (pings, the mail poll: a few hundred bytes a
    # second), each read more than a GetRestaurant call's request and row (about 500 bytes):
    # the eight calls went to both.
    served = {name: read[name] - idle_rate[name] * measured for name in read}
    assert all(extra > 600 for extra in served.values()), (served, read, idle_rate, measured)


async def test_events_from_every_orders_replica_reach_a_socket_once_and_in_order(stack, edge):
    orders = 12
    party = await open_restaurant(edge)
    dish = await add_menu_item(edge, party.manager, price_minor=500)
    sock = await signed_in(stack, party.staff, "kitchen")
    try:
        before = await _requests_per_replica(stack, "orders")
        # Concurrent creates: both orders processes write events at once.
        placed = await asyncio.gather(*(place_order(edge, party.staff, [line(dish)])
                                        for _ in range(orders)))
        after = await _requests_per_replica(stack, "orders")
        assert all(after[addr] > before[addr] for addr in before), (before, after)

        events = await sock.events(orders, timeout=15)
        sequences = [int(event["id"]) for event in events]
        assert sequences == list(range(sequences[0], sequences[0] + orders)), sequences
        assert sorted(e["data"]["order"]["id"] for e in events) == sorted(o["id"] for o in placed)
        with pytest.raises(TimeoutError):
            extra = await sock.next("order.created", "order.updated", "order.status_changed",
                                    timeout=0.5)
            pytest.fail(f"an event arrived twice: {extra}")
    finally:
        await sock.close()
