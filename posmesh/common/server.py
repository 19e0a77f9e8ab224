"""The gRPC server every service runs: interceptors, standard health, reflection, system health,
and a graceful shutdown on SIGTERM/SIGINT.

    async def serve(settings):
        engine = db.create_engine(settings, "orders")
        await run_grpc_service("orders", settings, register=lambda server: [...],
                               interceptors=server_interceptors(authenticator), engine=engine,
                               redis=redis)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Awaitable, Callable, Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from posmesh.common import clients, db, mesh_tls, metrics, rpc_metrics, telemetry
from posmesh.common import certificate_metrics as certificates
from posmesh.common.health import SystemHealth
from posmesh.common.settings import Settings
from posmesh.health.v1 import health_pb2 as system_pb2
from posmesh.health.v1 import health_pb2_grpc as system_pb2_grpc

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0
SERVER_OPTIONS: list[tuple[str, object]] = [
    # Off: with SO_REUSEPORT a second copy of a service (or a stale one) binds the same port
    # silently and steals half the calls. Scale out with more ports behind Envoy instead.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Accept the keepalive pings clients.py sends (every 30 s, also between calls).
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000),
    ("grpc.http2.max_ping_strikes", 5),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    # gRPC's default (8 KiB) would answer an oversized token with RESOURCE_EXHAUSTED (429 at the
    # edge) before the interceptor can call it TOKEN_INVALID; the edge admits 32 KiB of headers.
    ("grpc.max_metadata_size", 64 * 1024),
    ("grpc.max_concurrent_streams", 1000),
]

Register = Callable[[grpc.aio.Server], Iterable[str]]

# Young-generation collections every this many net allocations (CPython's default is 700). A
# request allocates a few thousand short-lived objects that reference counting frees anyway;
# at the default the collector ran several times per request (measured: docs/bench.md).
GC_YOUNG_THRESHOLD = 20_000


def tune_garbage_collector() -> None:
    """Everything loaded so far (modules, descriptors, settings: hundreds of thousands of
    objects that live as long as the process) is moved out of the collector's sight, so no
    collection walks it again; and young collections run less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def run_grpc_service(
    name: str,
    settings: Settings,
    *,
    register: Register,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    engine=None,
    database=None,
    redis=None,
    revocations=None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    on_draining: Callable[[], Awaitable[None]] | None = None,
    address: str | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight calls and close what was handed in.

    `register(server)` adds the service's servicers and returns their full names (for
    reflection and per-service health). `interceptors` run after the tracing interceptor, so
    their logs and errors carry the trace ids. `address` defaults to the service's setting.
    Health reports `database` (a health.DatabaseProbe, e.g. a raw asyncpg store) or else
    `engine`'s SQLAlchemy pool, and the process's revocation follower (`revocations`).
    """
    telemetry.setup(name, settings)
    # RED per RPC only where a metrics page shows it (<SERVICE>_METRICS_ADDR set).
    metered = [rpc_metrics.RpcMetricsInterceptor()] if settings.metrics_addr(name) else []
    server = grpc.aio.server(
        interceptors=[telemetry.server_interceptor(), *metered, *interceptors],
        options=SERVER_OPTIONS,
    )
    names = list(register(server))

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    probe = database or (db.EngineProbe(engine) if engine is not None else None)
    system_pb2_grpc.add_SystemHealthServiceServicer_to_server(
        SystemHealth(name, settings, redis=redis, revocations=revocations, database=probe), server
    )
    if probe is not None:
        metrics.register(metrics.PoolCollector(probe.pool_stats,
                                               getattr(probe, "pool_waiting", lambda: 0)))
    metrics.register(certificates.CertificateExpiry(settings))
    metrics_server = await metrics.serve(name, settings.metrics_addr(name))
    system_name = system_pb2.DESCRIPTOR.services_by_name["SystemHealthService"].full_name
    reflection.enable_server_reflection(
        [*names, system_name, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    bind = address or settings.service_addr(name)
    if settings.mesh_tls:
        # Mutual TLS only: no plaintext port exists (posmesh/common/mesh_tls.py).
        server.add_secure_port(bind, mesh_tls.server_credentials(mesh_tls.files_for(settings, name)))
    else:
        log.warning("%s: MESH_TLS=false, serving plaintext gRPC (measurements only)", name)
        server.add_insecure_port(bind)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tune_garbage_collector()
    await server.start()
    for service in ("", *names, system_name):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("%s serving gRPC on %s (%s)", name, bind, "mTLS" if settings.mesh_tls else "plaintext",
             extra={"services": names})
    try:
        await stop.wait()
    finally:
        log.info("%s shutting down: draining in-flight calls for up to %ss", name,
                 SHUTDOWN_GRACE_SECONDS)
        # NOT_SERVING first, so health checks (and Envoy) stop choosing this process.
        await health_servicer.enter_graceful_shutdown()
        if on_draining is not None:
            # Before the drain: long-lived streams are told to end (with a last message).
            await on_draining()
        await server.stop(SHUTDOWN_GRACE_SECONDS)
        if on_shutdown is not None:
            await on_shutdown()
        await clients.close_all()
        if redis is not None:
            await redis.aclose()
        if engine is not None:
            await engine.dispose()
        telemetry.shutdown()
        if metrics_server is not None:
            await metrics_server.stop()
        log.info("%s stopped", name)
