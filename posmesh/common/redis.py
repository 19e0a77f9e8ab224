"""The Redis client of a service (redis-py asyncio).

Replies are bytes by default (`decode_responses=False`) so binary payloads such as serialised
protobuf events round-trip; pass `decode_responses=True` for a client that returns str.
Timeouts are short and retries few and quick: while Redis is down a call fails within about
`2 × SOCKET_TIMEOUT` with redis.exceptions.ConnectionError/TimeoutError (which the interceptor
turns into UNAVAILABLE), instead of hanging the request.

Blocking commands (XREAD BLOCK, pub/sub `listen()`) need a client of their own whose
`socket_timeout` is longer than the block, e.g. `create_redis(settings, socket_timeout=10)` with
`XREAD BLOCK 5000`.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

from posmesh.common.settings import Settings

SOCKET_TIMEOUT = 1.0


def create_redis(settings: Settings, *, decode_responses: bool = False,
                 socket_timeout: float | None = SOCKET_TIMEOUT) -> aioredis.Redis:
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set (`posmesh run` sets it for the services it starts)")
    return aioredis.Redis.from_url(
        settings.redis_url,
        decode_responses=decode_responses,
        socket_timeout=socket_timeout,
        socket_connect_timeout=SOCKET_TIMEOUT,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
        retry_on_error=[ConnectionError, TimeoutError],
        # A connection idle this long is PINGed before use, so a restarted Redis is noticed.
        health_check_interval=15,
        max_connections=200,
    )
