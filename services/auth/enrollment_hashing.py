"""New passwords (registrations, resets, changes, invitations) hash in a child process of their
own, which sign-ins pause.

Why a paused process and not a low-priority thread: on the 2-vCPU machines we run on, an
argon2id hash (19 MiB) that runs while another one runs takes 1.7-2.4 times as long — the two
share the L3 cache and memory bandwidth, whatever their CPU priority — so a registration flood
slowed every sign-in it overlapped even at nice 19 (login p95 ×2.4 in `make bench`). The
sign-in hasher therefore stops this process (SIGSTOP) while any sign-in hash is queued or running
and continues it (SIGCONT) when none is: a sign-in never shares the machine with a new-password
hash. New passwords get the time between sign-ins, and at most ENROLLMENT_HASHES_PER_SECOND of
it: even paused during sign-ins, a hash running between them evicts the caches the next sign-in
needs, so their rate is what a flood may cost the sign-ins. Beyond it the bounded queue refuses
fast with SERVER_BUSY (retryable) instead of growing.

With several auth replicas on one machine, a sign-in in any of them stops every replica's child
(services/auth/hashing_pause.py, the `machine` pause).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from argon2 import PasswordHasher, Type

from posmesh.common.errors import Unavailable
from posmesh.common.settings import Settings
from services.auth.hashing_pause import MachineHashingPause
from services.auth.passwords import Argon2Parameters

log = logging.getLogger(__name__)

LOWEST_NICENESS = 19  # and, between sign-ins, below the event loops of this machine too
_hasher: PasswordHasher | None = None  # in the child process


def _start_child() -> None:
    # SCHED_IDLE: the kernel runs it only on a core nothing else wants (Linux); elsewhere, or
    # when refused, the lowest niceness.
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (OSError, AttributeError):
        pass
    try:
        os.nice(LOWEST_NICENESS)
    except OSError:
        pass


def _hash_in_child(memory_kib: int, time_cost: int, parallelism: int, password: str) -> str:
    global _hasher
    if _hasher is None:
        _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib,
                                 parallelism=parallelism, type=Type.ID)
    return _hasher.hash(password)


def _busy() -> Unavailable:
    return Unavailable("SERVER_BUSY", "too many new passwords are being processed; retry "
                       "shortly", retryable="true", retry_after_seconds=1)


class EnrollmentHashing:
    """`await hash(password)` in the child process; `pause()`/`resume()` from the sign-in hasher;
    `close()` on shutdown. The child starts on first use (and again if it died)."""

    def __init__(self, parameters: Argon2Parameters, *, max_pending: int,
                 per_second: float, machine: MachineHashingPause | None = None) -> None:
        parameters.check_owasp_minimum()
        self.parameters = parameters
        self._max_pending = max(1, max_pending)
        self._spacing = 1.0 / per_second
        self._turn = asyncio.Lock()  # one hash at a time, in arrival order
        self._next_start = 0.0
        self._pending = 0
        self._executor: ProcessPoolExecutor | None = None
        self._child_pid: int | None = None
        self._starting = asyncio.Lock()
        self._paused = False
        self._machine = machine  # registers the child, which sign-ins of every replica stop

    @classmethod
    def from_settings(cls, settings: Settings, *, machine: MachineHashingPause | None = None
                      ) -> "EnrollmentHashing":
        return cls(Argon2Parameters.from_settings(settings),
                   max_pending=settings.enrollment_hash_max_pending,
                   per_second=settings.enrollment_hashes_per_second, machine=machine)

    def refuse_if_full(self) -> None:
        """SERVER_BUSY now when a hash would be refused: before a request spends its limits."""
        if self._pending >= self._max_pending:
            raise _busy()

    async def hash(self, password: str) -> str:
        self.refuse_if_full()
        self._pending += 1
        try:
            executor = await self._running_executor()
            loop = asyncio.get_running_loop()
            async with self._turn:
                wait = self._next_start - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._next_start = loop.time() + self._spacing
                p = self.parameters
                return await loop.run_in_executor(
                    executor, _hash_in_child, p.memory_kib, p.time_cost, p.parallelism, password)
        except BrokenProcessPool:
            log.error("the new-password hashing process died; it is started again on next use")
            self._discard_executor()
            raise _busy() from None
        finally:
            self._pending -= 1

    async def _running_executor(self) -> ProcessPoolExecutor:
        async with self._starting:
            if self._executor is None:
                # spawn, not fork: this process has gRPC's and asyncpg's threads.
                executor = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child)
                pid = await asyncio.get_running_loop().run_in_executor(executor, os.getpid)
                self._executor, self._child_pid = executor, pid
                if self._machine is not None:
                    self._machine.add_child(pid)  # stopped at once if a sign-in runs
                if self._paused:  # a sign-in began while the child was starting
                    self._signal(signal.SIGSTOP)
            return self._executor

    def pause(self) -> None:
        """A sign-in hash is about to run: stop the child where it is."""
        self._paused = True
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """No sign-in hash is queued or running any more: let the child go on."""
        self._paused = False
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        if self._child_pid is None:
            return
        try:
            os.kill(self._child_pid, signum)
        except ProcessLookupError:  # died: the pending call raises BrokenProcessPool
            pass

    def _discard_executor(self) -> None:
        if self._machine is not None and self._child_pid is not None:
            self._machine.remove_child(self._child_pid)
        executor, self._executor, self._child_pid = self._executor, None, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._paused = False
        self._signal(signal.SIGCONT)  # a stopped child cannot exit
        self._discard_executor()
