"""Every Redis call of a service is timed by command, pipelines included, failures counted by
error class; blocking reads are kept apart from the latency of real work. Against a real Redis
(the embedded one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.exceptions
from prometheus_client import REGISTRY

from posmesh.common.metrics import REDIS_CALL_SECONDS
from posmesh.common.redis import create_redis
from posmesh.common.settings import Settings
from stack.embedded import EmbeddedRedis


@pytest.fixture
async def client(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "redis" / "redis.db")
    url = server.start()
    redis_client = create_redis(Settings(REDIS_URL=url))
    try:
        yield redis_client
    finally:
        await redis_client.aclose()
        server.stop()


def calls(command: str) -> int:
    return REDIS_CALL_SECONDS.counts().get((command,), 0)


async def test_commands_and_pipelines_are_timed_by_name(client):
    before = {name: calls(name) for name in ("SET", "GET", "PIPELINE", "XREAD_BLOCK")}
    await client.set("k", "v")
    await client.get("k")
    async with client.pipeline(transaction=False) as pipe:
        await pipe.get("k").get("k").execute()
    await client.xread({"stream": "0"}, block=10)

    assert calls("SET") == before["SET"] + 1
    assert calls("GET") == before["GET"] + 1
    assert calls("PIPELINE") == before["PIPELINE"] + 1
    assert calls("XREAD_BLOCK") == before["XREAD_BLOCK"] + 1


async def test_a_failed_command_is_counted_by_its_error_class(client):
    labels = {"command": "INCRBY", "error": "ResponseError"}  # redis-py sends INCR as INCRBY
    before = REGISTRY.get_sample_value("posmesh_redis_errors_total", labels) or 0
    await client.set("text", "not a number")
    with pytest.raises(redis.exceptions.ResponseError):
        await client.incr("text")

    assert REGISTRY.get_sample_value("posmesh_redis_errors_total", labels) == before + 1
