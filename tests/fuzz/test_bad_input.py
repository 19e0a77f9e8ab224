"""Every mobile route, fuzzed through Envoy: whatever the path, query, body or headers, the answer
is a 4xx with a JSON error and a reason (or a 200 when the input happened to be valid) — never a
5xx, never a hang — and no service logs an unhandled exception."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.errors import json_reason
from tests.fuzz.inputs import Request, draw, requests_for
from tests.fuzz.routes import Route, mobile_routes

pytestmark = pytest.mark.fuzz

EXAMPLES_PER_ROUTE = 25
CONCURRENCY = 8
NO_HANG_SECONDS = 10.0
# Signing out would end the session the fuzzer uses for every other route (it is covered with
# bad tokens in test_tokens.py).
SKIPPED = {"Logout"}

ROUTES = [route for route in mobile_routes() if route.method_name not in SKIPPED]


async def send(client: httpx.AsyncClient, request: Request, token: str) -> tuple[int, bytes]:
    headers = {"authorization": f"Bearer {token}", **request.headers}
    if request.body is not None and "content-type" not in request.headers:
        headers["content-type"] = "application/json"
    built = client.build_request(request.method, request.path, params=request.params,
                                 headers=headers, content=request.body)
    response = await client.send(built, stream=True)
    try:
        if request.route.streaming and response.status_code == 200:
            return 200, b""  # a live stream: the headers are the answer
        return response.status_code, await response.aread()
    finally:
        await response.aclose()


def verdict(status: int, body: bytes) -> str | None:
    """None when the answer is acceptable, else what is wrong with it."""
    if status >= 500:
        return f"server error {status}"
    if status >= 400:
        if not json_reason(body):
            return f"{status} without a JSON error reason: {body[:200]!r}"
    elif status != 200:
        return f"unexpected status {status}"
    return None


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
async def test_bad_input_gets_a_clear_4xx_never_a_5xx_or_a_hang(
        stack, edge, edge_http1, fuzz_world, no_unhandled_errors, route: Route):
    world = fuzz_world
    ids = {"restaurant_id": [world.a.restaurant_id, world.b.restaurant_id],
           "order_id": [world.a_order["id"], world.b_order["id"], "active"],
           "item_id": [world.a_dish["id"], world.b_dish["id"]],
           "line_id": [world.a_order["lines"][0]["id"]],
           "employee_id": [world.b.staff.user_id]}
    examples = draw(requests_for(route, ids, [world.a.restaurant_id, world.b.restaurant_id]),
                    EXAMPLES_PER_ROUTE)
    gate = asyncio.Semaphore(CONCURRENCY)
    problems: list[str] = []

    async def one(request: Request) -> None:
        async with gate:
            client = edge_http1 if request.http1 else edge
            try:
                status, body = await asyncio.wait_for(
                    send(client, request, world.a.owner.access_token), NO_HANG_SECONDS)
            except asyncio.TimeoutError:
                problems.append(f"no answer within {NO_HANG_SECONDS}s: {request.describe()}")
                return
            except httpx.RemoteProtocolError as exc:
                # HTTP/2: headers over the edge's 32 KiB limit are refused by resetting the
                # stream (HTTP/1.1 gets a 431 JSON error instead).
                if request.http1 or request.header_bytes() <= 32 * 1024 - 1024:
                    problems.append(f"connection error {exc!r}: {request.describe()}")
                return
            except (httpx.LocalProtocolError, httpx.InvalidURL):
                return  # the client itself refused to send it (a header or URL it cannot encode)
            problem = verdict(status, body)
            if problem:
                problems.append(f"{problem}: {request.describe()}")
            if world.b_dish["name"] in body.decode("utf-8", "replace"):
                problems.append(f"another restaurant's data in the answer: {request.describe()}")

    await asyncio.gather(*(one(request) for request in examples))
    assert not problems, "\n".join(problems[:10])
