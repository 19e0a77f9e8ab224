"""What the `stack` fixture needs besides stack.supervisor.Stack: settings on free ports in a
temporary data dir, and a fresh database when DATABASE_URL points at an external PostgreSQL."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

from posmesh.common.settings import Settings

LOOPBACK = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so none repeats)."""
    with ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
        return ports


@contextmanager
def data_dir() -> Iterator[Path]:
    """A temporary data dir outside pytest's basetemp: embedded PostgreSQL runs as a user of its
    own that must traverse the path, and every new pytest session (a colleague's, in parallel)
    resets /tmp/pytest-of-<user> to 0700."""
    path = Path(tempfile.mkdtemp(prefix="posmesh-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stack_settings(data_dir: Path, *, database_url: str | None, realtime_replicas: int = 2,
                   replicas: int = 2) -> tuple[Settings, list[str]]:
    """Settings for a test stack and the gRPC addresses of the extra realtime processes.
    `replicas`: processes of each of auth, staff and orders (not the machine's core count, so
    every machine tests the same system; the supervisor picks their ports)."""
    ports = free_ports(6 + 2 * realtime_replicas + 3 + realtime_replicas + 1)
    edge, admin, auth, staff, orders = ports[:5]
    metrics = [f"{LOOPBACK}:{port}" for port in ports[6 + 2 * realtime_replicas:]]
    envoy_metrics = metrics.pop()
    realtime_grpc = [f"{LOOPBACK}:{port}" for port in ports[5:5 + realtime_replicas]]
    realtime_ws = [f"{LOOPBACK}:{port}" for port in ports[5 + realtime_replicas:5 + 2 * realtime_replicas]]
    values = {
        "POSMESH_DATA_DIR": str(data_dir),
        "EDGE_HOST": LOOPBACK,
        "EDGE_PORT": edge,
        "ENVOY_ADMIN_PORT": admin,
        "AUTH_ADDR": f"{LOOPBACK}:{auth}",
        "STAFF_ADDR": f"{LOOPBACK}:{staff}",
        "ORDERS_ADDR": f"{LOOPBACK}:{orders}",
        "REALTIME_ADDR": realtime_grpc[0],
        "REALTIME_WS_ADDR": realtime_ws[0],
        "REALTIME_WS_ADDRS": ",".join(realtime_ws),
        "AUTH_REPLICAS": replicas,
        "STAFF_REPLICAS": replicas,
        "ORDERS_REPLICAS": replicas,
        # Every process's metrics page (auth, staff, orders, then each realtime).
        "AUTH_METRICS_ADDR": metrics[0],
        "STAFF_METRICS_ADDR": metrics[1],
        "ORDERS_METRICS_ADDR": metrics[2],
        "REALTIME_METRICS_ADDR": metrics[3],
        "REALTIME_METRICS_ADDRS": ",".join(metrics[3:]),
        "ENVOY_METRICS_ADDR": envoy_metrics,
        "DATABASE_URL": database_url,
        "REDIS_URL": os.environ.get("REDIS_URL") or None,
        # Traces stay in-process in tests even when the developer's shell exports a collector.
        "OTEL_EXPORTER_OTLP_ENDPOINT": None,
        # The whole suite logs in from 127.0.0.1; the edge's per-address login limit is tested
        # on its own (test_edge.py), so here it must not throttle the other tests.
        "EDGE_LOGIN_RATE_LIMIT_PER_MINUTE": 100_000,
        # Likewise the per-address health and sign-up limits (tested on their own, test_edge.py).
        "EDGE_HEALTH_RATE_LIMIT_PER_MINUTE": 100_000,
        "EDGE_SIGNUP_RATE_LIMIT_PER_MINUTE": 100_000,
        # Every test registers its own people: new passwords must not be paced at production's
        # 2 per second (the pacing itself is tested in tests/unit/test_auth_passwords.py).
        "ENROLLMENT_HASHES_PER_SECOND": 1000,
        # The suite fires bursts (50 concurrent updates, fuzzing) on a shared 2-core machine:
        # admission control must not refuse them. It is tested on its own with its production
        # numbers (tests/unit/test_admission*.py, tests/e2e/test_edge_admission.py) and, for the
        # stack's real limits, by the pool-pressure fault test, which reads these settings.
        "ADMISSION_MAX_IN_FLIGHT": 256,
        "ADMISSION_MAX_QUEUE_MS": 5000,
        "ENROLLMENT_HASH_MAX_PENDING": 64,
        # Realtime: the auth-timeout test waits this long (the app itself waits 10 s).
        "WS_AUTH_TIMEOUT_SECONDS": 2,
        # Auth: short lockouts so the lockout tests see recovery; every test signs in from
        # 127.0.0.1, so the per-IP limit must not lock the whole suite out; a short refresh grace
        # window so the test beyond it waits little; JWKS refetched often so a key rotation's
        # publish lead in the rotation test can be a few seconds.
        "LOGIN_LOCKOUT_BASE_SECONDS": 1,
        "LOGIN_IP_MAX_FAILURES": 1000,
        "REFRESH_GRACE_SECONDS": 2,
        "JWKS_REFRESH_SECONDS": 2,
        "EDGE_JWKS_CACHE_SECONDS": 2,
        # Mail: always the stack's own dev server (tests read its store), links to this edge,
        # and retries quick enough that the outage test waits seconds, not minutes.
        "SMTP_URL": None,
        "PUBLIC_BASE_URL": f"https://localhost:{edge}",
        "MAIL_RETRY_BASE_SECONDS": 0.2,
        "MAIL_RETRY_MAX_SECONDS": 1.0,
        "MAIL_POLL_SECONDS": 1.0,
    }
    return Settings(**values), realtime_grpc[1:]


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_database(base_url: str) -> str:
    """A new empty database beside the one `base_url` names; returns its URL."""
    import asyncpg

    name = f"posmesh_test_{secrets.token_hex(4)}"
    connection = await asyncpg.connect(_asyncpg_dsn(base_url))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return _with_database(base_url, name)


async def drop_database(base_url: str, test_url: str) -> None:
    import asyncpg

    name = urlsplit(test_url).path.lstrip("/")
    connection = await asyncpg.connect(_asyncpg_dsn(base_url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
    from stack.db_roles import drop_roles

    await drop_roles(_asyncpg_dsn(base_url), name)
