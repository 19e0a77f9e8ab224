"""Every malformed access token is refused: on a protected route through the edge (401 with a
reason), by the service itself when called directly (the edge is not the only lock), and by
introspection (valid=false with the reason)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from posmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from tests.support.errors import grpc_reason
from tests.support.accounts import error_reason, register_and_login
from tests.support.tokens import bearer, malformed_tokens, mint_token, resign


@pytest.fixture
async def signed_in(edge):
    return await register_and_login(edge)


async def test_every_malformed_token_is_refused_on_a_protected_route(edge, edge_http1, stack, signed_in):
    for case in malformed_tokens(stack, signed_in.access_token):
        if case.name == "too_long_100kb":
            # Larger than the edge's header limit: refused before any service sees it (over
            # HTTP/1.1 with 431; over HTTP/2 Envoy resets the connection instead).
            reply = await edge_http1.get("/api/v1/auth/me", headers=bearer(case.token))
            assert reply.status_code == 431 and error_reason(reply) == "HEADERS_TOO_LARGE", reply.text
            continue
        reply = await edge.get("/api/v1/auth/me", headers=bearer(case.token))
        assert reply.status_code == 401, (case.name, reply.status_code, reply.text)
        assert error_reason(reply) == case.reason, (case.name, reply.text)
    # The genuine token still works: the refusals above were about the defects alone.
    assert (await edge.get("/api/v1/auth/me", headers=signed_in.headers)).status_code == 200


async def test_every_malformed_token_is_refused_by_the_service_itself(stack, signed_in):
    async with stack.channel("auth") as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        for case in malformed_tokens(stack, signed_in.access_token):
            if case.name == "too_long_100kb":
                continue  # larger than gRPC's default metadata limit; covered by verify below
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetMe(auth_pb2.GetMeRequest(),
                                 metadata=(("authorization", f"Bearer {case.token}"),), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, case.name
            assert grpc_reason(caught.value) == case.reason, case.name
        await stub.GetMe(auth_pb2.GetMeRequest(), metadata=signed_in.grpc_metadata, timeout=5)


async def test_verify_answers_every_malformed_token_with_valid_false_and_the_reason(edge, stack, signed_in):
    for case in malformed_tokens(stack, signed_in.access_token):
        reply = await edge.post("/api/v1/auth/verify", json={"token": case.token})
        assert reply.status_code == 200, (case.name, reply.text)
        body = reply.json()
        assert body["valid"] is False and body["reason"] == case.reason, (case.name, body)
        assert "claims" not in body and "user" not in body
    # The same through the Bearer header with an empty body (what existing apps send).
    reply = await edge.post("/api/v1/auth/verify", json={},
                            headers=bearer(malformed_tokens(stack, signed_in.access_token)[0].token))
    assert reply.json()["valid"] is False and reply.json()["reason"] == "TOKEN_INVALID"


async def test_a_token_longer_than_the_limit_is_refused_by_the_service_even_when_correctly_signed(edge, stack, signed_in):
    long_token = resign(stack, signed_in.access_token, padding="x" * 9000)
    reply = await edge.get("/api/v1/auth/me", headers=bearer(long_token))
    assert reply.status_code == 401 and error_reason(reply) == "TOKEN_INVALID"


async def test_a_short_lived_token_works_until_it_expires_then_asks_for_a_refresh(edge, stack, signed_in):
    leeway = stack.settings.jwt_leeway_seconds
    token = resign(stack, signed_in.access_token, exp=int(time.time()) - leeway + 2)
    assert (await edge.get("/api/v1/auth/me", headers=bearer(token))).status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reply = await edge.get("/api/v1/auth/me", headers=bearer(token))
        if reply.status_code != 200:
            break
        await asyncio.sleep(0.5)
    assert reply.status_code == 401 and error_reason(reply) == "TOKEN_EXPIRED"
    assert reply.json()["details"][0]["metadata"]["action"] == "REFRESH_TOKEN"


async def test_a_valid_signature_for_a_session_that_never_existed_is_not_a_live_session(edge, stack):
    token = mint_token(stack)  # well-formed and signed, but no such session or user
    reply = await edge.get("/api/v1/auth/me", headers=bearer(token))
    assert reply.status_code == 401 and error_reason(reply) == "SESSION_REVOKED"
    verify = (await edge.post("/api/v1/auth/verify", json={"token": token})).json()
    assert verify["valid"] is False and verify["reason"] == "SESSION_REVOKED"
