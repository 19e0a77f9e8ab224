"""WatchOrders: replay then live, in order, exactly once — over gRPC straight to the service, as
NDJSON through the edge, across reconnects, and while Redis goes away and comes back."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import grpc
import httpx
import pytest
import pytest_asyncio

from posmesh.orders.v1 import orders_pb2 as pb
from posmesh.orders.v1 import orders_pb2_grpc
from tests.conftest import tls_context
from tests.support.orders import (
    add_menu_item,
    error_reason,
    event_head,
    feed_stub,
    line,
    open_restaurant,
    place_order,
)


@pytest_asyncio.fixture(scope="module")
async def party(stack, edge):
    return await open_restaurant(edge)


@pytest_asyncio.fixture(scope="module")
async def dish(edge, party):
    return await add_menu_item(edge, party.manager, price_minor=900, tax_rate_ppm=200_000)


class GrpcWatch:
    """A WatchOrders call straight to the orders service, collecting events in the background."""

    def __init__(self, stack, member, after: str) -> None:
        self.channel = stack.channel("orders")
        stub = orders_pb2_grpc.OrderServiceStub(self.channel)
        self.call = stub.WatchOrders(pb.WatchOrdersRequest(restaurant_id=member.restaurant_id,
                                                           after_event_id=after),
                                     metadata=member.grpc_metadata)
        self.messages: list[pb.WatchOrdersResponse] = []
        self.arrived = asyncio.Event()
        self.task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        try:
            async for message in self.call:
                self.messages.append(message)
                self.arrived.set()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise

    @property
    def sequences(self) -> list[int]:
        return [m.event.sequence for m in self.messages if m.HasField("event")]

    async def until(self, sequence: int, timeout: float = 15.0) -> list[int]:
        async with asyncio.timeout(timeout):
            while not self.sequences or self.sequences[-1] < sequence:
                if self.task.done():
                    self.task.result()
                    raise AssertionError(f"stream ended at {self.sequences[-1:]}")
                self.arrived.clear()
                await self.arrived.wait()
        return self.sequences

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.channel.close()


async def new_orders(edge, party, dish, count: int) -> list[dict]:
    return [await place_order(edge, party.staff, [line(dish)]) for _ in range(count)]


async def test_grpc_watch_replays_then_streams_live_and_resumes_without_gap_or_duplicate(
        stack, edge, party, dish):
    start = await event_head(stack, party.restaurant_id)
    await new_orders(edge, party, dish, 3)
    first = GrpcWatch(stack, party.staff, str(start))
    assert await first.until(start + 3) == [start + 1, start + 2, start + 3]  # replay
    await new_orders(edge, party, dish, 2)
    assert await first.until(start + 5) == list(range(start + 1, start + 6))  # live
    await first.close()

    await new_orders(edge, party, dish, 2)  # missed while disconnected
    resumed = GrpcWatch(stack, party.staff, str(start + 5))
    await asyncio.sleep(0.05)
    await new_orders(edge, party, dish, 2)  # arrives while the replay may still be running
    assert await resumed.until(start + 9) == list(range(start + 6, start + 10))
    await asyncio.sleep(0.3)
    assert resumed.sequences == list(range(start + 6, start + 10)), "nothing repeated afterwards"
    await resumed.close()


async def test_events_carry_the_order_after_the_change(stack, edge, party, dish):
    start = await event_head(stack, party.restaurant_id)
    watch = GrpcWatch(stack, party.staff, "")
    await asyncio.sleep(0.2)
    order = await place_order(edge, party.staff, [line(dish, 2)])
    moved = (await edge.post(f"/api/v1/orders/{order['id']}/status", headers=party.staff.headers,
                             json={"status": "SENT_TO_KITCHEN", "version": 1})).json()
    await watch.until(start + 2)
    created, changed = (m.event for m in watch.messages if m.HasField("event"))
    assert (created.type, created.id, created.order.id) == ("order.created", str(start + 1), order["id"])
    assert created.order.total_minor == 2160
    assert (changed.type, changed.previous_status, changed.order.status) == (
        "order.status_changed", pb.OPEN, pb.SENT_TO_KITCHEN)
    assert changed.order.version == moved["version"] == 2
    assert created.restaurant_id == party.restaurant_id
    await watch.close()


async def ndjson(edge_client: httpx.AsyncClient, party, after: str, until: int,
                 timeout: float = 15.0) -> list[dict]:
    """Reads the edge's NDJSON stream until the event `until` (then hangs up)."""
    received = []
    async with asyncio.timeout(timeout):
        async with edge_client.stream(
                "GET", f"/api/v1/restaurants/{party.restaurant_id}/orders:watch",
                params={"after_event_id": after}, headers=party.staff.headers) as reply:
            assert reply.status_code == 200, await reply.aread()
            async for text in reply.aiter_lines():
                if not text.strip():
                    continue
                message = json.loads(text)
                received.append(message)
                event = message.get("event")
                if event and int(event["sequence"]) >= until:
                    return received
    raise AssertionError("stream ended early")


