"""Brute-force limits for sign-in, in Redis, per account and per client IP.

Per subject (an account, keyed by a hash of its normalised email so unknown emails are limited
exactly like known ones; and a client IP):

    auth:ratelimit:{kind}:{id}:failures   failed and in-flight attempts in the window (TTL = window)
    auth:ratelimit:{kind}:{id}:level      lockouts in a row (remembered for a window after the last)
    auth:ratelimit:{kind}:{id}:lock       present while locked out (TTL = the lockout)

An attempt is counted *before* the password is checked (`begin`), so a burst of concurrent
guesses cannot slip past the threshold while the first ones are still hashing: attempts beyond
the budget wait until those in flight are decided (then the lockout, if any, applies to them). The first lockout
comes after `threshold` failures and lasts the base time; while the level is remembered a single
further failure locks again, each time twice as long, up to the maximum. A successful sign-in
clears the account's counters and takes its own attempt back off the IP's count (one valid
account must not reset an IP that is guessing other accounts' passwords).

Redis is the only memory replicas share, so when it cannot answer, sign-in fails closed and fast
with UNAVAILABLE (reason RATE_LIMITER_UNAVAILABLE) rather than run unprotected or hang.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from dataclasses import dataclass

from posmesh.common.errors import ResourceExhausted, Unavailable
from posmesh.common.settings import Settings

_TIMEOUT_SECONDS = 2.0
# How long an attempt waits for attempts already in flight for the same subject to finish.
_QUEUE_WAIT_SECONDS = 3.0

# KEYS: (failures, level, lock) per subject. ARGV: window, then one threshold per subject.
# Returns {-1, ms} when locked, {-2, ms} when in-flight attempts fill the budget, else
# {0, count1, budget1, count2, budget2, ...} after counting the attempt for every subject.
_BEGIN = """
local subjects = #KEYS / 3
local longest = 0
for i = 0, subjects - 1 do
  local ttl = redis.call('PTTL', KEYS[i * 3 + 3])
  if ttl > longest then longest = ttl end
end
if longest > 0 then return {-1, longest} end
local budgets = {}
for i = 0, subjects - 1 do
  local level = tonumber(redis.call('GET', KEYS[i * 3 + 2]) or '0')
  local budget = tonumber(ARGV[i + 2])
  if level > 0 then budget = 1 end
  local current = tonumber(redis.call('GET', KEYS[i * 3 + 1]) or '0')
  if current + 1 > budget then return {-2, 1000} end
  budgets[i + 1] = budget
end
local out = {0}
for i = 0, subjects - 1 do
  local count = redis.call('INCR', KEYS[i * 3 + 1])
  if count == 1 then redis.call('EXPIRE', KEYS[i * 3 + 1], ARGV[1]) end
  table.insert(out, count)
  table.insert(out, budgets[i + 1])
end
return out
"""

# KEYS: failures, level, lock. ARGV: count, budget, window, base, max. Returns lockout s or 0.
_FAIL = """
if tonumber(ARGV[1]) < tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
local level = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
local seconds = tonumber(ARGV[4]) * 2 ^ (level - 1)
if seconds > tonumber(ARGV[5]) then seconds = tonumber(ARGV[5]) end
seconds = math.ceil(seconds)
redis.call('SET', KEYS[3], level, 'EX', seconds)
redis.call('SET', KEYS[2], level, 'EX', seconds + tonumber(ARGV[3]))
return seconds
"""

# KEYS: (failures, level) per subject. ARGV: per subject "clear" (forget its failures and
# lockout level) or "give_back" (take this one attempt back off the count, never below zero).
_SETTLE = """
for i = 0, #KEYS / 2 - 1 do
  if ARGV[i + 1] == 'clear' then
    redis.call('DEL', KEYS[i * 2 + 1], KEYS[i * 2 + 2])
  else
    local current = tonumber(redis.call('GET', KEYS[i * 2 + 1]) or '0')
    if current > 0 then redis.call('DECR', KEYS[i * 2 + 1]) end
  end
