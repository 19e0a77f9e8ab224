"""Who is connected, across every realtime process: the per-user and per-restaurant connection caps
and the presence counts (screens per connection type per restaurant).

Each process keeps its own counts in memory (the truth for its sockets) and mirrors them into a
Redis hash `realtime:conns:{process_id}` (fields `u:{user}`, `r:{restaurant}`,
`p:{restaurant}:{type}`), and marks itself alive in the sorted set `realtime:processes`
(score = last heartbeat). A process that dies stops heartbeating: its hash expires and readers skip
it, so counts never stick. Admission is one Lua script that sums the live processes and increments
this process's hash atomically, so two processes cannot both admit the 21st socket of a user.
The mirror is rewritten from memory only when it may be wrong (a Redis call failed, or the hash
is gone after a Redis restart): a routine rewrite could erase an admission in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass

from services.realtime.protocol import CONNECTION_TYPES

log = logging.getLogger(__name__)

PROCESSES_KEY = "realtime:processes"
HASH_PREFIX = "realtime:conns:"
HEARTBEAT_SECONDS = 5.0
STALE_AFTER_SECONDS = 15.0
HASH_TTL_SECONDS = 30

# KEYS[1] processes zset, KEYS[2] own hash. ARGV: now, stale_after, hash prefix, own id,
# user field, restaurant field, presence field, user limit, restaurant limit, ttl.
# Returns {1} when admitted, {0, which (1 user, 2 restaurant), current count} when refused.
_ADMIT = """
local now = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[4])
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[2]), '+inf')
local users, restaurant = 0, 0
for _, pid in ipairs(live) do
  local counts = redis.call('HMGET', ARGV[3] .. pid, ARGV[5], ARGV[6])
  users = users + (tonumber(counts[1]) or 0)
  restaurant = restaurant + (tonumber(counts[2]) or 0)
end
if users >= tonumber(ARGV[8]) then return {0, 1, users} end
if restaurant >= tonumber(ARGV[9]) then return {0, 2, restaurant} end
for i = 5, 7 do
  if ARGV[i] ~= '' then redis.call('HINCRBY', KEYS[2], ARGV[i], 1) end
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[10]))
return {1, 0, 0}
"""

# KEYS[1] own hash; ARGV fields to decrement ('' for none).
_RELEASE = """
for _, field in ipairs(ARGV) do
  if field ~= '' and redis.call('HINCRBY', KEYS[1], field, -1) <= 0 then
    redis.call('HDEL', KEYS[1], field)
  end
