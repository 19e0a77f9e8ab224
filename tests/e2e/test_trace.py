"""One trace from the till to the kitchen screen: with a real OTLP/gRPC receiver, a
`POST /api/v1/orders` is one trace holding Envoy's span, the orders RPC and its SQL, the relay's
publish to Redis and realtime's delivery to the screen's socket, each the child of the one
before (docs/observability.md)."""

from __future__ import annotations

import os
import re
from typing import AsyncIterator

import pytest
import pytest_asyncio

from tests.support.orders import add_menu_item, line, open_restaurant, order_body, place_order
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.realtime import signed_in
from tests.support.stacks import edge_client, own_stack


@pytest_asyncio.fixture(scope="module")
async def traced() -> AsyncIterator[tuple]:
    """A stack of its own exporting every span to a receiver in this process (the session stack
    exports nothing); the services' batch exporters flush every 200 ms."""
    previous = os.environ.get("OTEL_BSP_SCHEDULE_DELAY")
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "200"
    try:
        async with OtlpReceiver() as receiver:
            async with own_stack(otel_exporter_otlp_endpoint=receiver.endpoint) as system:
                async with edge_client(system) as edge:
                    yield system, edge, receiver
    finally:
        if previous is None:
            os.environ.pop("OTEL_BSP_SCHEDULE_DELAY", None)
        else:
            os.environ["OTEL_BSP_SCHEDULE_DELAY"] = previous


def _ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain = []
    while span.parent_span_id and span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append(span)
    return chain


def _one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [span for span in spans if span.service == service and span.name == name]
    assert len(found) == 1, (service, name, found)
    return found[0]


async def test_an_order_is_one_trace_from_the_edge_to_the_kitchen_screen(traced):
    system, edge, receiver = traced
    party = await open_restaurant(edge)
    dish = await add_menu_item(edge, party.manager)
    kitchen = await signed_in(system, party.manager, "kitchen")

    reply = await edge.post("/api/v1/orders", json=order_body([line(dish)]),
                            headers=party.staff.headers)
    assert reply.status_code == 200, reply.text
    frame = await kitchen.next("order.created", timeout=10)
    assert frame["data"]["order"]["id"] == reply.json()["id"]

    def create_trace(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        servers = [s for s in spans if s.name == "/posmesh.orders.v1.OrderService/CreateOrder"]
        if not servers:
            return []
        trace = [s for s in spans if s.trace_id == servers[-1].trace_id]
        names = {(s.service, s.name) for s in trace}
        wanted = {("posmesh-orders", "orders.relay.publish"),
                  ("posmesh-realtime", "realtime.deliver")}
        return trace if wanted <= names and any(s.service == "posmesh-edge" for s in trace) else []

    await receiver.wait_for(create_trace, timeout=30)
    trace = create_trace(receiver.spans)
    by_id = {span.span_id: span for span in trace}

    deliver = _one(trace, "posmesh-realtime", "realtime.deliver")
    publish = _one(trace, "posmesh-orders", "orders.relay.publish")
    create = _one(trace, "posmesh-orders", "/posmesh.orders.v1.OrderService/CreateOrder")
    (edge_span,) = [span for span in trace if span.service == "posmesh-edge"]

    # edge → orders RPC → SQL → relay publish → realtime delivery, each below the one before.
    assert deliver.parent_span_id == publish.span_id
    assert deliver.attributes["posmesh.sockets"] >= 1
    publish_chain = _ancestors(publish, by_id)
    assert create in publish_chain, "the relay's publish is not below the CreateOrder call"
    sql = publish_chain[0]
    assert sql.service == "posmesh-orders" and sql.attributes.get("db.system") == "postgresql"
    assert edge_span in _ancestors(create, by_id), "the orders call is not below Envoy's span"
    assert not edge_span.parent_span_id, "the edge's span is the root"
    await kitchen.close()


async def test_the_public_watch_stream_does_not_carry_trace_context(traced):
    system, edge, receiver = traced
    party = await open_restaurant(edge)
    dish = await add_menu_item(edge, party.manager)
    await place_order(edge, party.staff, [line(dish)])

    async with edge.stream("GET", f"/api/v1/restaurants/{party.restaurant_id}/orders:watch",
                           params={"after_event_id": "0"}, headers=party.staff.headers) as reply:
        assert reply.status_code == 200
        body = b""
        async for chunk in reply.aiter_bytes():
            body += chunk
            if b"order.created" in body:
                break
    assert b"order.created" in body
    # The transcoder prints every field (zero values too): present, but always empty.
    assert b'"traceparent":""' in body
    assert re.search(rb'"traceparent":"[^"]', body) is None


@pytest.mark.parametrize("traceparent", ["", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"])
def test_a_missing_or_malformed_stored_trace_context_starts_no_broken_span(traceparent):
    from posmesh.common import telemetry

    assert telemetry.context_of(traceparent) is None
