"""Every RPC the edge routes × every kind of paired device × its own or another restaurant, over
native gRPC through Envoy: a device's own token (no person) reaches exactly the RPCs its type is
listed for in the permission table and is refused with DEVICE_FORBIDDEN everywhere else; a
device-only RPC refuses a person's token with DEVICE_REQUIRED; where a device may call, another
restaurant named in the request is TENANT_MISMATCH. Generated from posmesh/common/permissions.py,
so a new RPC is covered the day it is added. Requests are empty: an admitted call fails (or not)
on its input, which is all this matrix needs to see; nothing a device may call changes data when
its input is empty."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import message_factory

from posmesh.auth.v1 import auth_pb2
from posmesh.common import permissions
from posmesh.common.permissions import Access
from posmesh.health.v1 import health_pb2
from posmesh.orders.v1 import orders_pb2
from posmesh.realtime.v1 import realtime_pb2
from posmesh.staff.v1 import staff_pb2
from stack.envoy_config import EDGE_SERVICES
from tests.support.devices import pair_device, pin_login, set_pin
from tests.support.errors import grpc_reason
from tests.support.orders import open_restaurant

pytestmark = pytest.mark.fuzz

REFUSALS = {"DEVICE_FORBIDDEN", "DEVICE_REQUIRED", "ROLE_FORBIDDEN", "TENANT_MISMATCH",
            "TOKEN_INVALID", "SESSION_REVOKED", "NO_RESTAURANT_CONTEXT", "INTERNAL_ONLY"}


def routed_methods():
    for module in (auth_pb2, staff_pb2, orders_pb2, realtime_pb2, health_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name not in EDGE_SERVICES:
                continue
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                rule = permissions.rule_for(path)
                if rule is not None and rule.access is not Access.PUBLIC:
                    yield path, method, rule


def expected(rule: permissions.Rule, device_type: str, other_restaurant: bool) -> str:
    if device_type not in rule.devices:
        return "DEVICE_FORBIDDEN"
    return "TENANT_MISMATCH" if other_restaurant and rule.tenant_checked else ""


async def call(channel: grpc.aio.Channel, path: str, method, token: str,
               restaurant_id: str) -> str:
    """The refusal reason the edge or the service answered with; "" when the call was admitted."""
    request_class = message_factory.GetMessageClass(method.input_type)
    metadata = (("authorization", f"Bearer {token}"), ("x-restaurant-id", restaurant_id))
    kind = channel.unary_stream if method.server_streaming else channel.unary_unary
    stub = kind(path, request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=lambda b: b)
    try:
        if method.server_streaming:
            async for _ in stub(request_class(), metadata=metadata, timeout=1.5):
                return ""
        else:
            await stub(request_class(), metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and method.server_streaming:
            return ""  # admitted, and waiting for events
        reason = grpc_reason(error)
        return reason if reason in REFUSALS else ""
    return ""


@pytest.fixture(scope="module")
async def floor(edge):
    party, other = await open_restaurant(edge), await open_restaurant(edge)
    devices = {kind: await pair_device(edge, party.manager, kind)
               for kind in permissions.DEVICE_TYPES}
    await set_pin(edge, party.staff, "2580")
    clerk = await pin_login(edge, devices["TILL"], party.staff, "2580")
    return party, other, devices, clerk


@pytest.fixture
async def channel(stack):
    credentials = grpc.ssl_channel_credentials(stack.ca_file.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{stack.settings.edge_port}",
                                       credentials) as opened:
        yield opened


@pytest.mark.parametrize("device_type", permissions.DEVICE_TYPES)
async def test_a_devices_own_token_reaches_exactly_what_its_type_is_listed_for(
        channel, floor, device_type):
    party, other, devices, _ = floor
    device = devices[device_type]
    wrong = []
    for path, method, rule in routed_methods():
        for other_restaurant in (False, True):
            restaurant = other.restaurant_id if other_restaurant else party.restaurant_id
            got = await call(channel, path, method, device.access_token, restaurant)
            want = expected(rule, device_type, other_restaurant)
            if got != want:
                wrong.append(f"{path} other={other_restaurant}: {got or 'admitted'} != "
                             f"{want or 'admitted'}")
    assert wrong == []


async def test_device_only_rpcs_refuse_a_persons_token_even_on_a_till(channel, floor):
    party, _, _, clerk = floor
    device_only = [(path, method) for path, method, rule in routed_methods()
                   if rule.access is Access.DEVICE]
    assert device_only, "the permission table has device-only RPCs"
    for token in (clerk.access_token, party.manager.access_token):
        for path, method in device_only:
            assert await call(channel, path, method, token, party.restaurant_id) \
                == "DEVICE_REQUIRED", path
