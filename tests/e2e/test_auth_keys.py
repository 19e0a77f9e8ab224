"""Signing-key rotation on the running stack: a new key is published before it signs, tokens of
the previous key keep working, and a key that is not published is refused everywhere.

The test stack refetches the JWKS every 2 s (JWKS_REFRESH_SECONDS, EDGE_JWKS_CACHE_SECONDS), so a
publish lead of a few seconds is the same margin production gets from its 300 s lead.
"""

from __future__ import annotations

import asyncio
import time

import jwt

from services.auth import keys
from services.auth.keys import SigningKey, load_private_key
from tests.support.accounts import error_reason, login, register_and_login
from tests.support.tokens import bearer, mint_token


def _kid(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


async def _published_kids(edge) -> list[str]:
    reply = await edge.get("/.well-known/jwks.json")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/json")
    return [key["kid"] for key in reply.json()["keys"]]


async def test_jwks_publishes_only_public_es256_keys(edge):
    reply = await edge.get("/.well-known/jwks.json")
    keys_ = reply.json()["keys"]
    assert keys_, "at least the signing key is published"
    for key in keys_:
        assert key["kty"] == "EC" and key["crv"] == "P-256" and key["alg"] == "ES256"
        assert key["use"] == "sig" and key["kid"] and key["x"] and key["y"]
        assert "d" not in key, "a private key must never be published"


async def test_rotation_publishes_before_signing_and_the_previous_key_keeps_verifying(edge, stack):
    before = await register_and_login(edge)
    old_kid = _kid(before.access_token)

    lead = 3 * max(stack.settings.jwks_refresh_seconds, stack.settings.edge_jwks_cache_seconds)
    new = await asyncio.to_thread(keys.rotate, stack.settings, publish_lead_seconds=lead)
    assert new.kid != old_kid and new.sign_from - new.publish_at == lead

    # Published (next to the old key) well before it signs...
    deadline = time.monotonic() + 5
    while new.kid not in (kids := await _published_kids(edge)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert new.kid in kids and old_kid in kids
    if time.time() < new.sign_from - 1:
        early = (await login(edge, before.email, before.password)).json()
        assert _kid(early["access_token"]) == old_kid, "a key must not sign before its time"

    # ...then it signs, and every service (and the edge) accepts its tokens at once.
    await asyncio.sleep(max(0.0, new.sign_from - time.time()) + 1.5)
    after = (await login(edge, before.email, before.password)).json()
    assert _kid(after["access_token"]) == new.kid
    for path in ("/api/v1/auth/me", "/api/v1/restaurants"):
        reply = await edge.get(path, headers=bearer(after["access_token"]))
        assert reply.status_code == 200, (path, reply.text)

    # The previous key's tokens still verify until they expire.
    assert old_kid in await _published_kids(edge)
    for path in ("/api/v1/auth/me", "/api/v1/restaurants"):
        reply = await edge.get(path, headers=before.headers)
        assert reply.status_code == 200, (path, reply.text)
    verify = (await edge.post("/api/v1/auth/verify", json={"token": before.access_token})).json()
    assert verify["valid"] is True


async def test_a_token_signed_by_a_key_that_is_not_yet_published_is_refused(edge, stack):
    account = await register_and_login(edge)
    now = time.time()
    scheduled = await asyncio.to_thread(keys.add_key, stack.settings, publish_at=now + 3600,
                                        sign_from=now + 7200)
    try:
        await asyncio.sleep(1.5)  # the auth service has re-read the key ring by now
        assert scheduled.kid not in await _published_kids(edge)
        unpublished = SigningKey(scheduled.kid, "ES256",
                                 load_private_key(stack.settings.keys_dir, scheduled.kid))
        claims = jwt.decode(account.access_token, options={"verify_signature": False})
        token = mint_token(stack, key=unpublished, **claims)

        reply = await edge.get("/api/v1/auth/me", headers=bearer(token))
        assert reply.status_code == 401 and error_reason(reply) == "TOKEN_INVALID"
        verify = (await edge.post("/api/v1/auth/verify", json={"token": token})).json()
        assert verify["valid"] is False and verify["reason"] == "TOKEN_INVALID"
        # The same claims under the current key are fine: only the key was wrong.
        assert (await edge.get("/api/v1/auth/me", headers=account.headers)).status_code == 200
    finally:
        await asyncio.to_thread(keys.discard_unpublished, stack.settings, scheduled.kid)
