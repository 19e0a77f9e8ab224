"""Accounts and sessions over the wire (HTTPS JSON through Envoy): register, sign in, who am I,
refresh, reuse detection, logout, switching restaurant, introspection."""

from __future__ import annotations

import asyncio
import uuid

from tests.support.accounts import (
    PASSWORD,
    auth_db,
    error_reason,
    grant_membership,
    login,
    register,
    register_and_login,
    unique_email,
)
from tests.support.mail import default_mailbox
from tests.support.restaurants import ACCOUNT_EXISTS_SUBJECT, VERIFY_SUBJECT, verify_email
from tests.support.tokens import bearer


async def test_whole_lifecycle_register_login_me_refresh_reuse_revokes_then_logout(edge, stack):
    email = unique_email("life")
    user = await register(edge, stack, email=f"  {email.upper()} ", full_name="Lena Life")
    assert user["email"] == email and user["full_name"] == "Lena Life" and user["id"]
    assert user["email_verified"] is False
    await verify_email(edge, email)  # only a verified address can be given a membership

    restaurant = str(uuid.uuid4())
    await grant_membership(stack, user["id"], restaurant, "manager", "Lena's Diner")
    reply = await login(edge, email.upper())
    assert reply.status_code == 200, reply.text
    first = reply.json()
    # Exactly one membership: the session is bound to it without asking.
    assert first["token_type"] == "Bearer" and first["expires_in"] == 900
    assert first["restaurant_id"] == restaurant and first["role"] == "manager"
    assert first["user"] == {"id": user["id"], "email": email, "full_name": "Lena Life",
                             "role": "manager", "restaurant_id": restaurant,
                             "restaurant_name": "Lena's Diner"}
    assert first["refresh_expires_in"] > 29 * 24 * 3600

    me = await edge.get("/api/v1/auth/me", headers=bearer(first["access_token"]))
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["user"]["id"] == user["id"] and body["restaurant_id"] == restaurant
    assert body["memberships"] == [{"restaurant_id": restaurant,
                                    "restaurant_name": "Lena's Diner", "role": "manager"}]

    refreshed = await edge.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    second = refreshed.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["restaurant_id"] == restaurant and second["role"] == "manager"
    assert (await edge.get("/api/v1/auth/me", headers=bearer(second["access_token"]))).status_code == 200

    await asyncio.sleep(stack.settings.refresh_grace_seconds + 0.5)  # past the grace window
    reused = await edge.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401 and error_reason(reused) == "REFRESH_REUSED"

    # Reuse ended the whole session: the successor pair is dead too, at once, in every service.
    after = await edge.get("/api/v1/auth/me", headers=bearer(second["access_token"]))
    assert after.status_code == 401 and error_reason(after) == "SESSION_REVOKED"
    successor = await edge.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert successor.status_code == 401 and error_reason(successor) == "REFRESH_REUSED"
    verify = await edge.post("/api/v1/auth/verify", json={"token": second["access_token"]})
    assert verify.json() == {**verify.json(), "valid": False, "reason": "SESSION_REVOKED"}

    # A fresh sign-in works, and logout ends that session.
    third = (await login(edge, email)).json()
    out = await edge.post("/api/v1/auth/logout", json={}, headers=bearer(third["access_token"]))
    assert out.status_code == 200 and out.json()["revoked_sessions"] == 1
    gone = await edge.get("/api/v1/auth/me", headers=bearer(third["access_token"]))
    assert gone.status_code == 401 and error_reason(gone) == "SESSION_REVOKED"
    dead_refresh = await edge.post("/api/v1/auth/refresh", json={"refresh_token": third["refresh_token"]})
    assert dead_refresh.status_code == 401 and error_reason(dead_refresh) == "SESSION_REVOKED"


