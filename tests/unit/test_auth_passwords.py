"""argon2id hashing: OWASP minimum enforced, rehash on new parameters, dummy verify for unknown
accounts, and all of it off the event loop in a bounded pool."""

from __future__ import annotations

import asyncio
import time

import pytest

from posmesh.common.errors import Unavailable
from services.auth.passwords import Argon2Parameters, PasswordHashing

OWASP = Argon2Parameters(memory_kib=19456, time_cost=2, parallelism=1)


@pytest.fixture
async def hashing():
    hashing = PasswordHashing(OWASP, workers=2, max_pending=64)
    yield hashing
    hashing.close()


@pytest.mark.parametrize("parameters", [
    Argon2Parameters(memory_kib=4096, time_cost=10, parallelism=1),
    Argon2Parameters(memory_kib=19456, time_cost=1, parallelism=1),
    Argon2Parameters(memory_kib=65536, time_cost=0, parallelism=1),
])
def test_parameters_below_owasps_minimum_are_refused(parameters):
    with pytest.raises(ValueError):
        PasswordHashing(parameters, workers=1, max_pending=1)


def test_owasps_equivalent_rows_are_accepted():
    for memory, time_cost in [(47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5)]:
        PasswordHashing(Argon2Parameters(memory, time_cost, 1), workers=1, max_pending=1).close()


async def test_a_hash_is_argon2id_with_the_configured_parameters_and_verifies(hashing):
    stored = await hashing.hash("correct horse battery")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert (await hashing.verify(stored, "correct horse battery")).ok
    assert not (await hashing.verify(stored, "correct horse batterY")).ok


async def test_a_hash_made_with_older_parameters_is_replaced_on_sign_in(hashing):
    older = PasswordHashing(Argon2Parameters(12288, 3, 1), workers=1, max_pending=4)
    try:
        stored = await older.hash("correct horse battery")
    finally:
        older.close()
    result = await hashing.verify(stored, "correct horse battery")
    assert result.ok and result.new_hash is not None
    assert result.new_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert (await hashing.verify(result.new_hash, "correct horse battery")).new_hash is None
    assert (await hashing.verify(stored, "wrong")).new_hash is None, "never rehash on a failure"


async def test_an_unknown_account_costs_a_real_verify_and_fails(hashing):
    stored = await hashing.hash("correct horse battery")
    await hashing.verify(None, "warm-up")  # makes the dummy hash once
    started = time.perf_counter()
    for _ in range(3):
        await hashing.verify(stored, "wrong password")
    known = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(3):
        assert not (await hashing.verify(None, "wrong password")).ok
    unknown = time.perf_counter() - started
    assert unknown > known / 3, (known, unknown)


async def test_a_corrupt_stored_hash_is_a_failed_sign_in_not_a_crash(hashing):
    assert not (await hashing.verify("not-a-hash", "whatever")).ok


async def test_hashing_runs_off_the_event_loop(hashing):
    lags = []

    async def ticker() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - started - 0.005)

    task = asyncio.create_task(ticker())
    try:
        started = time.perf_counter()
        await asyncio.gather(*[hashing.hash(f"password {n}") for n in range(8)])
        busy = time.perf_counter() - started
    finally:
        task.cancel()
    # Eight hashes kept the pool busy for `busy` seconds; the loop never stalled for long.
    assert len(lags) > 5 and max(lags) < busy / 2, (max(lags), busy)


async def test_a_full_queue_fails_fast_instead_of_queueing_for_ever():
    hashing = PasswordHashing(OWASP, workers=1, max_pending=2)
    try:
        results = await asyncio.gather(*[hashing.hash(f"password {n}") for n in range(5)],
                                       return_exceptions=True)
    finally:
        hashing.close()
    refused = [r for r in results if isinstance(r, Unavailable)]
    assert len(refused) == 3 and refused[0].reason == "SERVER_BUSY"
    assert sum(isinstance(r, str) for r in results) == 2


async def test_a_backlog_of_new_passwords_does_not_queue_ahead_of_sign_ins():
    """Registrations hash in their own bounded queue: a sign-in's verify starts at once on its
    own thread instead of waiting behind every queued registration (issue: a registration flood
    must not starve logins)."""
    sign_in = PasswordHashing(OWASP, workers=1, max_pending=4)
    enrollment = PasswordHashing(OWASP, workers=1, max_pending=32, niceness=19, name="enroll")
    try:
        stored = await sign_in.hash("the members password")
        backlog = [asyncio.ensure_future(enrollment.hash(f"newcomer {n}")) for n in range(24)]
        await asyncio.sleep(0)  # the backlog is queued before the sign-in arrives

        assert (await sign_in.verify(stored, "the members password")).ok
        hashed_meanwhile = sum(task.done() for task in backlog)
        refused = await asyncio.gather(*[enrollment.hash("one too many") for _ in range(12)],
                                       return_exceptions=True)
        assert await asyncio.gather(*backlog)
    finally:
        sign_in.close()
        enrollment.close()
    assert hashed_meanwhile < len(backlog) // 2
    # A full enrollment queue refuses newcomers fast; it never spills into the sign-in queue.
    assert any(isinstance(r, Unavailable) and r.reason == "SERVER_BUSY" for r in refused)