end
return 1
"""


def user_field(user_id: str) -> str:
    return f"u:{user_id}"


def restaurant_field(restaurant_id: str) -> str:
    """'' for a user-scoped socket: it belongs to no restaurant and counts towards none."""
    return f"r:{restaurant_id}" if restaurant_id else ""


def presence_field(restaurant_id: str, connection_type: str) -> str:
    return f"p:{restaurant_id}:{connection_type}" if restaurant_id else ""


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    reason: str = ""  # "user" or "restaurant" when refused
    count: int = 0


class ConnectionRegistry:
    def __init__(self, redis, *, process_id: str | None = None) -> None:
        self._redis = redis
        self.process_id = process_id or uuid.uuid4().hex[:16]
        self._hash_key = HASH_PREFIX + self.process_id
        self._admit = redis.register_script(_ADMIT)
        self._release = redis.register_script(_RELEASE)
        self._counts: Counter[str] = Counter()  # the same fields as the Redis mirror
        self._task: asyncio.Task | None = None
        self._mirror_stale = False  # a Redis write failed: rewrite the mirror at the next beat
        self.redis_ok = True

    # --- admission -------------------------------------------------------------------------

    async def admit(self, user_id: str, restaurant_id: str, connection_type: str, *,
                    per_user: int, per_restaurant: int) -> Admission:
        fields = (user_field(user_id), restaurant_field(restaurant_id),
                  presence_field(restaurant_id, connection_type))
        try:
            result = await self._admit(
                keys=[PROCESSES_KEY, self._hash_key],
                args=[time.time(), STALE_AFTER_SECONDS, HASH_PREFIX, self.process_id, *fields,
                      per_user, per_restaurant, HASH_TTL_SECONDS])
            self.redis_ok = True
        except Exception as exc:
            # Redis down: enforce the caps on this process's own sockets only.
            self.redis_ok = False
            self._mirror_stale = True
            log.warning("presence unavailable, checking connection caps locally",
                        extra={"error": repr(exc)})
            if self._counts[fields[0]] >= per_user:
                return Admission(False, "user", self._counts[fields[0]])
            if fields[1] and self._counts[fields[1]] >= per_restaurant:
                return Admission(False, "restaurant", self._counts[fields[1]])
            result = [1]
        if not int(result[0]):
            return Admission(False, "user" if int(result[1]) == 1 else "restaurant", int(result[2]))
        for field in fields:
            if field:
                self._counts[field] += 1
        return Admission(True)

    async def release(self, user_id: str, restaurant_id: str, connection_type: str) -> None:
        fields = (user_field(user_id), restaurant_field(restaurant_id),
                  presence_field(restaurant_id, connection_type))
        for field in filter(None, fields):
            left = self._counts[field] - 1
            if left > 0:
                self._counts[field] = left
            else:
                del self._counts[field]
        try:
            await self._release(keys=[self._hash_key], args=list(fields))
        except Exception as exc:  # the next heartbeat rewrites the mirror from memory
            self._mirror_stale = True
            log.warning("could not release presence in Redis", extra={"error": repr(exc)})

    # --- reading ---------------------------------------------------------------------------

    def local_presence(self) -> dict[str, dict[str, int]]:
        """restaurant → connection type → sockets of this process."""
        result: dict[str, dict[str, int]] = {}
        for field, count in self._counts.items():
            if field.startswith("p:") and count > 0:
                _, restaurant_id, connection_type = field.split(":", 2)
                result.setdefault(restaurant_id, {})[connection_type] = count
        return result

    def local_totals(self) -> dict[str, int]:
        totals = dict.fromkeys(CONNECTION_TYPES, 0)
        for per_type in self.local_presence().values():
            for connection_type, count in per_type.items():
                totals[connection_type] = totals.get(connection_type, 0) + count
        return totals

    async def live_processes(self) -> list[str]:
        members = await self._redis.zrangebyscore(PROCESSES_KEY, time.time() - STALE_AFTER_SECONDS,
                                                  "+inf")
        return [m.decode() if isinstance(m, bytes) else m for m in members]

    async def presence(self, restaurant_id: str) -> dict[str, int]:
        """Connected sockets per connection type of one restaurant, across every process."""
        processes = await self.live_processes()
        fields = [presence_field(restaurant_id, kind) for kind in CONNECTION_TYPES]
        async with self._redis.pipeline(transaction=False) as pipe:
            for pid in processes:
                pipe.hmget(HASH_PREFIX + pid, fields)
            rows = await pipe.execute()
        totals = dict.fromkeys(CONNECTION_TYPES, 0)
        for row in rows:
            for kind, value in zip(CONNECTION_TYPES, row):
                totals[kind] += int(value or 0)
        return totals

    # --- heartbeat -------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Mark this process alive; rewrite its mirror from memory when it may be wrong."""
        # Taken before the check: every count in it was already written to Redis, so a missing
        # hash then means Redis lost it (not that an admission is still on its way).
        written = any(count > 0 for count in self._counts.values())
        now = time.time()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(PROCESSES_KEY, {self.process_id: now})
            pipe.expire(self._hash_key, HASH_TTL_SECONDS)
            pipe.exists(self._hash_key)
            # Processes that stopped long ago leave the set.
            pipe.zremrangebyscore(PROCESSES_KEY, "-inf", now - 10 * STALE_AFTER_SECONDS)
            _, _, exists, _ = await pipe.execute()
        if self._mirror_stale or (written and not exists):
            snapshot = {field: count for field, count in self._counts.items() if count > 0}
            # Rare (after a Redis failure); an admission racing this rewrite may be counted
            # once too few or too many until the next one.
            self._mirror_stale = False
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._hash_key)
                if snapshot:
                    pipe.hset(self._hash_key, mapping=snapshot)
                    pipe.expire(self._hash_key, HASH_TTL_SECONDS)
                await pipe.execute()
            log.info("presence mirror rewritten from memory", extra={"fields": len(snapshot)})

    async def _run(self) -> None:
        while True:
            try:
                await self.heartbeat()
                self.redis_ok = True
            except Exception as exc:
                self.redis_ok = False
                self._mirror_stale = True
                log.warning("presence heartbeat failed", extra={"error": repr(exc)})
            await asyncio.sleep(HEARTBEAT_SECONDS)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="presence-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(PROCESSES_KEY, self.process_id)
                pipe.delete(self._hash_key)
                await pipe.execute()
        except Exception as exc:
            log.warning("could not remove presence on shutdown", extra={"error": repr(exc)})
