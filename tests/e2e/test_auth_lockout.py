"""Brute-force limits: per account over the wire (the test stack's lockout base is 1 s), per
client IP against the stack's real Redis, and what happens while Redis is down."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from posmesh.common.errors import ResourceExhausted
from posmesh.common.redis import create_redis
from services.auth.rate_limits import LoginLimiter
from tests.support.accounts import (
    auth_db,
    error_metadata,
    error_reason,
    login,
    register_and_login,
    unique_email,
)
from tests.support.stacks import with_embedded_servers

WRONG = "definitely not it"


async def _event_count(stack, event_type: str, user_id: str, *, at_least: int) -> int:
    """Security events are stored in the background: wait (briefly) for `at_least` rows."""
    deadline = time.monotonic() + 5
    async with auth_db(stack) as db:
        while True:
            count = await db.fetchval(
                "SELECT count(*) FROM security_events WHERE type = $1 AND user_id = $2",
                event_type, user_id)
            if count >= at_least or time.monotonic() > deadline:
                return count
            await asyncio.sleep(0.1)


async def _fail_until_locked(edge, email: str, attempts: int) -> list:
    return [await login(edge, email, WRONG) for _ in range(attempts)]


async def test_an_account_locks_after_repeated_failures_and_recovers_after_the_wait(edge, stack):
    account = await register_and_login(edge)
    threshold = stack.settings.login_max_failures
    replies = await _fail_until_locked(edge, account.email, threshold)
    assert [error_reason(r) for r in replies[:-1]] == ["INVALID_CREDENTIALS"] * (threshold - 1)
    locked = replies[-1]
    assert locked.status_code == 429 and error_reason(locked) == "TOO_MANY_ATTEMPTS"
    wait = int(error_metadata(locked)["retry_after_seconds"])
    assert wait == stack.settings.login_lockout_base_seconds

    # While locked even the right password is refused, without revealing it was right.
    right_but_locked = await login(edge, account.email, account.password)
    assert right_but_locked.status_code == 429 and error_reason(right_but_locked) == "TOO_MANY_ATTEMPTS"

    await asyncio.sleep(wait + 0.3)
    recovered = await login(edge, account.email, account.password)
    assert recovered.status_code == 200, recovered.text
    # A successful sign-in starts the count afresh.
    again = await _fail_until_locked(edge, account.email, threshold - 1)
    assert {error_reason(r) for r in again} == {"INVALID_CREDENTIALS"}

    assert await _event_count(stack, "LOGIN_LOCKOUT", account.user_id, at_least=1) == 1
    assert await _event_count(stack, "LOGIN_FAILED", account.user_id,
                              at_least=2 * threshold - 1) == 2 * threshold - 1


async def test_lockouts_grow_exponentially_while_failures_continue(edge, stack):
    account = await register_and_login(edge)
    base = stack.settings.login_lockout_base_seconds
    first = (await _fail_until_locked(edge, account.email, stack.settings.login_max_failures))[-1]
    assert int(error_metadata(first)["retry_after_seconds"]) == base
    await asyncio.sleep(base + 0.3)
    # After a lockout a single further failure locks again, twice as long.
    second = await login(edge, account.email, WRONG)
    assert second.status_code == 429 and int(error_metadata(second)["retry_after_seconds"]) == 2 * base
    await asyncio.sleep(2 * base + 0.3)
    third = await login(edge, account.email, WRONG)
    assert third.status_code == 429 and int(error_metadata(third)["retry_after_seconds"]) == 4 * base
    await asyncio.sleep(4 * base + 0.3)
    assert (await login(edge, account.email, account.password)).status_code == 200


async def test_unknown_emails_lock_out_exactly_like_real_accounts(edge, stack):
    replies = await _fail_until_locked(edge, unique_email("ghost"), stack.settings.login_max_failures)
    assert [r.status_code for r in replies] == [401] * (len(replies) - 1) + [429]
    assert error_reason(replies[-1]) == "TOO_MANY_ATTEMPTS"


async def test_a_burst_of_concurrent_guesses_cannot_slip_past_the_threshold(edge, stack):
    account = await register_and_login(edge)
    threshold = stack.settings.login_max_failures
    replies = await asyncio.gather(*[login(edge, account.email, f"{WRONG} {n}") for n in range(20)])
    assert {error_reason(r) for r in replies} <= {"INVALID_CREDENTIALS", "TOO_MANY_ATTEMPTS"}
    checked = await _event_count(stack, "LOGIN_FAILED", account.user_id, at_least=threshold)
    # Attempts are counted before the (slow) password check and the ones beyond the budget wait
    # for those in flight, so the burst got the checks sequential guessing would have: the
    # threshold, plus at most one more once the first (1 s in tests) lockout ran out.
    assert threshold <= checked <= threshold + 1, checked
    assert sum(error_reason(r) == "TOO_MANY_ATTEMPTS" for r in replies) >= 20 - checked
    deadline = time.monotonic() + 10
    while (reply := await login(edge, account.email, account.password)).status_code == 429:
        assert time.monotonic() < deadline, reply.text
        await asyncio.sleep(float(error_metadata(reply)["retry_after_seconds"]))
    assert reply.status_code == 200, reply.text


async def test_a_burst_of_correct_sign_ins_to_one_account_all_succeed(edge, stack):
    """Every till of a restaurant signing in to a shared account at once is not an attack."""
    account = await register_and_login(edge)
    replies = await asyncio.gather(*[login(edge, account.email, account.password) for _ in range(20)])
    assert [reply.status_code for reply in replies] == [200] * 20, [r.text for r in replies if r.status_code != 200]


async def test_a_client_ip_guessing_many_accounts_is_locked_out(stack):
    settings = stack.settings.model_copy(update={"login_ip_max_failures": 3,
                                                 "login_lockout_base_seconds": 1})
    redis = create_redis(settings)
    try:
        limiter = LoginLimiter(redis, settings)
        ip = f"203.0.113.{uuid.uuid4().int % 250}-{uuid.uuid4().hex[:6]}"
        for n in range(3):
            attempt = await limiter.begin(limiter.subjects(unique_email(f"ip{n}"), ip))
            lockout = await limiter.failed(attempt)
        assert lockout is not None and lockout.subject_kind == "ip" and lockout.seconds == 1
        with pytest.raises(ResourceExhausted) as caught:
            await limiter.begin(limiter.subjects(unique_email("fresh"), ip))
        assert caught.value.reason == "TOO_MANY_ATTEMPTS"
        assert caught.value.metadata["retry_after_seconds"] == "1"
        # Another client is not affected.
        other = await limiter.begin(limiter.subjects(unique_email("other"), f"{ip}-other"))
        await limiter.succeeded(other)
        await asyncio.sleep(1.3)
        # After the wait the IP may try again, and a success there takes back only its own
        # attempt: it does not wipe the IP's earlier failures.
        retry = await limiter.begin(limiter.subjects(unique_email("later"), ip))
        await limiter.succeeded(retry)
        assert int(await redis.get(f"auth:ratelimit:ip:{ip}:failures") or 0) == 0
        assert int(await redis.get(f"auth:ratelimit:ip:{ip}:level")) == 1
    finally:
        await redis.aclose()


@pytest.mark.fault
async def test_sign_in_fails_fast_and_clearly_while_redis_is_down_and_recovers(stack):
    async with with_embedded_servers(stack) as (stack, edge):
        await _sign_in_fails_fast_and_clearly_while_redis_is_down_and_recovers(stack, edge)


async def _sign_in_fails_fast_and_clearly_while_redis_is_down_and_recovers(stack, edge):
    account = await register_and_login(edge)
    await stack.stop_redis()
    try:
        started = time.monotonic()
        reply = await login(edge, account.email, account.password)
        elapsed = time.monotonic() - started
        assert reply.status_code == 503 and error_reason(reply) == "RATE_LIMITER_UNAVAILABLE", reply.text
        assert elapsed < 5, f"sign-in took {elapsed:.1f}s while Redis was down"
        # Signed-in devices keep working: refresh needs only PostgreSQL.
        refreshed = await edge.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
        assert refreshed.status_code == 200, refreshed.text
    finally:
        await stack.start_redis()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        reply = await login(edge, account.email, account.password)
        if reply.status_code == 200:
            break
        await asyncio.sleep(0.3)
    assert reply.status_code == 200, reply.text

