"""Where each session's screen got to, so a socket opened without `last_event_id` (the existing
app never sends one) resumes with no gap.

A socket's *confirmed* position is the last event the client is known to have received:
- the events written before a server `ping` that the client answered with `pong` (frames arrive
  in order, so the answer proves everything before the ping arrived); the gateway sends such a
  ping within a second of a delivery;
- all events written before a close the server started and the client answered (the close
  handshake completed), e.g. a replaced socket.
Events written after the confirmed position may have died in flight, so they are sent again: the
guarantee across reconnects is at least once, and every event carries its id for clients that
deduplicate.

Positions live in Redis (`realtime:resume:{sid}:{connection_type}`: restaurant, sequence, when
confirmed), written in batches each second and at every close, never moving backwards. When Redis
cannot answer, this process's own copy is used.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass

log = logging.getLogger(__name__)

KEY_PREFIX = "realtime:resume:"
# A record outlives the resume window so that a session coming back later is told to reload
# (resync_required) instead of silently starting from now.
RECORD_TTL_SECONDS = 24 * 3600
LOCAL_COPIES = 50_000
_TIMEOUT_SECONDS = 1.0

# KEYS[1] the record. ARGV: restaurant, sequence, confirmed at, ttl. Never moves a position back
# within a restaurant (sequences only grow); another restaurant starts over.
_SAVE = """
local current = redis.call('HMGET', KEYS[1], 'restaurant', 'sequence')
if current[1] == ARGV[1] and tonumber(current[2] or '-1') > tonumber(ARGV[2]) then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
  return 0
end
redis.call('HSET', KEYS[1], 'restaurant', ARGV[1], 'sequence', ARGV[2], 'at', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""


@dataclass(frozen=True, slots=True)
class ResumePoint:
    restaurant_id: str
    sequence: int
    confirmed_at: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class ResumeDecision:
    after: int | None  # replay after this sequence; None: live from now
    resync: bool  # the client must reload first (too old, or too far behind)
    resumed: bool  # a stored position was used


def decide(point: ResumePoint | None, *, restaurant_id: str, head: int | None, now: float,
           window_seconds: float, max_events: int) -> ResumeDecision:
    """Where a socket without `last_event_id` starts. `head` is the restaurant's newest event."""
    if point is None or point.restaurant_id != restaurant_id:
        return ResumeDecision(None, False, False)
    if now - point.confirmed_at > window_seconds:
        return ResumeDecision(None, True, False)
    if head is not None and head - point.sequence > max_events:
        return ResumeDecision(None, True, False)
    return ResumeDecision(point.sequence, False, True)


def record_key(session_id: str, connection_type: str) -> str:
    return f"{KEY_PREFIX}{session_id}:{connection_type}"


class ResumeBook:
    def __init__(self, redis) -> None:
        self._redis = redis
        self._save = redis.register_script(_SAVE) if redis is not None else None
        self._local: OrderedDict[str, ResumePoint] = OrderedDict()

    def _remember(self, key: str, point: ResumePoint) -> None:
        known = self._local.get(key)
        if (known is not None and known.restaurant_id == point.restaurant_id
                and known.sequence > point.sequence):
            return
        self._local[key] = point
        self._local.move_to_end(key)
        while len(self._local) > LOCAL_COPIES:
            self._local.popitem(last=False)

    async def load(self, session_id: str, connection_type: str) -> ResumePoint | None:
        key = record_key(session_id, connection_type)
        if self._redis is None:
            return self._local.get(key)
        try:
            row = await asyncio.wait_for(
                self._redis.hmget(key, ["restaurant", "sequence", "at"]), _TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("resume positions unavailable; using this process's copy",
                        extra={"error": repr(exc)})
            return self._local.get(key)
        restaurant, sequence, confirmed_at = (
            value.decode() if isinstance(value, bytes) else value for value in row)
        if not restaurant or sequence is None:
            return self._local.get(key)
        return ResumePoint(restaurant, int(sequence), float(confirmed_at or 0))

    async def save(self, entries: list[tuple[str, str, ResumePoint]]) -> None:
        """(session id, connection type, point) for each socket whose position moved; never
        raises."""
        for session_id, connection_type, point in entries:
            self._remember(record_key(session_id, connection_type), point)
        if self._redis is None or not entries:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for session_id, connection_type, point in entries:
                    await self._save(keys=[record_key(session_id, connection_type)],
                                     args=[point.restaurant_id, point.sequence,
                                           f"{point.confirmed_at:.3f}", RECORD_TTL_SECONDS],
                                     client=pipe)
                await asyncio.wait_for(pipe.execute(), _TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("could not save %d resume position(s)", len(entries),
                        extra={"error": repr(exc)})
