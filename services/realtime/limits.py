"""Connection and message limits.

- Per IP: a sliding window of connection attempts in Redis (shared by every realtime process).
  Attempts carrying an expired token are counted in a window of their own, so an app that is
  refreshing its token is never locked out by its own reconnects (the old service's failure).
- Per user and per restaurant: live sockets across processes (presence.py counts them).
- Per process and IP: sockets still in the auth handshake, so a flood of idle upgrades is bounded.
- Per connection: a token bucket on inbound messages, and a cap on invalid ones.

In development, loopback clients get a larger per-IP budget (the "development profile"): the whole
test suite and `make bench` connect from 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

from posmesh.common.settings import Settings

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
DEV_LOOPBACK_MULTIPLIER = 50
MAX_PENDING_HANDSHAKES_PER_IP = 64
MAX_PENDING_HANDSHAKES = 5000

# Inbound messages per connection: a steady rate with a burst; the app sends one ping per 15 s.
MESSAGES_PER_SECOND = 20.0
MESSAGE_BURST = 40.0
# Beyond this many dropped (over budget) or invalid messages the connection is closed (1008).
MAX_DROPPED_MESSAGES = 100
MAX_INVALID_MESSAGES = 20


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    attempts_per_ip_per_minute: int
    expired_attempts_per_ip_per_minute: int
    pending_handshakes_per_ip: int
    connections_per_user: int
    connections_per_restaurant: int

    @classmethod
    def for_client(cls, settings: Settings, ip: str) -> LimitPolicy:
        factor = DEV_LOOPBACK_MULTIPLIER if settings.is_development and is_loopback(ip) else 1
        per_ip = settings.ws_max_connections_per_ip_per_minute * factor
        return cls(
            attempts_per_ip_per_minute=per_ip,
            expired_attempts_per_ip_per_minute=per_ip,
            pending_handshakes_per_ip=MAX_PENDING_HANDSHAKES_PER_IP * factor,
            connections_per_user=settings.ws_max_connections_per_user,
            connections_per_restaurant=settings.ws_max_connections_per_restaurant,
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after_ms: int = 0
    count: int = 0


# KEYS[1] window; ARGV now_ms, window_ms, limit, member. Returns {allowed, count, retry_after_ms}.
_SLIDING_WINDOW = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local retry = window
  if oldest[2] then retry = tonumber(oldest[2]) + window - now end
  return {0, count, retry}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return {1, count + 1, 0}
"""


def ip_window_key(ip: str, *, expired_token: bool) -> str:
    return f"realtime:ip:{ip}:{'expired' if expired_token else 'attempts'}"


class IpAttemptWindow:
    """Sliding window of connection attempts per IP, in Redis. Fails open when Redis is down:
    the per-user and per-restaurant caps and the handshake cap still bound a client."""

    def __init__(self, redis, *, window_seconds: int = WINDOW_SECONDS) -> None:
        self._redis = redis
        self._window_ms = window_seconds * 1000
        self._script = redis.register_script(_SLIDING_WINDOW)

    async def hit(self, ip: str, limit: int, *, expired_token: bool = False) -> Verdict:
        now_ms = int(time.time() * 1000)
        try:
            allowed, count, retry = await self._script(
                keys=[ip_window_key(ip, expired_token=expired_token)],
                args=[now_ms, self._window_ms, limit, f"{now_ms}:{uuid.uuid4().hex[:12]}"])
        except Exception as exc:  # Redis down: degrade, never refuse every till at once
            log.warning("connection rate limit unavailable, allowing", extra={"error": repr(exc)})
            return Verdict(True)
        return Verdict(bool(allowed), int(retry), int(count))


class PendingHandshakes:
    """Sockets of this process that have not authenticated yet, per IP."""

    def __init__(self) -> None:
        self._per_ip: defaultdict[str, int] = defaultdict(int)
        self.total = 0

    def try_add(self, ip: str, limit_per_ip: int) -> bool:
        if self.total >= MAX_PENDING_HANDSHAKES or self._per_ip[ip] >= limit_per_ip:
            return False
        self._per_ip[ip] += 1
        self.total += 1
        return True

    def remove(self, ip: str) -> None:
        left = self._per_ip.get(ip, 0) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)
        self.total = max(0, self.total - 1)


class MessageBudget:
    """Token bucket for a connection's inbound messages."""

    __slots__ = ("tokens", "updated", "dropped", "invalid")

    def __init__(self) -> None:
        self.tokens = MESSAGE_BURST
        self.updated = time.monotonic()
        self.dropped = 0
        self.invalid = 0

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(MESSAGE_BURST, self.tokens + (now - self.updated) * MESSAGES_PER_SECOND)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.dropped += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.dropped > MAX_DROPPED_MESSAGES or self.invalid > MAX_INVALID_MESSAGES
