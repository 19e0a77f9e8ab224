"""Refresh-token rotation over the wire: the grace window for concurrent refreshes, reuse
detection after it, sliding and absolute expiry, and what is (not) stored."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid

from tests.support.accounts import auth_db, error_reason, register_and_login
from tests.support.tokens import bearer

CONCURRENT = 8


async def _refresh(edge, token: str):
    return await edge.post("/api/v1/auth/refresh", json={"refresh_token": token})


async def test_concurrent_refreshes_inside_the_grace_window_all_get_the_same_successor_pair(edge, stack):
    account = await register_and_login(edge, str(uuid.uuid4()), "staff", stack=stack)
    replies = await asyncio.gather(*[_refresh(edge, account.refresh_token) for _ in range(CONCURRENT)])
    assert [reply.status_code for reply in replies] == [200] * CONCURRENT, [r.text for r in replies]
    pairs = {(reply.json()["access_token"], reply.json()["refresh_token"]) for reply in replies}
    assert len(pairs) == 1, "every concurrent refresh must hand out the very same pair"
    access, refresh = pairs.pop()
    assert refresh != account.refresh_token

    # A straggler still inside the window gets that pair again, not a new one and not an error.
    late = await _refresh(edge, account.refresh_token)
    assert late.status_code == 200 and late.json()["refresh_token"] == refresh

    # The shared pair is the live one: it works and rotates normally.
    assert (await edge.get("/api/v1/auth/me", headers=bearer(access))).status_code == 200
    onward = await _refresh(edge, refresh)
    assert onward.status_code == 200 and onward.json()["refresh_token"] != refresh

    async with auth_db(stack) as db:
        rows = await db.fetchval("""
            SELECT count(*) FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
            WHERE s.user_id = $1""", uuid.UUID(account.user_id))
    assert rows == 3, "one rotation per distinct token, however many concurrent calls"


async def test_concurrent_refreshes_after_the_grace_window_are_reuse_and_end_the_session(edge, stack):
    account = await register_and_login(edge, str(uuid.uuid4()), "staff", stack=stack)
    first = await _refresh(edge, account.refresh_token)
    assert first.status_code == 200
    successor = first.json()

    await asyncio.sleep(stack.settings.refresh_grace_seconds + 0.5)
    replies = await asyncio.gather(*[_refresh(edge, account.refresh_token) for _ in range(CONCURRENT)])
    assert {reply.status_code for reply in replies} == {401}
    assert {error_reason(reply) for reply in replies} == {"REFRESH_REUSED"}

    revoked = await edge.get("/api/v1/auth/me", headers=bearer(successor["access_token"]))
    assert revoked.status_code == 401 and error_reason(revoked) == "SESSION_REVOKED"
    dead = await _refresh(edge, successor["refresh_token"])
    assert dead.status_code == 401 and error_reason(dead) == "REFRESH_REUSED"

    async with auth_db(stack) as db:
        session = await db.fetchrow("SELECT revoked_at, revoke_reason FROM sessions WHERE user_id = $1",
                                    uuid.UUID(account.user_id))
        sealed = await db.fetchval("""
            SELECT count(*) FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
            WHERE s.user_id = $1 AND t.sealed_successor IS NOT NULL""", uuid.UUID(account.user_id))
        event = await db.fetchrow("""
            SELECT severity, details FROM security_events
            WHERE type = 'REFRESH_REUSED' AND user_id = $1""", account.user_id)
    assert session["revoked_at"] is not None and session["revoke_reason"] == "REFRESH_REUSED"
    assert sealed == 0, "a revoked session keeps no sealed successor"
    assert event is not None and event["severity"] == "critical"


async def test_only_a_hash_of_each_refresh_token_is_stored(edge, stack):
    account = await register_and_login(edge)
    raw = base64.urlsafe_b64decode(account.refresh_token.removeprefix("pmrt_") + "=")
    async with auth_db(stack) as db:
        stored = await db.fetch("""
            SELECT t.token_hash FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
            WHERE s.user_id = $1""", uuid.UUID(account.user_id))
    assert [bytes(row["token_hash"]) for row in stored] == [hashlib.sha256(raw).digest()]
    assert len(raw) == 32  # 256 random bits


async def test_refresh_slides_the_expiry_but_never_past_the_absolute_maximum(edge, stack):
    account = await register_and_login(edge)
    async with auth_db(stack) as db:
        # Age the sign-in: 100 minutes of absolute lifetime left.
        await db.execute("""
            UPDATE sessions SET absolute_expires_at = now() + interval '100 minutes',
                                expires_at = now() + interval '5 minutes'
            WHERE user_id = $1""", uuid.UUID(account.user_id))
    reply = await _refresh(edge, account.refresh_token)
    assert reply.status_code == 200
    assert 95 * 60 <= reply.json()["refresh_expires_in"] <= 100 * 60

    async with auth_db(stack) as db:
        await db.execute("UPDATE sessions SET absolute_expires_at = now() - interval '1 second' "
                         "WHERE user_id = $1", uuid.UUID(account.user_id))
    expired = await _refresh(edge, reply.json()["refresh_token"])
    assert expired.status_code == 401 and error_reason(expired) == "REFRESH_EXPIRED"


async def test_an_idle_session_past_its_sliding_expiry_cannot_refresh(edge, stack):
    account = await register_and_login(edge)
    async with auth_db(stack) as db:
        await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second' "
                         "WHERE user_id = $1", uuid.UUID(account.user_id))
    reply = await _refresh(edge, account.refresh_token)
    assert reply.status_code == 401 and error_reason(reply) == "REFRESH_EXPIRED"