end
return 0
"""


# A success forgets these subjects' failures (the person proved who they are); the others (a
# client address, a device) only get this attempt back.
CLEARED_ON_SUCCESS = frozenset({"account", "pin-user"})


@dataclass(frozen=True, slots=True)
class Subject:
    kind: str  # "account" or "ip"
    id: str
    threshold: int

    def key(self, part: str) -> str:
        return f"auth:ratelimit:{self.kind}:{self.id}:{part}"

    def keys(self) -> list[str]:
        return [self.key("failures"), self.key("level"), self.key("lock")]


@dataclass(frozen=True, slots=True)
class Attempt:
    """An attempt counted against its subjects; finish it with `succeeded` or `failed`."""
    subjects: list[Subject]
    counts: list[int]
    budgets: list[int]


@dataclass(frozen=True, slots=True)
class Lockout:
    subject_kind: str
    seconds: int


def account_id(normalised_email: str) -> str:
    return hashlib.sha256(normalised_email.encode()).hexdigest()[:32]


def too_many_attempts(seconds: int) -> ResourceExhausted:
    return ResourceExhausted(
        "TOO_MANY_ATTEMPTS",
        f"too many failed sign-in attempts; try again in {seconds} seconds",
        retry_after_seconds=seconds,
    )


def _unavailable() -> Unavailable:
    return Unavailable("RATE_LIMITER_UNAVAILABLE",
                       "sign-in is briefly unavailable (the attempt limiter cannot be reached); "
                       "retry shortly", retryable="true")


class LoginLimiter:
    def __init__(self, redis, settings: Settings) -> None:
        self._redis = redis
        self._window = settings.login_failure_window_seconds
        self._base = settings.login_lockout_base_seconds
        self._max = settings.login_lockout_max_seconds
        self._account_threshold = settings.login_max_failures
        self._ip_threshold = settings.login_ip_max_failures
        self._begin = redis.register_script(_BEGIN)
        self._fail = redis.register_script(_FAIL)
        self._settle_script = redis.register_script(_SETTLE)

    def subjects(self, normalised_email: str, ip: str) -> list[Subject]:
        subjects = [Subject("account", account_id(normalised_email), self._account_threshold)]
        if ip:
            subjects.append(Subject("ip", ip, self._ip_threshold))
        return subjects

    async def _call(self, awaitable):
        try:
            return await asyncio.wait_for(awaitable, _TIMEOUT_SECONDS)
        except Exception as exc:  # Redis down, slow or refusing: fail closed, and clearly
            raise _unavailable() from exc

    async def begin(self, subjects: list[Subject]) -> Attempt:
        """Counts an attempt; raises TOO_MANY_ATTEMPTS while any subject is locked out.

        When the budget is taken by attempts still being checked (a burst for one account, e.g.
        every till of a restaurant signing in at once) this one waits for a slot rather than
        failing: a correct burst just queues briefly, a guessing burst runs into the lockout.
        """
        keys = [key for subject in subjects for key in subject.keys()]
        args = [self._window] + [subject.threshold for subject in subjects]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _QUEUE_WAIT_SECONDS
        delay = 0.01
        while True:
            reply = [int(value) for value in await self._call(self._begin(keys=keys, args=args))]
            if reply[0] == 0:
                return Attempt(subjects, reply[1::2], reply[2::2])
            if reply[0] == -1 or loop.time() + delay > deadline:
                raise too_many_attempts(max(1, math.ceil(reply[1] / 1000)))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def failed(self, attempt: Attempt) -> Lockout | None:
        """Keeps the attempt counted; the longest lockout it started, if any."""
        async def run() -> list[Lockout]:
            started = []
            for subject, count, budget in zip(attempt.subjects, attempt.counts, attempt.budgets):
                seconds = int(await self._fail(
                    keys=subject.keys(), args=[count, budget, self._window, self._base, self._max]))
                if seconds > 0:
                    started.append(Lockout(subject.kind, seconds))
            return started

        started = await self._call(run())
        return max(started, key=lambda lock: lock.seconds) if started else None

    async def succeeded(self, attempt: Attempt) -> None:
        """Clears the account's counters; takes the attempt back off the IP's count."""
        await self._settle(attempt, lambda subject: "clear" if subject.kind in CLEARED_ON_SUCCESS
                           else "give_back")

    async def abandoned(self, attempt: Attempt) -> None:
        """The attempt never reached a password check (e.g. the database was down)."""
        await self._settle(attempt, lambda subject: "give_back")

    async def _settle(self, attempt: Attempt, action) -> None:
        keys = [key for subject in attempt.subjects
                for key in (subject.key("failures"), subject.key("level"))]
        try:
            await asyncio.wait_for(
                self._settle_script(keys=keys, args=[action(s) for s in attempt.subjects]),
                _TIMEOUT_SECONDS)
        except Exception:
            # The answer is decided already; leftover counts expire with their window.
            pass
