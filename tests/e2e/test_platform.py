"""The platform end to end: health through the edge, the supervisor, the embedded stores, logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stack.supervisor import Stack
from tests.harness import create_database, data_dir, drop_database, stack_settings
from tests.support.orders import open_restaurant
from tests.support.stacks import with_embedded_servers

SERVICES = {"auth", "staff", "orders", "realtime"}
ROOT = Path(__file__).resolve().parents[2]
STAFF_REPLICAS = 2  # what `posmesh run` starts in these tests (the default is one per core)


@pytest.fixture(scope="module")
async def manager_headers(edge) -> dict[str, str]:
    """Health details are for owners and managers (anyone else sees the status only)."""
    return (await open_restaurant(edge)).manager.headers


async def test_health_lists_every_service_and_dependency_to_a_manager(edge, manager_headers):
    reply = await edge.get("/api/v1/health", headers=manager_headers)

    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["status"] == "SERVING"
    assert body["answered_by"] in {"auth", "staff", "orders"}
    assert {s["name"]: s["status"] for s in body["services"]} == dict.fromkeys(SERVICES, "SERVING")
    dependencies = {d["name"]: d for d in body["dependencies"]}
    assert dependencies["redis"]["status"] == "SERVING"
    assert dependencies["database"]["status"] == "SERVING"
    # Proto field names, zero values printed: what the mobile apps parse.
    assert dependencies["database"]["pool"]["size"] == 20
    assert dependencies["database"]["pool"]["max_overflow"] == 40
    assert "checked_out" in dependencies["database"]["pool"]


@pytest.mark.parametrize("service", ["auth", "staff", "orders"])
async def test_every_database_service_reports_the_pool_it_really_uses(stack, service):
    from posmesh.health.v1 import health_pb2 as system_pb2, health_pb2_grpc as system_pb2_grpc

    async with stack.channel(service) as channel:
        reply = await system_pb2_grpc.SystemHealthServiceStub(channel).GetSystemHealth(
            system_pb2.GetSystemHealthRequest(), timeout=5)

    assert reply.answered_by == service
    database = next(d for d in reply.dependencies if d.name == "database")
    assert database.status == "SERVING"
    assert (database.pool.size, database.pool.max_overflow) == (20, 40)
    # A live pool: the health check's own round trip has opened at least one connection.
    assert database.pool.checked_in + database.pool.checked_out >= 1


async def test_legacy_health_path_answers_the_same(edge_http1):
    reply = await edge_http1.get("/health")

    assert reply.status_code == 200
    assert reply.json()["status"] == "SERVING"


async def test_each_service_serves_standard_grpc_health(stack):
    for name in stack.service_names:
        async with stack.channel(name) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


async def test_service_logs_are_json_lines_with_the_service_name(stack, edge):
    await edge.get("/api/v1/health")

    lines = [line for line in stack.service_log("staff").splitlines() if line.startswith("{")]
    assert lines, "staff wrote no JSON log lines"
    entry = json.loads(lines[-1])
    assert entry["service"] == "staff"
    assert {"ts", "level", "logger", "msg"} <= entry.keys()


def _component(report: dict, name: str) -> dict:
    return next(c for c in report["services"] + report["dependencies"] if c["name"] == name)


async def _health_until(edge, headers: dict[str, str], status: str, when: str, *,
                        component: str | None = None, seconds: float = 10) -> dict:
    """The first health report with `status` (and, when named, that component's status too).
    Each process reuses its report for HEALTH_CACHE_SECONDS, and Envoy spreads the calls over
    three processes, so the first answers may predate the change."""
    deadline = time.monotonic() + seconds
    while True:
        body = (await edge.get("/api/v1/health", headers=headers)).json()
        wanted = "SERVING" if status == "SERVING" else "NOT_SERVING"
        if body["status"] == status and (
                component is None or _component(body, component)["status"] == wanted):
            return body
        assert time.monotonic() < deadline, f"health did not become {status} {when}: {body}"
        await asyncio.sleep(0.2)


async def test_health_is_answered_while_one_database_service_is_down(stack, edge,
                                                                     manager_headers):
    await stack.stop_every("staff")
    try:
        await _health_until(edge, manager_headers, "DEGRADED", "with staff stopped",
                            component="staff")
        replies = [await edge.get("/api/v1/health", headers=manager_headers) for _ in range(4)]
    finally:
        await stack.start_every("staff")

    for reply in replies:
        assert reply.status_code == 200
        body = reply.json()
        assert body["status"] == "DEGRADED"
        assert body["answered_by"] in {"auth", "orders"}
        staff = next(s for s in body["services"] if s["name"] == "staff")
        # A short classification; the exception text stays in the answering service's log.
        assert staff["status"] == "NOT_SERVING"
        assert staff["error"] in {"UNAVAILABLE", "DEADLINE_EXCEEDED", "no answer within 1s"}
    await _health_until(edge, manager_headers, "SERVING", "after staff came back")


async def test_health_reports_redis_down_and_recovers(stack):
    async with with_embedded_servers(stack) as (stack, edge):
        await _health_reports_redis_down_and_recovers(stack, edge,
                                                      (await open_restaurant(edge)).manager.headers)


async def _health_reports_redis_down_and_recovers(stack, edge, manager_headers):
    await stack.stop_redis()
    try:
        down = await _health_until(edge, manager_headers, "DEGRADED", "with Redis stopped",
                                   component="redis")
    finally:
        await stack.start_redis()

    assert _component(down, "redis")["error"]
    await _health_until(edge, manager_headers, "SERVING", "after Redis came back")


async def test_database_survives_a_postgres_restart(stack):
    async with with_embedded_servers(stack) as (stack, edge):
        await _database_survives_a_postgres_restart(stack, edge,
                                                    (await open_restaurant(edge)).manager.headers)


async def _database_survives_a_postgres_restart(stack, edge, manager_headers):
    await stack.restart_postgres()

    # pool_pre_ping replaces the connections the restart broke.
    deadline = time.monotonic() + 10
    while True:
        body = (await edge.get("/api/v1/health", headers=manager_headers)).json()
        database = next(d for d in body["dependencies"] if d["name"] == "database")
        if database["status"] == "SERVING":
            break
        assert time.monotonic() < deadline, database
        await asyncio.sleep(0.2)


async def test_embedded_postgres_allows_every_pool_at_full_size(stack):
    async with with_embedded_servers(stack) as (stack, _):
        await _embedded_postgres_allows_every_pool_at_full_size(stack)


async def _embedded_postgres_allows_every_pool_at_full_size(stack):
    import asyncpg

    dsn = stack.settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    try:
        limit = int(await connection.fetchval("SHOW max_connections"))
    finally:
        await connection.close()
    per_process = stack.settings.db_pool_size + stack.settings.db_max_overflow
    processes = sum(len(stack.replicas(service)) for service in ("auth", "staff", "orders"))
    assert limit >= processes * per_process + 50


# --- `posmesh run`: the supervisor as a newcomer uses it ----------------------------------------

def _cli_env(folder: Path, database_url: str | None) -> dict[str, str]:
    settings, _ = stack_settings(folder / "data", database_url=database_url, realtime_replicas=1)
    env = {key: value for key, value in os.environ.items()
           if key not in {"DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"}}
    env.update({
        "POSMESH_DATA_DIR": str(settings.data_dir), "EDGE_HOST": settings.edge_host,
        "EDGE_PORT": str(settings.edge_port), "ENVOY_ADMIN_PORT": str(settings.envoy_admin_port),
        "AUTH_ADDR": settings.auth_addr, "STAFF_ADDR": settings.staff_addr,
        "ORDERS_ADDR": settings.orders_addr, "REALTIME_ADDR": settings.realtime_addr,
        "REALTIME_WS_ADDR": settings.realtime_ws_addr,
        "REALTIME_WS_ADDRS": settings.realtime_ws_addr,
        "AUTH_REPLICAS": "2", "STAFF_REPLICAS": str(STAFF_REPLICAS), "ORDERS_REPLICAS": "2",
        # Free ports, not the defaults (9101...): another stack on this machine may hold those.
        "AUTH_METRICS_ADDR": settings.auth_metrics_addr,
        "STAFF_METRICS_ADDR": settings.staff_metrics_addr,
        "ORDERS_METRICS_ADDR": settings.orders_metrics_addr,
        "REALTIME_METRICS_ADDR": settings.realtime_metrics_addr,
        "ENVOY_METRICS_ADDR": settings.envoy_metrics_addr,
    })
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


@pytest.fixture
async def cli_database() -> AsyncIterator[str | None]:
    """A fresh database when DATABASE_URL is external (else `posmesh run` embeds its own)."""
    external = os.environ.get("DATABASE_URL")
    if not external:
        yield None
        return
    url = await create_database(external)
    yield url
    await drop_database(external, url)


@pytest.fixture
def cli_dir() -> Iterator[Path]:
    with data_dir() as path:
        yield path


async def _run_cli_until_up(folder: Path, database_url: str | None
                            ) -> tuple[asyncio.subprocess.Process, Path]:
    out = folder / "run.out"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stack.cli", "run", cwd=ROOT,
        env=_cli_env(folder, database_url), stdout=out.open("wb"),
        stderr=asyncio.subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while "posmesh is up" not in out.read_text(errors="replace"):
        if process.returncode is not None or time.monotonic() > deadline:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await process.wait()
            pytest.fail(f"posmesh run did not come up:\n{out.read_text(errors='replace')[-3000:]}")
        await asyncio.sleep(0.2)
    return process, out


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


async def test_posmesh_run_stops_everything_cleanly_on_sigterm(cli_dir, cli_database):
    process, out = await _run_cli_until_up(cli_dir, cli_database)
    children = _descendants(process.pid)
    # Two processes each of auth, staff and orders, realtime, the mail server and Envoy.
    assert len(children) >= 9
    assert len(_serving(process, "orders")) == 2
    banner = out.read_text().split("posmesh is up")[1]
    assert f"every mail is kept in {cli_dir / 'data' / 'mail'}/" in banner
    assert "posmesh mail last --to ADDRESS" in banner

    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    assert "posmesh: stopped." in out.read_text()
    await asyncio.sleep(0.5)
    assert not [child for child in children if child.is_running()]


def _serving(process: asyncio.subprocess.Process, service: str) -> list[psutil.Process]:
    serving = []
    for child in _descendants(process.pid):
        try:
            if child.cmdline()[-2:] == ["serve", service]:
                serving.append(child)
        except psutil.Error:  # ended (or a zombie not yet reaped) since it was listed
            continue
    return serving


async def test_posmesh_run_restarts_a_crashed_service_and_stops_loudly_when_envoy_dies(
        cli_dir, cli_database):
    process, out = await _run_cli_until_up(cli_dir, cli_database)
    (staff, *_) = _serving(process, "staff")
    staff.kill()
    deadline = time.monotonic() + 30
    while not (len(_serving(process, "staff")) == STAFF_REPLICAS
               and out.read_text(errors="replace").count("staff serving gRPC") > STAFF_REPLICAS):
        assert process.returncode is None, out.read_text()[-3000:]
        assert time.monotonic() < deadline, f"staff was not started again:\n{out.read_text()[-3000:]}"
        await asyncio.sleep(0.2)
    assert "starting it again" in out.read_text().split("exited with code -9")[1]

    envoy = next(child for child in _descendants(process.pid) if child.name() == "envoy")
    others = [child for child in _descendants(process.pid) if child.pid != envoy.pid]
    envoy.kill()
    assert await asyncio.wait_for(process.wait(), 30) == 1
    report = out.read_text()
    assert "envoy exited unexpectedly" in report
    await asyncio.sleep(0.5)
    assert not [child for child in others if child.is_running()]


def test_stack_module_is_what_the_console_script_runs():
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "posmesh"]
    assert script.value == "stack.cli:main"
    assert Stack.__module__ == "stack.supervisor"