def ndjson_sequences(messages: list[dict]) -> list[int]:
    return [int(m["event"]["sequence"]) for m in messages if m.get("event")]


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
async def test_ndjson_through_the_edge_replays_then_streams_live_across_a_reconnect(
        stack, edge, party, dish, http2):
    async with httpx.AsyncClient(base_url=stack.edge_url, verify=tls_context(stack, http2=http2),
                                 http2=http2, timeout=20) as client:
        start = await event_head(stack, party.restaurant_id)
        await new_orders(edge, party, dish, 2)
        reading = asyncio.create_task(ndjson(client, party, str(start), start + 4))
        await asyncio.sleep(0.5)
        await new_orders(edge, party, dish, 2)  # live
        first = await reading
        assert ndjson_sequences(first) == [start + 1, start + 2, start + 3, start + 4]
        assert first[0]["event"]["type"] == "order.created"
        assert first[0]["event"]["order"]["status"] == "OPEN"

        await new_orders(edge, party, dish, 1)  # while disconnected
        reading = asyncio.create_task(ndjson(client, party, str(start + 4), start + 6))
        await asyncio.sleep(0.5)
        await new_orders(edge, party, dish, 1)
        assert ndjson_sequences(await reading) == [start + 5, start + 6]


async def test_a_bad_event_id_is_a_plain_400(edge, party):
    reply = await edge.get(f"/api/v1/restaurants/{party.restaurant_id}/orders:watch",
                           params={"after_event_id": "yesterday"}, headers=party.staff.headers)
    assert (reply.status_code, error_reason(reply)) == (400, "INVALID_EVENT_ID")


async def test_no_event_is_lost_while_redis_is_down_and_after_it_returns(stack, edge, party, dish):
    start = await event_head(stack, party.restaurant_id)
    user_stream = GrpcWatch(stack, party.staff, str(start))
    service_stream = feed_stub(stack).WatchRestaurantOrders(
        pb.WatchRestaurantOrdersRequest(restaurant_id=party.restaurant_id, after_event_id=str(start)))
    service_events: list[int] = []

    async def follow_service_stream() -> None:
        async for message in service_stream:
            if message.HasField("event"):
                service_events.append(message.event.sequence)

    following = asyncio.create_task(follow_service_stream())
    await new_orders(edge, party, dish, 2)
    await user_stream.until(start + 2)

    await stack.stop_redis()
    try:
        await new_orders(edge, party, dish, 3)  # committed while Redis is down
        # Delivered from PostgreSQL while the stream cannot be read.
        await user_stream.until(start + 5, timeout=10)
        await asyncio.sleep(3 - 1)  # keep the outage about 3 s
    finally:
        await stack.start_redis()
    await new_orders(edge, party, dish, 2)  # after the restart: the relay catches up too
    expected = list(range(start + 1, start + 8))
    assert await user_stream.until(start + 7, timeout=20) == expected
    async with asyncio.timeout(20):
        while len(service_events) < 7:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert service_events == expected
    assert user_stream.sequences == expected
    # A client that reconnects now replays exactly the same history.
    late = GrpcWatch(stack, party.staff, str(start))
    assert await late.until(start + 7) == expected
    await late.close()
    service_stream.cancel()
    await asyncio.gather(following, return_exceptions=True)
    await user_stream.close()


async def test_a_watch_beyond_the_newest_event_gets_resync_required(stack, party):
    head = await event_head(stack, party.restaurant_id)
    call = feed_stub(stack).WatchRestaurantOrders(pb.WatchRestaurantOrdersRequest(
        restaurant_id=party.restaurant_id, after_event_id=str(head + 10)), timeout=5)
    messages = [message async for message in call]
    assert [m.resync_required for m in messages] == [True]
    assert messages[0].last_event_id == str(head)