async def test_concurrent_duplicate_registrations_create_exactly_one_user(edge, stack):
    """Spellings of one address racing: one account, the others told by mail; every answer is
    the same (registration never says an address has an account)."""
    email = unique_email("race")
    variants = [email.upper(), f" {email} ", email.capitalize()]  # the per-address budget: 3
    replies = await asyncio.gather(*[
        edge.post("/api/v1/auth/register", json={"email": variant, "password": PASSWORD,
                                                 "full_name": "Racer"})
        for variant in variants])
    assert [(r.status_code, r.json()) for r in replies] == [(200, {})] * 3, [r.text for r in replies]
    assert (await login(edge, email)).status_code == 200
    mailbox = default_mailbox()
    await mailbox.wait_for(to=email, subject_contains=VERIFY_SUBJECT)
    await mailbox.wait_for(to=email, subject_contains=ACCOUNT_EXISTS_SUBJECT, count=2)
    async with auth_db(stack) as db:
        assert await db.fetchval("SELECT count(*) FROM users WHERE email = $1", email) == 1


async def test_registration_rejects_bad_input_with_a_reason(edge):
    cases = [
        ({"email": "", "password": PASSWORD, "full_name": "A"}, "INVALID_ARGUMENT"),
        ({"email": "not-an-email", "password": PASSWORD, "full_name": "A"}, "INVALID_ARGUMENT"),
        ({"email": unique_email(), "password": "short", "full_name": "A"}, "WEAK_PASSWORD"),
        ({"email": unique_email(), "password": "aaaaaaaaaaaaaa", "full_name": "A"}, "WEAK_PASSWORD"),
        ({"email": unique_email(), "password": PASSWORD, "full_name": "   "}, "INVALID_ARGUMENT"),
        ({"email": unique_email(), "password": "x" * 2000, "full_name": "A"}, "WEAK_PASSWORD"),
    ]
    for payload, reason in cases:
        reply = await edge.post("/api/v1/auth/register", json=payload)
        assert reply.status_code == 400 and error_reason(reply) == reason, (payload, reply.text)


async def test_unknown_email_and_wrong_password_get_the_same_answer(edge):
    account = await register_and_login(edge)
    wrong = await login(edge, account.email, "wrong password!")
    unknown = await login(edge, unique_email("nobody"), "wrong password!")
    assert wrong.status_code == unknown.status_code == 401
    assert error_reason(wrong) == error_reason(unknown) == "INVALID_CREDENTIALS"
    assert wrong.json()["message"] == unknown.json()["message"]


async def test_login_without_memberships_has_no_restaurant_context(edge):
    account = await register_and_login(edge)
    assert account.restaurant_id == "" and account.role == ""
    me = (await edge.get("/api/v1/auth/me", headers=account.headers)).json()
    assert me["memberships"] == [] and me["restaurant_id"] == ""


async def test_login_into_a_restaurant_the_user_does_not_belong_to_is_not_a_member(edge, stack):
    account = await register_and_login(edge, str(uuid.uuid4()), "staff", stack=stack)
    reply = await login(edge, account.email, restaurant_id=str(uuid.uuid4()))
    assert reply.status_code == 403 and error_reason(reply) == "NOT_A_MEMBER"


async def test_several_memberships_sign_in_without_context_until_one_is_chosen(edge, stack):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    account = await register_and_login(edge, first, "owner", stack=stack)
    await grant_membership(stack, account.user_id, second, "staff", "Second Place")
    neutral = (await login(edge, account.email)).json()
    assert neutral["restaurant_id"] == "" and neutral["role"] == ""
    chosen = (await login(edge, account.email, restaurant_id=second)).json()
    assert chosen["restaurant_id"] == second and chosen["role"] == "staff"
    assert chosen["user"]["restaurant_name"] == "Second Place"


