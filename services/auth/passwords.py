"""Password hashing with argon2id, off the event loop.

Hashing costs ~30 ms of CPU at OWASP's minimum; on the event loop that would stall every other
request of the process, so every hash and verify runs in a bounded thread pool (argon2-cffi
releases the GIL while it works). Jobs waiting for the pool are capped too: past the cap a login
fails fast with UNAVAILABLE instead of queueing for seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Protocol

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from posmesh.common.errors import Unavailable
from posmesh.common.settings import Settings

log = logging.getLogger(__name__)

# OWASP's argon2id table: (47 MiB, t=1), (19 MiB, t=2), (12 MiB, t=3), (9 MiB, t=4), (7 MiB, t=5)
# are equally strong; anything weaker than the weakest row is refused at start-up.
OWASP_MIN_MEMORY_KIB = 7168
OWASP_MIN_MEMORY_TIME_PRODUCT = 7168 * 5


# Hashing threads run at a lower CPU priority than the event loop's thread, so on a busy
# machine the loop (answering every other request) wins the CPU over a queue of hashes. New
# passwords hash elsewhere (services/auth/enrollment_hashing.py), paused while sign-ins hash.
SIGN_IN_NICENESS = 10


class Pausable(Protocol):
    def pause(self) -> None: ...
    def resume(self) -> None: ...


def _thread_priority(niceness: int):
    def lower() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        except (OSError, AttributeError):  # not Linux, or not permitted: normal priority
            pass
    return lower


@dataclass(frozen=True, slots=True)
class Argon2Parameters:
    memory_kib: int
    time_cost: int
    parallelism: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "Argon2Parameters":
        return cls(settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism)

    def check_owasp_minimum(self) -> None:
        if (self.memory_kib < OWASP_MIN_MEMORY_KIB or self.parallelism < 1
                or self.memory_kib * self.time_cost < OWASP_MIN_MEMORY_TIME_PRODUCT):
            raise ValueError(
                f"argon2id parameters m={self.memory_kib} KiB, t={self.time_cost}, "
                f"p={self.parallelism} are below OWASP's minimum (e.g. m=19456 KiB, t=2, p=1)")


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    new_hash: str | None = None  # set when the stored hash used outdated parameters


class PasswordHashing:
    """argon2id hash/verify in a bounded thread pool of its own; `close()` on shutdown. The auth
    service verifies sign-ins here. `pauses` (the new-password hasher) is paused while any job
    is queued or running here, and while any `holding_off_new_passwords()` block runs (a whole
    sign-in: its database and token work is slowed by a concurrent hash too)."""

    def __init__(self, parameters: Argon2Parameters, *, workers: int, max_pending: int,
                 pauses: Pausable | None = None) -> None:
        parameters.check_owasp_minimum()
        self.parameters = parameters
        self._hasher = PasswordHasher(time_cost=parameters.time_cost,
                                      memory_cost=parameters.memory_kib,
                                      parallelism=parameters.parallelism, type=Type.ID)
        self._executor = ThreadPoolExecutor(max_workers=max(1, workers),
                                            thread_name_prefix="argon2",
                                            initializer=_thread_priority(SIGN_IN_NICENESS))
        self._pauses = pauses
        self._holding = 0  # jobs and blocks that keep `pauses` paused
        self._max_pending = max(1, max_pending)
        self._pending = 0
        # A real hash with the current parameters, verified against when an account does not
        # exist (or has no password) so that answer takes as long as a wrong password does.
        # Made on first use, in a worker thread like every other hash.
        self._dummy_hash: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, pauses: Pausable | None = None
                      ) -> "PasswordHashing":
        return cls(Argon2Parameters.from_settings(settings),
                   workers=settings.password_hash_workers,
                   max_pending=settings.password_hash_max_pending, pauses=pauses)

    async def _run(self, fn, *args):
        if self._pending >= self._max_pending:
            raise Unavailable("SERVER_BUSY", "too many passwords are being processed; retry "
                              "shortly", retryable="true", retry_after_seconds=1)
        self._pending += 1
        try:
            with self.holding_off_new_passwords():
                return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._pending -= 1

    @contextlib.contextmanager
    def holding_off_new_passwords(self) -> Iterator[None]:
        self._holding += 1
        if self._holding == 1 and self._pauses is not None:
            self._pauses.pause()
        try:
            yield
        finally:
            self._holding -= 1
            if self._holding == 0 and self._pauses is not None:
                self._pauses.resume()

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> VerifyResult:
        """Whether `password` matches; with `stored_hash=None` a dummy verify, always False."""
        return await self._run(self._verify_sync, stored_hash, password)

    def _verify_sync(self, stored_hash: str | None, password: str) -> VerifyResult:
        if stored_hash is None:
            self._safe_verify(self._dummy(), password)
            return VerifyResult(False)
        if not self._safe_verify(stored_hash, password):
            return VerifyResult(False)
        try:
            needs_rehash = self._hasher.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            needs_rehash = True
        # Re-hashing here (still in the worker thread) keeps the new parameters' cost off the loop.
        return VerifyResult(True, self._hasher.hash(password) if needs_rehash else None)

    def _safe_verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except VerificationError:
            return False
        except InvalidHashError:
            log.error("a stored password hash is not a valid argon2 hash")
            return False

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash("posmesh-dummy-password-for-timing")
        return self._dummy_hash

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
