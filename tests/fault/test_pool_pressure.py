"""Connection-pool pressure: 500 requests at once against the orders service's pool of 20 + 40
connections. They queue for a connection instead of opening more; PostgreSQL never sees more
than the pools allow, nothing fails with "too many connections", and latency stays bounded."""

from __future__ import annotations

import asyncio
import ssl
import time

import asyncpg
import httpx
import pytest

from tests.support.orders import line, place_order

pytestmark = pytest.mark.fault

CONCURRENT = 500
CLIENTS = 5  # HTTP/2 connections; Envoy allows 100 streams on each
# Each request may wait up to DB_POOL_TIMEOUT (10 s) for a connection; bounded means well below.
BOUNDED_SECONDS = 10.0


async def _database_connections(stack, stop: asyncio.Event, peaks: list[int]) -> None:
    url = stack.settings.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    connection = await asyncpg.connect(url)
    try:
        while not stop.is_set():
            peaks.append(await connection.fetchval("SELECT count(*) FROM pg_stat_activity "
                                                   "WHERE backend_type = 'client backend'"))
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def test_500_concurrent_requests_queue_for_the_pool_and_all_succeed(stack, edge, party, dish):
    orders = [await place_order(edge, party.staff, [line(dish)]) for _ in range(5)]
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    clients = [httpx.AsyncClient(base_url=stack.edge_url, verify=context, http2=True, timeout=30)
               for _ in range(CLIENTS)]
    stop, peaks = asyncio.Event(), []
    watcher = asyncio.ensure_future(_database_connections(stack, stop, peaks))
    before = len(stack.service_log("orders"))

    async def one(index: int) -> tuple[int, float, str]:
        client = clients[index % CLIENTS]
        started = time.monotonic()
        if index % 2:
            reply = await client.get("/api/v1/orders/active", headers=party.staff.headers)
        else:
            reply = await client.get(f"/api/v1/orders/{orders[index % len(orders)]['id']}",
                                     headers=party.staff.headers)
        return reply.status_code, time.monotonic() - started, reply.text[:200]

    try:
        results = await asyncio.gather(*(one(n) for n in range(CONCURRENT)))
    finally:
        stop.set()
        await watcher
        for client in clients:
            await client.aclose()

    failed = [r for r in results if r[0] != 200]
    assert not failed, f"{len(failed)} of {CONCURRENT} failed, e.g. {failed[:3]}"
    slowest = max(seconds for _, seconds, _ in results)
    assert slowest < BOUNDED_SECONDS, f"slowest request took {slowest:.1f}s"
    pools = stack.settings.db_pool_size + stack.settings.db_max_overflow
    # Three database services each within their pool, plus this watcher and the relays' listeners.
    assert max(peaks) <= 3 * pools + 10, f"PostgreSQL saw {max(peaks)} connections"
    log = stack.service_log("orders")[before:]
    assert "too many connections" not in log.lower()
    assert "TooManyConnections" not in log
