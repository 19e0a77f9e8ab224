"""posmesh.health.v1.SystemHealthService: the aggregated health any service process can answer.

Each service's standard grpc.health.v1 Check, concurrently with a short deadline, plus this
process's own database (pool statistics and a round trip), Redis (PING) and its revocation set
(NOT_SERVING when neither the revocation channel nor auth can keep it current). One check serves
every caller for HEALTH_CACHE_SECONDS, so a flood of health calls costs one fan-out per second.

Who sees what: anyone (the route is public) gets the overall status only; an owner or manager
with a valid token, and callers inside the mesh (not through the edge), get every component with
its latency and pool. Errors are short classifications; the raw exception text goes to the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import metadata
from typing import Awaitable, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from posmesh.common import clients, context
from posmesh.common.permissions import MANAGERS
from posmesh.common.settings import Settings
from posmesh.health.v1 import health_pb2 as system_pb2
from posmesh.health.v1 import health_pb2_grpc as system_pb2_grpc

log = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 1.0
SERVING, NOT_SERVING = "SERVING", "NOT_SERVING"


def _version() -> str:
    try:
        return metadata.version("posmesh")
    except metadata.PackageNotFoundError:
        return "unknown"


async def _timed(name: str, probe: Awaitable[str | None]) -> system_pb2.ComponentHealth:
    """Run `probe` (which returns an error text or None) into a ComponentHealth."""
    started = time.perf_counter()
    try:
        error = await asyncio.wait_for(probe, CHECK_TIMEOUT_SECONDS)
    except asyncio.TimeoutError:
        error = f"no answer within {CHECK_TIMEOUT_SECONDS:g}s"
    except grpc.aio.AioRpcError as exc:
        log.warning("health check of %s failed: %s %s", name, exc.code().name, exc.details())
        error = exc.code().name
    except Exception as exc:  # a health check reports failures, it never raises them
        log.warning("health check of %s failed: %r", name, exc)
        error = type(exc).__name__
    return system_pb2.ComponentHealth(
        name=name,
        status=NOT_SERVING if error else SERVING,
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
        error=error or "",
    )


class DatabaseProbe(Protocol):
    """The pool a service really uses: a SQLAlchemy engine (db.EngineProbe) or a raw asyncpg pool."""

    async def ping(self) -> None: ...

    def pool_stats(self) -> dict[str, int]: ...


class RevocationProbe(Protocol):
    """The process's revocation follower (posmesh.common.revocation_follower)."""

    def problem(self) -> str | None: ...


class SystemHealth(system_pb2_grpc.SystemHealthServiceServicer):
    def __init__(self, name: str, settings: Settings, *, database: DatabaseProbe | None = None,
                 redis=None, revocations: RevocationProbe | None = None) -> None:
        self._name = name
        self._settings = settings
        self._database = database
        self._redis = redis
        self._revocations = revocations
        self._version = _version()
        self._latest: system_pb2.GetSystemHealthResponse | None = None
        self._latest_at = 0.0
        self._running: asyncio.Task | None = None

    async def GetSystemHealth(self, request, ctx) -> system_pb2.GetSystemHealthResponse:
        report = await self.latest()
        if _may_see_details():
            return report
        return system_pb2.GetSystemHealthResponse(status=report.status)

    async def latest(self) -> system_pb2.GetSystemHealthResponse:
        """The newest report, checked again when older than HEALTH_CACHE_SECONDS; concurrent
        callers share one check."""
        if self._latest is not None and \
                time.monotonic() - self._latest_at < self._settings.health_cache_seconds:
            return self._latest
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._refresh(), name="system-health")
        return await asyncio.shield(self._running)

    async def _refresh(self) -> system_pb2.GetSystemHealthResponse:
        report = await self.check()
        self._latest, self._latest_at = report, time.monotonic()
        return report

    async def check(self) -> system_pb2.GetSystemHealthResponse:
        probes = [_timed(service, self._check_service(service)) for service in clients.SERVICES]
        if self._database is not None:
            probes.append(_timed("database", self._check_database()))
        if self._redis is not None:
            probes.append(_timed("redis", self._check_redis()))
        if self._revocations is not None:
            probes.append(_timed("revocations", self._check_revocations()))
        results = await asyncio.gather(*probes)
        services, dependencies = results[: len(clients.SERVICES)], results[len(clients.SERVICES):]
        for component in dependencies:
            if component.name == "database":
                component.pool.CopyFrom(system_pb2.PoolStats(**self._database.pool_stats()))
        healthy = all(component.status == SERVING for component in results)
        return system_pb2.GetSystemHealthResponse(
            status=SERVING if healthy else "DEGRADED",
            answered_by=self._name,
            services=services,
            dependencies=dependencies,
            version=self._version,
        )

    async def _check_service(self, service: str) -> str | None:
        stub = health_pb2_grpc.HealthStub(clients.channel(service, self._settings))
        # wait_for_ready: a channel still backing off after the peer restarted gets the whole
        # timeout to reconnect instead of failing at once.
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=CHECK_TIMEOUT_SECONDS,
                                 wait_for_ready=True)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return None

    async def _check_database(self) -> str | None:
        await self._database.ping()
        return None

    async def _check_redis(self) -> str | None:
        await self._redis.ping()
        return None

    async def _check_revocations(self) -> str | None:
        return self._revocations.problem()


def _may_see_details() -> bool:
    """Owners and managers (a valid token) and callers inside the mesh see every component."""
    if not context.request_info().via_edge:
        return True
    caller = context.current_or_none()
    return caller is not None and caller.role in MANAGERS
