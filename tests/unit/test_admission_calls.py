"""Admission control and deadlines on real gRPC calls: the shared interceptor in front of a stand-in
OrderService whose handlers wait as long as asked, in an in-process server."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from posmesh.common import admission as admission_module
from posmesh.common import clients
from posmesh.common.admission import Admission
from posmesh.common.revocations import RevocationSet
from posmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from tests.support.interceptor_rig import (
    authenticator_for,
    bearer,
    call_error,
    error_info,
    make_token,
    new_signing_key,
    serving,
)

IN_FLIGHT = 4
BUSY_READS = 3  # what fills the reads' share (admission.SHEDDABLE_SHARE) of the shared lane


class SlowOrders(orders_pb2_grpc.OrderServiceServicer):
    """GetOrder (shed first) and CreateOrder (shed last) wait `order_id` / `request_id` seconds;
    GetOrder answers in `notes` how much of the request's deadline was left when it started;
    CreateOrder with request_id "cancel" is cancelled from inside, as a bug or a library might."""

    def __init__(self) -> None:
        self.started = 0

    async def GetOrder(self, request, ctx):
        self.started += 1
        left = admission_module.remaining_seconds()
        await asyncio.sleep(float(request.order_id))
        return orders_pb2.Order(id=request.order_id, notes=f"{left:.3f}")

    async def CreateOrder(self, request, ctx):
        self.started += 1
        if request.request_id == "cancel":
            raise asyncio.CancelledError()
        await asyncio.sleep(float(request.request_id))
        return orders_pb2.Order(id="new")


@pytest.fixture(scope="module")
def signing_key():
    return new_signing_key()


@pytest.fixture(scope="module")
def servicer():
    return SlowOrders()


@pytest.fixture(scope="module")
async def orders(signing_key, servicer):
    authenticator = authenticator_for(signing_key, RevocationSet(lifetime_seconds=910,
                                                                 max_entries=100))
    admission = Admission(max_in_flight=IN_FLIGHT, default_deadline_seconds=5)
    async with serving(authenticator, lambda server: orders_pb2_grpc.add_OrderServiceServicer_to_server(
            servicer, server), admission=admission) as channel:
        yield orders_pb2_grpc.OrderServiceStub(channel)


@pytest.fixture
def token(signing_key):
    return bearer(make_token(signing_key))


def get(orders, token, seconds: float, **kwargs):
    return orders.GetOrder(orders_pb2.GetOrderRequest(order_id=str(seconds)), metadata=token,
                           **kwargs)


def create(orders, token, request_id: str, **kwargs):
    return orders.CreateOrder(orders_pb2.CreateOrderRequest(request_id=request_id),
                              metadata=token, **kwargs)


async def test_beyond_capacity_a_read_is_refused_at_once_with_overloaded_and_retry_after(
        orders, token, servicer):
    busy = [asyncio.ensure_future(get(orders, token, 0.5)) for _ in range(BUSY_READS)]
    await asyncio.sleep(0.1)
    started = servicer.started

    began = time.monotonic()
    error = await call_error(get(orders, token, 0))
    answered_in = time.monotonic() - began

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(error)
    assert info.reason == "OVERLOADED" and info.metadata["retry_after_seconds"] == "1"
    assert ("retry-after", "1") in tuple(error.trailing_metadata())
    assert servicer.started == started  # refused before the handler ran
    assert answered_in < 0.1
    await asyncio.gather(*busy)


async def test_order_writes_are_admitted_while_reads_are_being_refused(orders, token):
    busy = [asyncio.ensure_future(get(orders, token, 0.5)) for _ in range(BUSY_READS)]
    await asyncio.sleep(0.1)

    assert (await create(orders, token, "0")).id == "new"
    assert error_info(await call_error(get(orders, token, 0))).reason == "OVERLOADED"
    await asyncio.gather(*busy)


async def test_a_request_that_queued_too_long_before_reaching_the_service_is_refused(
        orders, token):
    stale = (("x-request-start", f"t={time.time() - 0.5:.3f}"),)

    error = await call_error(orders.GetOrder(orders_pb2.GetOrderRequest(order_id="0"),
                                             metadata=token + stale))

    assert error_info(error).reason == "OVERLOADED"
    fresh = (("x-request-start", f"t={time.time():.3f}"),)
    await orders.GetOrder(orders_pb2.GetOrderRequest(order_id="0"), metadata=token + fresh)


async def test_a_call_past_its_deadline_answers_deadline_exceeded_with_its_reason_in_time(
        orders, token):
    began = time.monotonic()
    error = await call_error(get(orders, token, 2, timeout=0.4))
    answered_in = time.monotonic() - began

    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error_info(error).reason == "DEADLINE_EXCEEDED"  # ours, not gRPC's bare one
    assert answered_in < 0.4


async def test_the_handler_runs_under_the_callers_deadline_or_the_default(orders, token):
    with_deadline = await get(orders, token, 0, timeout=2)
    without = await get(orders, token, 0)

    assert 1.5 < float(with_deadline.notes) < 2
    assert 4.5 < float(without.notes) <= 5


async def test_a_cancellation_from_inside_the_service_is_answered_not_left_hanging(
        orders, token):
    began = time.monotonic()
    error = await call_error(create(orders, token, "cancel", timeout=5))

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "SERVICE_UNAVAILABLE"
    assert time.monotonic() - began < 1


async def test_calls_to_other_services_get_only_what_remains_of_the_request(orders, token):
    """posmesh/common/clients.py: a downstream call inherits the remaining deadline."""
    seen = []

    class Downstream(orders_pb2_grpc.OrderServiceServicer):
        async def GetOrder(self, request, ctx):
            seen.append(ctx.time_remaining())
            return orders_pb2.Order(id="downstream")

    server = grpc.aio.server()
    orders_pb2_grpc.add_OrderServiceServicer_to_server(Downstream(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = clients.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = orders_pb2_grpc.OrderServiceStub(channel)
        token = Admission.start_deadline(0.8)  # as while serving a request with 0.8 s left
        try:
            await stub.GetOrder(orders_pb2.GetOrderRequest(order_id="x"))
        finally:
            Admission.end_deadline(token)
        await stub.GetOrder(orders_pb2.GetOrderRequest(order_id="x"))  # outside any request
    finally:
        await channel.close()
        await server.stop(None)

    # grpc-timeout travels in whole units rounded up, so the callee may see a hair more than 0.8 s
    assert 0.5 < seen[0] <= 0.81
    assert seen[1] > 9  # the channel's default deadline (clients.DEFAULT_TIMEOUT_SECONDS)