async def test_switching_restaurant_issues_a_pair_for_the_other_restaurant_and_ends_the_old_session(edge, stack):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    account = await register_and_login(edge, first, "owner", stack=stack, restaurant_name="First")
    await grant_membership(stack, account.user_id, second, "staff", "Second")

    reply = await edge.post("/api/v1/auth/switch-restaurant", json={"restaurant_id": second},
                            headers=account.headers)
    assert reply.status_code == 200, reply.text
    switched = reply.json()
    assert switched["restaurant_id"] == second and switched["role"] == "staff"
    assert switched["user"]["restaurant_name"] == "Second"
    me = (await edge.get("/api/v1/auth/me", headers=bearer(switched["access_token"]))).json()
    assert me["restaurant_id"] == second and me["role"] == "staff"

    # The session remembers its restaurant: refreshing stays in the second one.
    refreshed = (await edge.post("/api/v1/auth/refresh",
                                 json={"refresh_token": switched["refresh_token"]})).json()
    assert refreshed["restaurant_id"] == second and refreshed["role"] == "staff"

    # The old context is over: its access and refresh tokens no longer work.
    old = await edge.get("/api/v1/auth/me", headers=account.headers)
    assert old.status_code == 401 and error_reason(old) == "SESSION_REVOKED"
    old_refresh = await edge.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert old_refresh.status_code == 401 and error_reason(old_refresh) == "SESSION_REVOKED"

    # Somewhere the user does not belong: refused, and the current session survives.
    elsewhere = await edge.post("/api/v1/auth/switch-restaurant",
                                json={"restaurant_id": str(uuid.uuid4())},
                                headers=bearer(refreshed["access_token"]))
    assert elsewhere.status_code == 403 and error_reason(elsewhere) == "NOT_A_MEMBER"
    bad = await edge.post("/api/v1/auth/switch-restaurant", json={"restaurant_id": "nope"},
                          headers=bearer(refreshed["access_token"]))
    assert bad.status_code == 400 and error_reason(bad) == "INVALID_ARGUMENT"
    assert (await edge.get("/api/v1/auth/me", headers=bearer(refreshed["access_token"]))).status_code == 200


async def test_verify_introspects_the_body_token_or_else_the_bearer_token(edge, stack):
    restaurant = str(uuid.uuid4())
    account = await register_and_login(edge, restaurant, "manager", stack=stack,
                                       full_name="Vera Verify", restaurant_name="Vera's")
    expected_user = {"id": account.user_id, "email": account.email, "full_name": "Vera Verify",
                     "role": "manager", "restaurant_id": restaurant, "restaurant_name": "Vera's"}

    by_body = await edge.post("/api/v1/auth/verify", json={"token": account.access_token})
    assert by_body.status_code == 200, by_body.text
    body = by_body.json()
    assert body["valid"] is True and body["reason"] == "" and body["user"] == expected_user
    claims = body["claims"]
    assert claims["sub"] == account.user_id and claims["restaurant_id"] == restaurant
    assert claims["role"] == "manager" and claims["aud"] == stack.settings.jwt_audience
    assert int(claims["exp"]) - int(claims["iat"]) == stack.settings.access_token_ttl_seconds

    # Existing apps send an empty body and the Bearer header.
    by_header = await edge.post("/api/v1/auth/verify", json={}, headers=account.headers)
    assert by_header.status_code == 200 and by_header.json()["valid"] is True
    assert by_header.json()["user"] == expected_user

    nothing = (await edge.post("/api/v1/auth/verify", json={})).json()
    assert nothing["valid"] is False and nothing["reason"] == "TOKEN_INVALID"
    assert "user" not in nothing and "claims" not in nothing


async def test_logout_of_all_sessions_ends_every_device(edge, stack):
    account = await register_and_login(edge)
    other_device = (await login(edge, account.email)).json()
    reply = await edge.post("/api/v1/auth/logout", json={"all_sessions": True}, headers=account.headers)
    assert reply.status_code == 200 and reply.json()["revoked_sessions"] == 2
    for token in (account.access_token, other_device["access_token"]):
        gone = await edge.get("/api/v1/auth/me", headers=bearer(token))
        assert gone.status_code == 401 and error_reason(gone) == "SESSION_REVOKED"
    refresh = await edge.post("/api/v1/auth/refresh", json={"refresh_token": other_device["refresh_token"]})
    assert refresh.status_code == 401 and error_reason(refresh) == "SESSION_REVOKED"


async def test_refresh_rejects_unknown_and_malformed_refresh_tokens(edge):
    for token in ["", "garbage", "pmrt_" + "A" * 43, "pmrt_" + "!" * 43]:
        reply = await edge.post("/api/v1/auth/refresh", json={"refresh_token": token})
        assert reply.status_code == 401 and error_reason(reply) == "TOKEN_INVALID", (token, reply.text)
