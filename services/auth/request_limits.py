"""Limits on requests that cost a mail or a password hash, per client address and per email
address, in Redis (shared by every auth process): registrations, password-reset requests.

    auth:limit:{kind}:{subject}   a count in a fixed window (TTL = the window)

An address is keyed by a hash of its normalised form, so unknown addresses are limited exactly
like known ones (the answer must not tell them apart). When Redis cannot answer, the request
fails closed and fast with RATE_LIMITER_UNAVAILABLE, like sign-in.

Development profile: with POSMESH_ENV=development, loopback clients get DEV_LOOPBACK_MULTIPLIER
times the per-client-address budgets (the test suite and `make bench` run from 127.0.0.1), as
the realtime service's limits do.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, replace

from posmesh.common.errors import ResourceExhausted, Unavailable
from services.auth.rate_limits import account_id

_TIMEOUT_SECONDS = 2.0
DEV_LOOPBACK_MULTIPLIER = 1000

# KEYS[1] the counter. ARGV: window seconds. Returns {count, seconds left in the window}.
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1])) end
return {count, redis.call('TTL', KEYS[1])}
"""


@dataclass(frozen=True, slots=True)
class Limit:
    kind: str  # e.g. "register:ip"
    per_window: int
    window_seconds: int


def ip_subject(ip: str) -> str:
    return ip or "unknown"


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def address_subject(email: str) -> str:
    return account_id(email)


class RequestLimits:
    def __init__(self, redis, *, development: bool = False) -> None:
        self._hit = redis.register_script(_HIT)
        self._development = development

    def for_client(self, limit: Limit, ip: str) -> tuple[Limit, str]:
        """`limit` for a client address (loopback in development gets a larger budget)."""
        if self._development and _is_loopback(ip):
            limit = replace(limit, per_window=limit.per_window * DEV_LOOPBACK_MULTIPLIER)
        return limit, ip_subject(ip)

    async def check(self, *checks: tuple[Limit, str]) -> None:
        """Counts this request against each (limit, subject); raises RATE_LIMITED (with
        `retry_after_seconds`) when any is over."""
        try:
            results = await asyncio.wait_for(asyncio.gather(*(
                self._hit(keys=[f"auth:limit:{limit.kind}:{subject}"],
                          args=[limit.window_seconds])
                for limit, subject in checks)), _TIMEOUT_SECONDS)
        except Exception as exc:
            raise Unavailable("RATE_LIMITER_UNAVAILABLE", "the request limiter is unavailable; "
                              "retry shortly", retryable="true") from exc
        for (limit, _), (count, ttl) in zip(checks, results):
            if int(count) > limit.per_window:
                retry_after = max(1, int(ttl))
                raise ResourceExhausted(
                    "RATE_LIMITED", f"too many requests of this kind; retry in {retry_after} s",
                    retry_after_seconds=str(retry_after), limit=limit.kind)
