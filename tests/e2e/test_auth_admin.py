"""The internal AuthAdminService (what the staff service and every other service call) on the
auth service's own gRPC address, and the revocations it announces on Redis."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import grpc
import pytest
import redis.asyncio as aioredis

from tests.support.errors import grpc_reason
from posmesh.auth.v1 import auth_pb2
from posmesh.common.tokens import REVOCATIONS_CHANNEL, revoked_key
from tests.support.accounts import (
    admin_call,
    auth_db,
    error_reason,
    grant_membership,
    login,
    register_and_login,
    unique_email,
)


class RevocationListener:
    """Subscribed to auth:revocations for the duration of a test."""

    def __init__(self, stack) -> None:
        self._redis = aioredis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
        self._pubsub = self._redis.pubsub()

    async def __aenter__(self) -> "RevocationListener":
        await self._pubsub.subscribe(REVOCATIONS_CHANNEL)
        await self._pubsub.get_message(timeout=1)  # the subscribe confirmation
        return self

    async def __aexit__(self, *exc) -> None:
        await self._pubsub.aclose()
        await self._redis.aclose()

    async def messages_for(self, user_id: str, count: int, within: float = 3.0) -> list[dict]:
        found, deadline = [], time.monotonic() + within
        while len(found) < count and time.monotonic() < deadline:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message and (body := json.loads(message["data"]))["user_id"] == user_id:
                found.append(body)
        return found

    async def marker(self, session_id: str) -> str | None:
        return await self._redis.get(revoked_key(session_id))


async def test_claiming_a_new_address_creates_one_verified_account_even_when_racing(stack, edge):
    """ASVS 5.0 V6: whoever proved the mailbox (an invitation link) gets the account. The same
    claim sent several times at once (a request retried) is answered with that one account."""
    email = unique_email("claim")
    requests = [auth_pb2.ClaimAccountRequest(email=variant, full_name="Eve Claim",
                                             password="correct horse battery staple")
                for variant in (email, email.upper(), f" {email} ")]
    outcomes = await asyncio.gather(*[admin_call(stack, "ClaimAccount", request)
                                      for request in requests])
    # One creates it verified; the others find it verified and their password its own.
    assert sorted(o.created for o in outcomes) == [False, False, True]
    assert not any(o.took_over for o in outcomes)
    assert len({o.user.id for o in outcomes}) == 1
    assert outcomes[0].user.email == email and outcomes[0].user.email_verified
    assert (await login(edge, email)).status_code == 200


async def test_a_claim_repeated_after_its_answer_was_lost_answers_the_account_it_made(stack, edge):
    """The staff service's deadline can run out while auth still makes the account; its retry
    must not be refused as a taken address. Only the account's own password makes it the same
    claim, and guessing it is limited like signing in (ASVS 5.0 V6.3.1)."""
    email = unique_email("lost")
    first = await admin_call(stack, "ClaimAccount", auth_pb2.ClaimAccountRequest(
        email=email, full_name="Lou Lost", password="correct horse battery staple"))
    again = await admin_call(stack, "ClaimAccount", auth_pb2.ClaimAccountRequest(
        email=email, full_name="Lou Lost", password="correct horse battery staple"))
    assert first.created and (again.created, again.took_over) == (False, False)
    assert again.user.id == first.user.id and again.user.email_verified

    replies = []
    for _ in range(stack.settings.login_max_failures):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin_call(stack, "ClaimAccount", auth_pb2.ClaimAccountRequest(
                email=email, password="somebody elses password", client_ip="203.0.113.9"))
        replies.append(grpc_reason(caught.value))
    assert replies[:-1] == ["EMAIL_TAKEN"] * (len(replies) - 1)
    assert replies[-1] == "TOO_MANY_ATTEMPTS"  # the last failure locked the account
    assert (await login(edge, email)).status_code == 429  # for a sign-in too


async def test_claiming_an_unverified_address_takes_it_over_and_signs_out_its_registrant(
        stack, edge):
    """ASVS 5.0 V6 (account pre-hijacking): a registration nobody verified is not an account."""
    squatter = await register_and_login(edge, label="squatter")  # never verified
    reply = await admin_call(stack, "ClaimAccount", auth_pb2.ClaimAccountRequest(
        email=squatter.email, full_name="Real Owner", password="the real owners password"))

    assert reply.took_over and not reply.created and reply.user.id == squatter.user_id
    assert reply.user.email_verified and reply.user.full_name == "Real Owner"
    gone = await edge.get("/api/v1/auth/me", headers=squatter.headers)
    assert gone.status_code == 401 and error_reason(gone) == "SESSION_REVOKED"
    refused = await login(edge, squatter.email, squatter.password)
    assert refused.status_code == 401 and error_reason(refused) == "INVALID_CREDENTIALS"
    assert (await login(edge, squatter.email, "the real owners password")).status_code == 200


async def test_an_unverified_account_cannot_be_given_a_membership(stack, edge):
    account = await register_and_login(edge, label="unverified")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grant_membership(stack, account.user_id, str(uuid.uuid4()), "staff")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert grpc_reason(caught.value) == "EMAIL_NOT_VERIFIED"


async def test_batch_get_users_returns_the_known_ones(stack, edge):
    first = await register_and_login(edge)
    second = await register_and_login(edge)
    reply = await admin_call(stack, "BatchGetUsers", auth_pb2.BatchGetUsersRequest(
        user_ids=[first.user_id, second.user_id, str(uuid.uuid4()), first.user_id]))
    assert sorted(user.id for user in reply.users) == sorted([first.user_id, second.user_id])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin_call(stack, "BatchGetUsers", auth_pb2.BatchGetUsersRequest(user_ids=["nope"]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_grant_membership_validates_its_input(stack, edge):
    account = await register_and_login(edge)
    bad = [
        auth_pb2.GrantMembershipRequest(user_id=str(uuid.uuid4()), restaurant_id=str(uuid.uuid4()),
                                        role="staff"),
        auth_pb2.GrantMembershipRequest(user_id=account.user_id, restaurant_id=str(uuid.uuid4()),
                                        role="emperor"),
        auth_pb2.GrantMembershipRequest(user_id=account.user_id, restaurant_id="r1", role="staff"),
    ]
    codes = []
    for request in bad:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin_call(stack, "GrantMembership", request)
        codes.append((caught.value.code(), grpc_reason(caught.value)))
    assert codes == [(grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND"),
                     (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
                     (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")]


async def test_a_role_change_ends_the_sessions_in_that_restaurant_and_announces_it(stack, edge):
    restaurant, elsewhere = str(uuid.uuid4()), str(uuid.uuid4())
    account = await register_and_login(edge, restaurant, "staff", stack=stack)
    await grant_membership(stack, account.user_id, elsewhere, "staff")
    other = (await login(edge, account.email, restaurant_id=elsewhere)).json()
    sid = (await edge.get("/api/v1/auth/me", headers=account.headers)).json()["session_id"]

    async with RevocationListener(stack) as listener:
        same_role = await grant_membership(stack, account.user_id, restaurant, "staff")
        assert same_role.revoked_sessions == 0 and same_role.previous_role == "staff"
        started = time.monotonic()
        changed = await grant_membership(stack, account.user_id, restaurant, "manager")
        messages = await listener.messages_for(account.user_id, 1)
        assert time.monotonic() - started < 1.0, "realtime must hear of it within a second"
        assert changed.previous_role == "staff" and changed.revoked_sessions == 1
        assert messages == [{"sid": sid, "user_id": account.user_id, "restaurant_id": restaurant,
                             "reason": "ROLE_CHANGED"}]
        assert await listener.marker(sid) == "ROLE_CHANGED"

    gone = await edge.get("/api/v1/auth/me", headers=account.headers)
    assert gone.status_code == 401 and error_reason(gone) == "SESSION_REVOKED"
    # The session in the other restaurant is untouched; a new sign-in carries the new role.
    assert (await edge.get("/api/v1/auth/me", headers={"authorization": f"Bearer {other['access_token']}"})).status_code == 200
    again = (await login(edge, account.email, restaurant_id=restaurant)).json()
    assert again["role"] == "manager"


async def test_revoking_a_membership_ends_its_sessions_and_is_idempotent(stack, edge):
    restaurant = str(uuid.uuid4())
    account = await register_and_login(edge, restaurant, "manager", stack=stack)
    async with RevocationListener(stack) as listener:
        reply = await admin_call(stack, "RevokeMembership", auth_pb2.RevokeMembershipRequest(
            user_id=account.user_id, restaurant_id=restaurant))
        assert reply.revoked_sessions == 1
        [message] = await listener.messages_for(account.user_id, 1)
        assert message["reason"] == "MEMBERSHIP_REVOKED" and message["restaurant_id"] == restaurant
    gone = await edge.get("/api/v1/auth/me", headers=account.headers)
    assert gone.status_code == 401 and error_reason(gone) == "SESSION_REVOKED"
    refused = await login(edge, account.email, restaurant_id=restaurant)
    assert refused.status_code == 403 and error_reason(refused) == "NOT_A_MEMBER"
    again = await admin_call(stack, "RevokeMembership", auth_pb2.RevokeMembershipRequest(
        user_id=account.user_id, restaurant_id=restaurant))
    assert again.revoked_sessions == 0


async def test_revoke_user_sessions_everywhere_or_in_one_restaurant(stack, edge):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    account = await register_and_login(edge, first, "staff", stack=stack)
    await grant_membership(stack, account.user_id, second, "staff")
    in_second = (await login(edge, account.email, restaurant_id=second)).json()
    async with RevocationListener(stack) as listener:
        only_second = await admin_call(stack, "RevokeUserSessions", auth_pb2.RevokeUserSessionsRequest(
            user_id=account.user_id, restaurant_id=second, reason="SUSPECTED_THEFT"))
        assert only_second.revoked_sessions == 1
        [message] = await listener.messages_for(account.user_id, 1)
        assert message["reason"] == "SUSPECTED_THEFT" and message["restaurant_id"] == second
    assert (await edge.get("/api/v1/auth/me", headers=account.headers)).status_code == 200
    second_me = await edge.get("/api/v1/auth/me", headers={"authorization": f"Bearer {in_second['access_token']}"})
    assert second_me.status_code == 401
    everywhere = await admin_call(stack, "RevokeUserSessions", auth_pb2.RevokeUserSessionsRequest(
        user_id=account.user_id))
    assert everywhere.revoked_sessions == 1
    assert (await edge.get("/api/v1/auth/me", headers=account.headers)).status_code == 401
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin_call(stack, "RevokeUserSessions", auth_pb2.RevokeUserSessionsRequest(
            user_id=account.user_id, reason="lower case is not a code"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_logout_announces_the_revocation_for_live_sockets(stack, edge):
    account = await register_and_login(edge, str(uuid.uuid4()), "staff", stack=stack)
    async with RevocationListener(stack) as listener:
        await edge.post("/api/v1/auth/logout", json={}, headers=account.headers)
        [message] = await listener.messages_for(account.user_id, 1)
    assert message["reason"] == "LOGOUT" and message["restaurant_id"] == account.restaurant_id


async def test_security_events_from_other_services_are_stored(stack):
    marker = uuid.uuid4().hex
    await admin_call(stack, "RecordSecurityEvent", auth_pb2.RecordSecurityEventRequest(
        type="ACCESS_DENIED", severity="warning", ip="198.51.100.7", user_id="u-1",
        restaurant_id="r-1", details_json=json.dumps({"marker": marker, "permission": "x"}),
        source="orders"))
    async with auth_db(stack) as db:
        row = await db.fetchrow("SELECT * FROM security_events WHERE details->>'marker' = $1", marker)
    assert row["type"] == "ACCESS_DENIED" and row["severity"] == "warning"
    assert row["source"] == "orders" and row["ip"] == "198.51.100.7"
    for request in (auth_pb2.RecordSecurityEventRequest(type=""),
                    auth_pb2.RecordSecurityEventRequest(type="OK", severity="apocalyptic"),
                    auth_pb2.RecordSecurityEventRequest(type="OK", details_json="[1, 2]"),
                    auth_pb2.RecordSecurityEventRequest(type="OK", details_json="{nope")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin_call(stack, "RecordSecurityEvent", request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

