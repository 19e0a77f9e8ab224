"""AuthAdminService.ListRevokedSessions on the auth service's own gRPC address: the recently
revoked sessions every service loads its local revocation set from, read from PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from posmesh.auth.v1 import auth_pb2
from posmesh.common.revocations import revocation_lifetime_seconds
from tests.support.accounts import admin_call, auth_db, register_and_login
from tests.support.errors import grpc_reason


async def _session_id(edge, account) -> str:
    return (await edge.get("/api/v1/auth/me", headers=account.headers)).json()["session_id"]


async def _listed(stack, since: datetime, page_size: int = 0) -> tuple[list, list[str]]:
    """Every page from `since`: the sessions, and each page's size."""
    request = auth_pb2.ListRevokedSessionsRequest(page_size=page_size)
    request.since.FromDatetime(since)
    sessions, sizes = [], []
    while True:
        reply = await admin_call(stack, "ListRevokedSessions", request)
        sessions += list(reply.revoked_sessions)
        sizes.append(len(reply.revoked_sessions))
        if not reply.next_page_token:
            return sessions, sizes
        request.page_token = reply.next_page_token


async def test_each_session_revoked_since_a_time_is_listed_with_its_user_restaurant_and_reason(
        stack, edge):
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    restaurant = str(uuid.uuid4())
    leaving = await register_and_login(edge, restaurant, "staff", stack=stack)
    removed = await register_and_login(edge, restaurant, "staff", stack=stack)
    leaving_sid, removed_sid = await _session_id(edge, leaving), await _session_id(edge, removed)
    assert (await edge.post("/api/v1/auth/logout", headers=leaving.headers, json={})).status_code == 200
    await admin_call(stack, "RevokeUserSessions", auth_pb2.RevokeUserSessionsRequest(
        user_id=removed.user_id, reason="EMPLOYEE_DEACTIVATED"))

    sessions, _ = await _listed(stack, before)
    listed = {item.session_id: item for item in sessions}
    after = datetime.now(timezone.utc)

    assert (listed[leaving_sid].user_id, listed[leaving_sid].restaurant_id,
            listed[leaving_sid].reason) == (leaving.user_id, restaurant, "LOGOUT")
    assert (listed[removed_sid].user_id, listed[removed_sid].reason) == (
        removed.user_id, "EMPLOYEE_DEACTIVATED")
    for item in (listed[leaving_sid], listed[removed_sid]):
        assert before <= item.revoke_time.ToDatetime(tzinfo=timezone.utc) <= after
    later, _ = await _listed(stack, after + timedelta(seconds=1))
    assert not {leaving_sid, removed_sid} & {item.session_id for item in later}


async def test_pages_list_every_revocation_once_oldest_first(stack, edge):
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    sids = []
    for _ in range(5):
        account = await register_and_login(edge)
        sids.append(await _session_id(edge, account))
        await edge.post("/api/v1/auth/logout", headers=account.headers, json={})

    sessions, sizes = await _listed(stack, since, page_size=2)

    listed = [item.session_id for item in sessions]
    assert len(listed) == len(set(listed)), "a session was listed twice"
    assert set(sids) <= set(listed)
    assert max(sizes) == 2 and len(sizes) >= 3
    times = [item.revoke_time.ToNanoseconds() for item in sessions]
    assert times == sorted(times)


async def test_revocations_older_than_any_valid_token_are_not_listed(stack, edge):
    account = await register_and_login(edge)
    sid = await _session_id(edge, account)
    await edge.post("/api/v1/auth/logout", headers=account.headers, json={})
    aged = datetime.now(timezone.utc) - timedelta(
        seconds=revocation_lifetime_seconds(stack.settings) + 5)
    async with auth_db(stack) as db:
        await db.execute("UPDATE sessions SET revoked_at = $1 WHERE id = $2", aged, uuid.UUID(sid))

    sessions, _ = await _listed(stack, datetime(2000, 1, 1, tzinfo=timezone.utc))

    assert sid not in {item.session_id for item in sessions}


async def test_a_page_token_it_did_not_give_is_invalid_argument(stack):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin_call(stack, "ListRevokedSessions",
                         auth_pb2.ListRevokedSessionsRequest(page_token="not-a-token"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_reason(caught.value) == "INVALID_ARGUMENT"
