"""Least privilege in PostgreSQL (stack/db_roles.py) and Redis (stack/redis_acl.py): each service
connects as its own role or user, with rights on its own schema, keys and channels only. Checked
over the wire with each service's real credentials."""

from __future__ import annotations

import asyncpg
import pytest

from stack.db_roles import role_names


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _as(stack, service: str) -> asyncpg.Connection:
    return await asyncpg.connect(_dsn(stack.db_roles.service_urls[service]), timeout=10)


async def _refused(connection: asyncpg.Connection, sql: str) -> bool:
    try:
        await connection.execute(sql)
    except asyncpg.exceptions.InsufficientPrivilegeError:
        return True
    return False


async def test_the_orders_role_cannot_read_auth_tables(stack):
    connection = await _as(stack, "orders")
    try:
        assert await _refused(connection, "SELECT count(*) FROM auth.users")
        assert await _refused(connection, "SELECT count(*) FROM auth.sessions")
        assert await _refused(connection, "SELECT count(*) FROM staff.restaurants")
        assert not await _refused(connection, "SELECT count(*) FROM orders.orders")
    finally:
        await connection.close()


async def test_the_staff_role_cannot_write_orders(stack):
    connection = await _as(stack, "staff")
    try:
        assert await _refused(connection, "DELETE FROM orders.orders WHERE false")
        assert await _refused(connection, "UPDATE orders.orders SET version = version WHERE false")
        assert await _refused(connection, "SELECT count(*) FROM orders.orders")
        assert not await _refused(connection, "SELECT count(*) FROM staff.restaurants")
    finally:
        await connection.close()


@pytest.mark.parametrize("service", ["auth", "staff", "orders"])
async def test_a_service_role_cannot_change_the_schema_only_the_owner_can(stack, service):
    connection = await _as(stack, service)
    try:
        assert await _refused(connection, f"CREATE TABLE {service}.intruder (id int)")
        assert await _refused(connection, f"CREATE SCHEMA intruder_{service}")
        assert await _refused(connection, f"ALTER TABLE {service}.alembic_version ADD COLUMN x int")
    finally:
        await connection.close()


async def test_each_service_process_is_connected_as_its_own_role(stack):
    names = role_names(_database(stack))
    connection = await asyncpg.connect(_dsn(stack.settings.database_url), timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT DISTINCT application_name, usename FROM pg_stat_activity "
            "WHERE application_name LIKE 'posmesh-%'")
    finally:
        await connection.close()
    seen = {row["application_name"]: row["usename"] for row in rows}
    for service in ("auth", "staff", "orders"):
        assert seen.get(f"posmesh-{service}") == names[service], seen


def _database(stack) -> str:
    from sqlalchemy.engine import make_url

    return make_url(stack.settings.database_url).database or ""


# -- Redis ----------------------------------------------------------------------------------------

async def _redis_refuses(client, *command) -> bool:
    import redis.exceptions

    try:
        await client.execute_command(*command)
    except redis.exceptions.NoPermissionError:
        return True
    except redis.exceptions.ResponseError as error:
        return "NOPERM" in str(error) or "no permissions" in str(error)
    return False


def _redis_as(stack, service: str):
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(stack.redis_urls[service], socket_timeout=5)


async def test_each_redis_user_reaches_its_own_keys_only(stack):
    own = {"auth": "auth:acl-probe", "staff": "staff:acl-probe", "orders": "orders:acl-probe",
           "realtime": "realtime:acl-probe"}
    for service, key in own.items():
        client = _redis_as(stack, service)
        try:
            assert not await _redis_refuses(client, "SET", key, "1", "EX", "10"), service
            for other, foreign in own.items():
                if other != service:
                    assert await _redis_refuses(client, "GET", foreign), (service, foreign)
                    assert await _redis_refuses(client, "SET", foreign, "x"), (service, foreign)
        finally:
            await client.aclose()


async def test_revocations_order_events_and_user_events_are_written_by_their_owners_only(stack):
    orders, realtime, auth, staff = (_redis_as(stack, name)
                                     for name in ("orders", "realtime", "auth", "staff"))
    try:
        assert await _redis_refuses(orders, "PUBLISH", "auth:revocations", "{}")
        assert await _redis_refuses(staff, "PUBLISH", "auth:revocations", "{}")
        assert await _redis_refuses(orders, "PUBLISH", "realtime:control:p-1", "{}")
        assert await _redis_refuses(realtime, "XADD", "orders:events:r-1", "*", "e", "1")
        assert await _redis_refuses(staff, "XADD", "auth:user-events", "*", "e", "1")
        assert not await _redis_refuses(auth, "PUBLISH", "auth:revocations", "not-json")
        assert not await _redis_refuses(realtime, "XREVRANGE", "auth:user-events", "+", "-",
                                        "COUNT", "1")
    finally:
        for client in (orders, realtime, auth, staff):
            await client.aclose()


@pytest.mark.parametrize("command", [("KEYS", "*"), ("FLUSHALL",), ("CONFIG", "GET", "*"),
                                     ("ACL", "LIST")])
async def test_no_service_user_may_run_admin_commands(stack, command):
    client = _redis_as(stack, "auth")
    try:
        assert await _redis_refuses(client, *command)
    finally:
        await client.aclose()


async def test_realtime_reads_the_user_event_streams_and_writes_them_only_where_acls_cannot_say(
        stack):
    """Read-only key patterns exist from Redis 7 (an outside Redis here): there realtime may not
    write the streams it follows; on 6.2 (the embedded Redis) it can, as docs/security.md says."""
    import redis.asyncio as aioredis

    admin = aioredis.Redis.from_url(stack.settings.redis_url, socket_timeout=5)
    realtime = _redis_as(stack, "realtime")
    try:
        major = int(str((await admin.info("server"))["redis_version"]).split(".")[0])
        assert not await _redis_refuses(realtime, "XREVRANGE", "staff:user-events", "+", "-",
                                        "COUNT", "1")
        # Not one of realtime's keys at all (and a stream that does not exist).
        assert await _redis_refuses(realtime, "XTRIM", "auth:user-events-acl-probe", "MAXLEN", "0")
        # A write that changes nothing when allowed (the stream is far shorter).
        refused = await _redis_refuses(realtime, "XTRIM", "staff:user-events", "MAXLEN",
                                       "1000000000")
        assert refused == (major >= 7 and stack.redis is None), major
    finally:
        await admin.aclose()
        await realtime.aclose()
