"""The edge's admission control: a real Envoy from the real template, ADMISSION_MAX_IN_FLIGHT=1,
in front of a stand-in auth service whose VerifyToken (shed last) and GetMe (shed first) wait.

Over capacity Envoy's circuit breakers refuse at once with the API's JSON error (OVERLOADED) and
Retry-After; a refusal the service makes itself reaches HTTP clients the same way; every call
carries a deadline; shed-last calls have a budget of their own."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import pytest_asyncio
from google.api import httpbody_pb2

from posmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from posmesh.common.admission import overloaded
from posmesh.common.interceptors import abort
from tests.support.restaurants import error_metadata, error_reason
from tests.support.standin_edge import standin_edge

WAIT_SECONDS = 0.6


class WaitingAuth(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self) -> None:
        self.deadlines: list[float | None] = []

    async def VerifyToken(self, request, context):
        """Waits, unless the token says "refuse": then refuses as the service's own admission
        control does."""
        if request.token == "refuse":
            await abort(context, overloaded("the service is at capacity; retry shortly"))
        self.deadlines.append(context.time_remaining())
        await asyncio.sleep(WAIT_SECONDS)
        return auth_pb2.VerifyTokenResponse(valid=False, reason="WAITED")

    async def GetJwks(self, request, context):
        await asyncio.sleep(WAIT_SECONDS)
        return httpbody_pb2.HttpBody(content_type="application/json", data=b'{"keys": []}')


@pytest_asyncio.fixture(scope="module")
async def stand_in() -> AsyncIterator[tuple]:
    auth = WaitingAuth()
    async with standin_edge(lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(
            auth, server), ADMISSION_MAX_IN_FLIGHT=1) as client:
        yield client, auth


def verify(client, token: str = "x"):
    return client.post("/api/v1/auth/verify", json={"token": token})


async def test_beyond_capacity_the_edge_refuses_at_once_with_overloaded_and_retry_after(stand_in):
    client, _ = stand_in
    first = asyncio.ensure_future(verify(client))
    await asyncio.sleep(0.15)

    began = time.monotonic()
    refused = await verify(client)
    answered_in = time.monotonic() - began

    assert refused.status_code == 503
    assert error_reason(refused) == "OVERLOADED"
    assert error_metadata(refused)["retry_after_seconds"] == "1"
    assert refused.headers["retry-after"] == "1"
    assert answered_in < 0.1  # refused, not queued behind the call in flight
    assert (await first).status_code == 200


async def test_a_refusal_by_the_service_reaches_http_clients_with_retry_after(stand_in):
    client, _ = stand_in

    refused = await verify(client, "refuse")

    assert refused.status_code == 503 and error_reason(refused) == "OVERLOADED"
    assert refused.headers["retry-after"] == "1"


async def test_every_transcoded_call_carries_the_edges_timeout_as_its_deadline(stand_in):
    client, auth = stand_in

    assert (await verify(client)).status_code == 200

    assert 14 < auth.deadlines[-1] <= 15  # EDGE_REQUEST_TIMEOUT_SECONDS


async def test_calls_shed_last_and_other_calls_have_budgets_of_their_own(stand_in):
    """VerifyToken is shed last (HIGH priority); GetJwks is not (DEFAULT): each has its own
    circuit-breaker budget, so one in flight of each is admitted."""
    client, _ = stand_in
    critical = asyncio.ensure_future(verify(client))
    other = asyncio.ensure_future(client.get("/.well-known/jwks.json"))
    await asyncio.sleep(0.15)

    refused = await client.get("/.well-known/jwks.json")

    assert error_reason(refused) == "OVERLOADED"
    assert (await critical).status_code == 200
    assert (await other).status_code == 200
