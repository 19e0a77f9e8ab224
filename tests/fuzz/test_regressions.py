"""Defects the bad-input suite once found, kept as regression tests of the fixed behaviour:
invalid UTF-8 in a path, an oversized X-Restaurant-Id, a NUL in a restaurant id."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.orders import error_reason, line, order_body

pytestmark = pytest.mark.fuzz


async def test_invalid_utf8_in_a_path_parameter_is_a_400_not_a_500(edge, fuzz_world):
    world = fuzz_world
    for path in (f"/api/v1/restaurants/{world.a.restaurant_id}/menu/categories/%C0%AF",
                 "/api/v1/orders/%ED%A0%80", "/api/v1/employees/%C0%AF"):
        reply = await edge.get(path, headers=world.a.owner.headers) if "orders" in path else \
            await edge.delete(path, headers=world.a.owner.headers)
        assert reply.status_code == 400 and error_reason(reply), (path, reply.status_code, reply.text)


async def test_an_oversized_restaurant_header_is_a_403_and_the_attempt_is_recorded(
        stack, edge, fuzz_world):
    world = fuzz_world
    before = stack.log_offsets("orders")
    reply = await edge.get("/api/v1/orders/active",
                           headers={**world.a.owner.headers, "x-restaurant-id": "x" * 20_000})
    assert (reply.status_code, error_reason(reply)) == (403, "TENANT_MISMATCH"), reply.text[:300]
    await asyncio.sleep(1.0)  # security events are stored in the background
    assert "could not store security event" not in stack.logs_since(before)


async def test_a_tenant_mismatch_with_a_nul_in_the_restaurant_id_is_still_recorded(
        stack, edge, fuzz_world):
    world = fuzz_world
    before = stack.log_offsets("orders")
    body = order_body([line(world.a_dish)])
    body["restaurant_id"] = "evil\u0000restaurant"
    reply = await edge.post("/api/v1/orders", headers=world.a.staff.headers, json=body)
    assert (reply.status_code, error_reason(reply)) == (403, "TENANT_MISMATCH"), reply.text[:300]
    await asyncio.sleep(1.0)
    assert "could not store security event" not in stack.logs_since(before)


@pytest.mark.parametrize("name", ["x-a*b", "x`", "x'y", "x!", "x~y"])
async def test_a_header_name_grpc_metadata_cannot_carry_is_a_400_not_a_500(
        edge_http1, fuzz_world, name):
    """HTTP allows these characters in header names; gRPC metadata does not, and the service
    answered INTERNAL (500) before its interceptor ran. Found by the OpenAPI conformance run."""
    reply = await edge_http1.get("/api/v1/auth/me",
                                 headers={**fuzz_world.a.owner.headers, name: "1"})

    assert (reply.status_code, error_reason(reply)) == (400, "BAD_REQUEST"), reply.text[:300]
    assert "header names" in reply.json()["message"]