async def test_a_client_too_far_behind_gets_resync_required_and_the_stream_ends(stack, edge):
    party = await open_restaurant(edge)
    item = await add_menu_item(edge, party.manager)  # event 1
    # Simulate a busy restaurant: move its sequence past the replay limit (5000) as if thousands
    # of events had happened since, then one more real event.
    connection = await asyncpg.connect(stack.settings.database_url.replace("+asyncpg", ""))
    try:
        await connection.execute("UPDATE orders.event_sequences SET last_sequence = 6000 "
                                 "WHERE restaurant_id = $1", uuid.UUID(party.restaurant_id))
    finally:
        await connection.close()
    await place_order(edge, party.staff, [line(item)])  # event 6001
    reply = await edge.get(f"/api/v1/restaurants/{party.restaurant_id}/orders:watch",
                           params={"after_event_id": "1"}, headers=party.staff.headers)
    assert reply.status_code == 200
    lines = [json.loads(text) for text in reply.text.splitlines() if text.strip()]
    assert len(lines) == 1
    assert lines[0]["resync_required"] is True and lines[0]["last_event_id"] == "6001"
    # Watching after the newest event then works normally.
    watch = GrpcWatch(stack, party.staff, "6001")
    await asyncio.sleep(0.2)
    await place_order(edge, party.staff, [line(item)])
    assert await watch.until(6002) == [6002]
    await watch.close()


async def test_a_stream_cut_by_a_restart_ends_with_a_readable_error_line_and_resumes(
        stack, edge, party, dish):
    start = await event_head(stack, party.restaurant_id)
    await new_orders(edge, party, dish, 1)
    lines: list[dict] = []
    async with httpx.AsyncClient(base_url=stack.edge_url, verify=tls_context(stack, http2=False),
                                 http2=False, timeout=20) as client:

        async def read_until_the_end() -> None:
            async with client.stream(
                    "GET", f"/api/v1/restaurants/{party.restaurant_id}/orders:watch",
                    params={"after_event_id": str(start)}, headers=party.staff.headers) as reply:
                try:
                    async for text in reply.aiter_lines():
                        if text.strip():
                            lines.append(json.loads(text))
                except httpx.HTTPError:
                    pass  # the connection may close right after the last line

        reading = asyncio.create_task(read_until_the_end())
        async with asyncio.timeout(10):
            while not lines:
                await asyncio.sleep(0.05)
        await stack.stop_every("orders")
        try:
            await asyncio.wait_for(reading, 15)
        finally:
            await stack.start_every("orders")
    assert ndjson_sequences(lines) == [start + 1]
    last = lines[-1]["error"]
    assert last["code"] == 14  # UNAVAILABLE: retry
    assert last["details"][0]["reason"] == "SERVICE_SHUTTING_DOWN"
    assert last["details"][0]["metadata"]["last_event_id"] == str(start + 1)
    # Resuming from the last event id gives what happened meanwhile, once.
    await new_orders(edge, party, dish, 1)
    watch = GrpcWatch(stack, party.staff, str(start + 1))
    assert await watch.until(start + 2) == [start + 2]
    await watch.close()


async def test_several_relays_put_every_event_on_the_stream_once_and_in_order(stack, edge, party, dish):
    """Three more relays (as three more orders processes would run) race the service's own."""
    from posmesh.common.redis import create_redis
    from services.orders.relay import EventSignals, Relay, stream_key
    from services.orders.store import OrdersStore

    store = await OrdersStore.open(stack.settings)
    redis = create_redis(stack.settings)
    relays = [Relay(stack.settings, store, redis, EventSignals()) for _ in range(3)]
    start = await event_head(stack, party.restaurant_id)

    async def keep_relaying(relay: Relay, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await relay.publish_round()
            await asyncio.sleep(0)

    stop = asyncio.Event()
    racing = [asyncio.create_task(keep_relaying(relay, stop)) for relay in relays]
    try:
        await asyncio.gather(*(place_order(edge, party.staff, [line(dish)]) for _ in range(20)))
        async with asyncio.timeout(10):
            while True:
                newest = await redis.xrevrange(stream_key(party.restaurant_id), count=1)
                if newest and newest[0][0] == f"{start + 20}-0".encode():
                    break
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*racing)
    entries = await redis.xrange(stream_key(party.restaurant_id), min=f"{start + 1}-0")
    assert [entry for entry, _ in entries] == [f"{n}-0".encode() for n in range(start + 1, start + 21)]
    assert [int(fields[b"seq"]) for _, fields in entries] == list(range(start + 1, start + 21))
    assert sum(relay.published for relay in relays) <= 20
    await redis.aclose()
    await store.close()

