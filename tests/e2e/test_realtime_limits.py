"""The Redis-backed parts of the realtime limits and presence, against the stack's real Redis:
the per-address sliding window (with expired-token attempts counted apart) and the cross-process
connection caps. Through Envoy the same code runs on every connection (test_realtime_connect)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from posmesh.common.redis import create_redis
from services.realtime.limits import IpAttemptWindow
from services.realtime.presence import HASH_PREFIX, PROCESSES_KEY, ConnectionRegistry


@pytest.fixture
async def redis(stack):
    client = create_redis(stack.settings)
    yield client
    await client.aclose()


def unique_address() -> str:
    return f"198.51.100.{uuid.uuid4().int % 250 + 1}-{uuid.uuid4().hex[:6]}"


async def test_the_address_window_refuses_over_the_limit_with_a_retry_time(redis):
    window = IpAttemptWindow(redis)
    ip = unique_address()
    verdicts = [await window.hit(ip, 3) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert 0 < verdicts[-1].retry_after_ms <= 60_000
    # Expired-token reconnects have their own budget: a refreshing app still gets in.
    assert (await window.hit(ip, 3, expired_token=True)).allowed
    assert not (await window.hit(ip, 3)).allowed


async def test_connection_caps_hold_across_processes_and_free_on_release(redis):
    first, second = ConnectionRegistry(redis), ConnectionRegistry(redis)
    user, restaurant = f"user-{uuid.uuid4().hex}", f"rest-{uuid.uuid4().hex}"
    try:
        assert (await first.admit(user, restaurant, "pos", per_user=2, per_restaurant=10)).admitted
        assert (await second.admit(user, restaurant, "kitchen", per_user=2,
                                   per_restaurant=10)).admitted
        refused = await second.admit(user, restaurant, "pos", per_user=2, per_restaurant=10)
        assert not refused.admitted and refused.reason == "user" and refused.count == 2
        assert await first.presence(restaurant) == {"pos": 1, "kitchen": 1, "management": 0}
        await first.release(user, restaurant, "pos")
        assert (await second.admit(user, restaurant, "pos", per_user=2, per_restaurant=10)).admitted
        assert await first.presence(restaurant) == {"pos": 1, "kitchen": 1, "management": 0}
    finally:
        await first.stop()
        await second.stop()


async def test_a_dead_process_stops_counting(redis):
    alive, dead = ConnectionRegistry(redis), ConnectionRegistry(redis)
    restaurant = f"rest-{uuid.uuid4().hex}"
    try:
        assert (await dead.admit("u1", restaurant, "kitchen", per_user=5,
                                 per_restaurant=1)).admitted
        assert not (await alive.admit("u2", restaurant, "kitchen", per_user=5,
                                      per_restaurant=1)).admitted
        # The process stops heartbeating: past the staleness window it no longer counts.
        await redis.zadd(PROCESSES_KEY, {dead.process_id: 1.0})
        assert (await alive.admit("u2", restaurant, "kitchen", per_user=5,
                                  per_restaurant=1)).admitted
        assert (await alive.presence(restaurant))["kitchen"] == 1
    finally:
        await alive.stop()
        await redis.delete(HASH_PREFIX + dead.process_id)
        await redis.zrem(PROCESSES_KEY, dead.process_id)


async def test_a_heartbeat_rewrites_the_mirror_after_redis_lost_it(redis):
    registry = ConnectionRegistry(redis)
    restaurant = f"rest-{uuid.uuid4().hex}"
    try:
        assert (await registry.admit("u1", restaurant, "pos", per_user=5,
                                     per_restaurant=5)).admitted
        await redis.delete(HASH_PREFIX + registry.process_id)  # e.g. Redis restarted empty
        assert (await registry.presence(restaurant))["pos"] == 0
        await registry.heartbeat()
        assert (await registry.presence(restaurant))["pos"] == 1
    finally:
        await registry.stop()


async def test_concurrent_admissions_racing_heartbeats_never_pass_the_cap(redis):
    first, second = ConnectionRegistry(redis), ConnectionRegistry(redis)
    user, restaurant = f"user-{uuid.uuid4().hex}", f"rest-{uuid.uuid4().hex}"
    try:
        for _ in range(3):
            attempts = [registry.admit(user, restaurant, "pos", per_user=20, per_restaurant=100)
                        for registry in (first, second) for _ in range(15)]
            beats = [registry.heartbeat() for registry in (first, second) for _ in range(5)]
            results = await asyncio.gather(*attempts, *beats)
            admitted = sum(1 for result in results[:len(attempts)] if result.admitted)
            assert admitted == 20, admitted
            total = (await first.presence(restaurant))["pos"]
            assert total == 20, total
            for registry in (first, second):
                for _ in range(registry.local_totals()["pos"]):
                    await registry.release(user, restaurant, "pos")
            assert (await first.presence(restaurant))["pos"] == 0
    finally:
        await first.stop()
        await second.stop()
