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

import time

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

from posmesh.common.metrics import REDIS_CALL_SECONDS, REDIS_ERRORS
from posmesh.common.settings import Settings

SOCKET_TIMEOUT = 1.0


def _command_name(args: tuple) -> str:
    name = args[0] if args else "UNKNOWN"
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    name = str(name).split(" ", 1)[0].upper()
    if name in ("XREAD", "XREADGROUP") and any(arg in ("BLOCK", b"BLOCK") for arg in args):
        return name + "_BLOCK"  # waits by design: kept apart from the latency of real work
    return name


class MeteredRedis(aioredis.Redis):
    """redis-py's asyncio client, recording the latency and errors of every command and
    pipeline (posmesh_redis_call_seconds, posmesh_redis_errors_total)."""

    async def execute_command(self, *args, **options):
        command = _command_name(args)
        start = time.perf_counter()
        try:
            return await super().execute_command(*args, **options)
        except Exception as exc:
            REDIS_ERRORS.labels(command, type(exc).__name__).inc()
            raise
        finally:
            REDIS_CALL_SECONDS.observe((command,), time.perf_counter() - start)

    def pipeline(self, transaction: bool = True, shard_hint=None) -> "MeteredPipeline":
        return MeteredPipeline(self.connection_pool, self.response_callbacks, transaction,
                               shard_hint)


class MeteredPipeline(Pipeline):
    async def execute(self, raise_on_error: bool = True):
        command = "MULTI" if self.is_transaction else "PIPELINE"
        start = time.perf_counter()
        try:
            return await super().execute(raise_on_error)
        except Exception as exc:
            REDIS_ERRORS.labels(command, type(exc).__name__).inc()
            raise
        finally:
            REDIS_CALL_SECONDS.observe((command,), time.perf_counter() - start)


def create_redis(settings: Settings, *, decode_responses: bool = False,
                 socket_timeout: float | None = SOCKET_TIMEOUT) -> aioredis.Redis:
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set (`posmesh run` sets it for the services it starts)")
    return MeteredRedis.from_url(
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
