"""argon2id hashing: OWASP minimum enforced, rehash on new parameters, dummy verify for unknown
accounts, and all of it off the event loop in a bounded pool."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from posmesh.common.errors import Unavailable
from services.auth.enrollment_hashing import EnrollmentHashing
from services.auth.hashing_pause import MachineHashingPause
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



def _process_state(pid: int) -> str:
    """R running, S sleeping, T stopped (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


async def _until(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


@pytest.fixture
async def enrollment():
    hashing = EnrollmentHashing(OWASP, max_pending=32, per_second=1000)
    yield hashing
    hashing.close()


async def test_new_passwords_hash_in_a_process_that_every_sign_in_pauses(enrollment):
    """A registration flood must not slow sign-ins: two argon2id hashes at once slow each other
    down (shared cache and memory bandwidth), so the new-password process is stopped while any
    sign-in is queued or hashing, and continued after."""
    sign_in = PasswordHashing(OWASP, workers=1, max_pending=16, pauses=enrollment)
    try:
        stored = await sign_in.hash("the members password")
        assert enrollment._child_pid is None  # started on first use, not before
        await enrollment.hash("warm up")
        child = enrollment._child_pid
        backlog = [asyncio.ensure_future(enrollment.hash(f"newcomer {n}")) for n in range(12)]
        await asyncio.sleep(0.05)

        sign_ins = [asyncio.ensure_future(sign_in.verify(stored, "the members password"))
                    for _ in range(8)]  # one thread: about 8 hashes' time, back to back
        assert await _until(lambda: _process_state(child) == "T")
        done_when_paused = sum(task.done() for task in backlog)
        await asyncio.sleep(0.05)
        still_signing_in = not all(task.done() for task in sign_ins)
        assert sum(task.done() for task in backlog) == done_when_paused or not still_signing_in
        assert all(result.ok for result in await asyncio.gather(*sign_ins))

        assert await _until(lambda: _process_state(child) != "T")
        hashes = await asyncio.gather(*backlog)
    finally:
        sign_in.close()
    assert still_signing_in
    checker = PasswordHashing(OWASP, workers=1, max_pending=1)
    try:
        assert all([(await checker.verify(h, f"newcomer {n}")).ok for n, h in enumerate(hashes)])
    finally:
        checker.close()


async def test_a_full_new_password_queue_refuses_fast_and_sign_ins_never_wait_for_it(enrollment):
    sign_in = PasswordHashing(OWASP, workers=1, max_pending=4, pauses=enrollment)
    try:
        stored = await sign_in.hash("the members password")
        results = await asyncio.gather(*[enrollment.hash(f"n{n}") for n in range(40)],
                                       return_exceptions=True)
        started = time.monotonic()
        assert (await sign_in.verify(stored, "the members password")).ok
    finally:
        sign_in.close()
    refused = [r for r in results if isinstance(r, Unavailable)]
    assert len(refused) == 8 and {r.reason for r in refused} == {"SERVER_BUSY"}
    assert sum(isinstance(r, str) for r in results) == 32
    assert time.monotonic() - started < 5


async def test_a_dead_new_password_process_is_refused_once_then_started_again(enrollment):
    await enrollment.hash("first")
    os.kill(enrollment._child_pid, signal.SIGKILL)
    with pytest.raises(Unavailable) as refused:
        await enrollment.hash("while it is dead")
    assert refused.value.reason == "SERVER_BUSY"
    assert (await enrollment.hash("after the restart")).startswith("$argon2id$")


async def test_new_passwords_are_paced_and_beyond_the_queue_refused_at_once():
    """ENROLLMENT_HASHES_PER_SECOND is what a sign-up flood may cost the sign-ins: hashes start
    at most that often, and those that would wait beyond the queue are refused without waiting."""
    paced = EnrollmentHashing(OWASP, max_pending=4, per_second=10)
    try:
        started = time.monotonic()
        results = await asyncio.gather(*[paced.hash(f"n{n}") for n in range(7)],
                                       return_exceptions=True)
        elapsed = time.monotonic() - started
    finally:
        paced.close()
    hashed = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, Unavailable)]
    assert len(hashed) == 4 and len(refused) == 3
    assert {r.reason for r in refused} == {"SERVER_BUSY"}
    assert elapsed >= 3 * 0.1  # four starts, a tenth of a second apart


# Another auth process of the same machine: runs the commands it reads ("pause", "resume").
_OTHER_REPLICA = """
import sys
from pathlib import Path
from services.auth.hashing_pause import MachineHashingPause
pause = MachineHashingPause(Path(sys.argv[1]))
for command in sys.stdin:
    getattr(pause, command.strip())()
    print("ok", flush=True)
"""


async def test_a_sign_in_in_another_auth_replica_pauses_this_ones_new_passwords(tmp_path):
    """Replicas on one machine share its cores: a sign-in in any auth process stops every auth
    process's new-password hashing, and one that died signing in holds nobody up."""
    path = tmp_path / "run" / "pause.json"
    machine = MachineHashingPause(path)
    enrollment = EnrollmentHashing(OWASP, max_pending=32, per_second=1000, machine=machine)
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _OTHER_REPLICA, str(path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)

    async def tell_other(command: str) -> None:
        other.stdin.write(f"{command}\n".encode())
        assert await asyncio.wait_for(other.stdout.readline(), 10) == b"ok\n"

    try:
        await enrollment.hash("warm up")
        child = enrollment._child_pid
        await tell_other("pause")  # the other replica begins a sign-in
        assert await _until(lambda: _process_state(child) == "T")
        waiting = asyncio.ensure_future(enrollment.hash("newcomer"))
        await asyncio.sleep(0.3)  # ten times a hash's time
        assert not waiting.done()
        await tell_other("resume")
        assert (await asyncio.wait_for(waiting, 10)).startswith("$argon2id$")

        await tell_other("pause")
        assert await _until(lambda: _process_state(child) == "T")
        other.kill()  # died while signing in
        await other.wait()
        machine.resume()  # (as if this replica's last sign-in just ended)
        assert await _until(lambda: _process_state(child) != "T")
        machine.pause()  # this replica's own sign-in: the dead one's entry does not hide it
        assert await _until(lambda: _process_state(child) == "T")
        machine.resume()
        assert await _until(lambda: _process_state(child) != "T")
        assert (await enrollment.hash("after")).startswith("$argon2id$")
    finally:
        if other.returncode is None:
            other.kill()
            await other.wait()
        enrollment.close()
        machine.close()
