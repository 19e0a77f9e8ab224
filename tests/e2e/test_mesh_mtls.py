"""Zero trust inside the mesh, over the wire with real certificates: every service port speaks
mutual TLS only, a certificate from another CA is refused, and each RPC answers only the callers
the caller table names (posmesh/common/callers.py); the others get CALLER_FORBIDDEN and leave a
security event."""

from __future__ import annotations

import asyncio
import ssl
import time

import grpc
import httpx
import pytest

from posmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from posmesh.common import callers, mesh_tls
from posmesh.common.clients import CHANNEL_OPTIONS
from stack import mesh_certs
from tests.support.accounts import auth_db
from tests.support.errors import grpc_reason
from tests.support.realtime import direct_client

INTERNAL = [method for method, allowed in callers.CALLERS.items()
            if method.startswith("/posmesh.") and callers.EDGE not in allowed]


def _raw_call(channel: grpc.aio.Channel, method: str):
    """The RPC with an empty request, whatever its messages (the answer is not read)."""
    identity = lambda data: data  # noqa: E731
    if method.endswith("/WatchRestaurantOrders"):
        return channel.unary_stream(method, request_serializer=identity,
                                    response_deserializer=identity)(b"", timeout=3)
    return channel.unary_unary(method, request_serializer=identity,
                               response_deserializer=identity)(b"", timeout=5)


async def _call_error(channel: grpc.aio.Channel, method: str) -> grpc.aio.AioRpcError | None:
    call = _raw_call(channel, method)
    try:
        if isinstance(call, grpc.aio.UnaryStreamCall):
            async for _ in call:
                break
            call.cancel()
        else:
            await call
    except grpc.aio.AioRpcError as error:
        return error
    return None


def _service_of(method: str) -> str:
    return method.split(".")[1]


@pytest.mark.parametrize("service", ["auth", "staff", "orders", "realtime"])
async def test_a_plaintext_call_to_a_service_port_gets_no_answer(stack, service):
    async with grpc.aio.insecure_channel(stack.addr(service)) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=3)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert grpc_reason(caught.value) == ""  # refused in the handshake: no service answered


async def test_a_certificate_from_another_ca_is_refused_in_the_handshake(stack, tmp_path):
    other_ca, other_key = mesh_certs.new_ca("someone else's CA")
    forged = mesh_certs.issue(tmp_path, "staff", other_ca, other_key)  # claims to be staff
    credentials = grpc.ssl_channel_credentials(
        root_certificates=stack.mesh_files("staff").ca_file.read_bytes(),
        private_key=forged.key_file.read_bytes(), certificate_chain=forged.cert_file.read_bytes())
    options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", mesh_tls.server_name("auth"))]
    async with grpc.aio.secure_channel(stack.addr("auth"), credentials, options=options) as channel:
        stub = auth_pb2_grpc.AuthAdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.FindUserByEmail(auth_pb2.FindUserByEmailRequest(email="a@example.com"),
                                       timeout=3)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert grpc_reason(caught.value) == ""


async def test_a_service_calling_an_rpc_it_may_not_call_is_refused_with_a_security_event(stack):
    started = time.time()
    async with stack.channel("auth", as_identity="orders") as channel:
        stub = auth_pb2_grpc.AuthAdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GrantMembership(auth_pb2.GrantMembershipRequest(), timeout=5)

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert grpc_reason(caught.value) == "CALLER_FORBIDDEN"
    assert "orders" in caught.value.details() and "GrantMembership" in caught.value.details()
    async with auth_db(stack) as db:
        for _ in range(50):
            row = await db.fetchrow(
                "SELECT severity, details FROM security_events WHERE type = 'CALLER_FORBIDDEN' "
                "AND details->>'caller' = 'orders' AND details->>'method' LIKE '%/GrantMembership' "
                "AND occurred_at >= to_timestamp($1)", started - 1)
            if row is not None:
                break
            await asyncio.sleep(0.1)
    assert row is not None and row["severity"] == "critical"


async def test_the_edge_may_not_follow_the_order_feed_only_realtime_may(stack):
    method = "/posmesh.orders.v1.OrderFeedService/WatchRestaurantOrders"
    async with stack.channel("orders", as_identity="edge") as channel:
        refused = await _call_error(channel, method)
    async with stack.channel("orders", as_identity="realtime") as channel:
        allowed = await _call_error(channel, method)

    assert refused is not None and grpc_reason(refused) == "CALLER_FORBIDDEN"
    assert allowed is None or grpc_reason(allowed) != "CALLER_FORBIDDEN"


@pytest.mark.parametrize("method", INTERNAL)
async def test_each_internal_rpc_answers_the_callers_the_table_names_and_no_other(stack, method):
    for caller in sorted(callers.MESH):
        async with stack.channel(_service_of(method), as_identity=caller) as channel:
            error = await _call_error(channel, method)
        refused = error is not None and grpc_reason(error) == "CALLER_FORBIDDEN"
        assert refused != callers.may_call(caller, method), (caller, error)


async def test_the_realtime_websocket_port_refuses_plaintext_and_every_caller_but_the_edge(stack):
    started = time.time()
    addr = stack.settings.realtime_ws_addr
    async with httpx.AsyncClient(timeout=5) as plain:
        with pytest.raises(httpx.HTTPError):
            await plain.get(f"http://{addr}/healthz")
    files = stack.mesh_files("orders")
    context = ssl.create_default_context(cafile=str(files.ca_file))
    context.load_cert_chain(files.cert_file, files.key_file)
    async with httpx.AsyncClient(timeout=5, verify=context) as as_orders:
        refused = await as_orders.get(f"https://{addr}/healthz")
    async with direct_client(stack) as as_edge:
        allowed = await as_edge.get(f"https://{addr}/healthz")

    assert refused.status_code == 403
    assert allowed.status_code == 200
    async with auth_db(stack) as db:
        for _ in range(50):
            event = await db.fetchrow(
                "SELECT source, severity FROM security_events WHERE type = 'CALLER_FORBIDDEN' "
                "AND details->>'caller' = 'orders' AND details->>'method' = 'realtime WebSocket' "
                "AND occurred_at >= to_timestamp($1)", started - 1)
            if event is not None:
                break
            await asyncio.sleep(0.1)
    assert event is not None and (event["source"], event["severity"]) == ("realtime", "critical")
