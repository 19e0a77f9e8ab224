"""The system under test: a local stack started through stack.supervisor.Stack (the class the
tests and `posmesh run` use) on free ports in a temporary data dir, or a running one (`--url`).

The bench stack differs from `make run` only in limits that exist to stop one abusive client,
because every simulated user of the bench comes from 127.0.0.1 (BENCH_OVERRIDES below, printed in
the report). It runs ONE realtime process so that "connections held by one process" means that.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from posmesh.common.settings import Settings
from stack.supervisor import Stack
from tests.harness import LOOPBACK, free_ports

BENCH_OVERRIDES: dict[str, object] = {
    # The seeded world's access tokens serve every phase of a run that lasts longer than the
    # default 15 minutes; refresh is measured in a phase of its own.
    "ACCESS_TOKEN_TTL_SECONDS": 3600,
    # The edge's per-address login bucket (600/min by default) would cap the login workload at
    # 10/s from the bench's one address.
    "EDGE_LOGIN_RATE_LIMIT_PER_MINUTE": 1_000_000,
    # The same for registrations (the bench registers its accounts from one address).
    "EDGE_SIGNUP_RATE_LIMIT_PER_MINUTE": 1_000_000,
    # Auth's brute-force budget per client address counts attempts in flight too: every
    # simulated sign-in comes from 127.0.0.1. (The per-account budget is left as it is; the login
    # workload spreads over every account of the 20 restaurants.)
    "LOGIN_IP_MAX_FAILURES": 100_000,
    # Realtime's per-address connection window, and per-user / per-restaurant socket caps: the
    # bench opens 10,000 sockets from 127.0.0.1 with a few accounts into one restaurant.
    "WS_MAX_CONNECTIONS_PER_IP_PER_MINUTE": 100_000,
    "WS_MAX_CONNECTIONS_PER_USER": 20_000,
    "WS_MAX_CONNECTIONS_PER_RESTAURANT": 20_000,
    # The socket holders stand in for thousands of screens but sign in a few accounts once each:
    # every socket of one of those sessions must stay live (in production a screen is a session).
    "WS_MAX_SOCKETS_PER_SESSION": 20_000,
}


@dataclass
class System:
    edge_url: str
    ca_file: str
    settings: Settings
    mail_dir: Path  # the dev mail server's store: the seed reads verification links from it
    stack: Stack | None = None
    data_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def edge_host_port(self) -> tuple[str, int]:
        host_port = self.edge_url.split("://", 1)[1].rstrip("/")
        host, _, port = host_port.rpartition(":")
        return host, int(port)

    def pid_of(self, name: str) -> int | None:
        """PID of 'realtime', 'envoy', 'orders', ... (a running stack: found by its port)."""
        if self.stack is not None:
            pids = self.stack.pids().get(name)
            return pids[0] if pids else None
        port = {"realtime": self.settings.realtime_ws_addr, "orders": self.settings.orders_addr,
                "auth": self.settings.auth_addr}.get(name)
        if name == "envoy":
            port = f"0:{self.edge_host_port[1]}"
        if port is None:
            return None
        wanted = int(port.rpartition(":")[2])
        for connection in psutil.net_connections("tcp"):
            if connection.status == psutil.CONN_LISTEN and connection.laddr.port == wanted:
                return connection.pid
        return None

    async def stop(self) -> None:
        if self.stack is not None:
            await self.stack.stop()
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def bench_settings(data_dir: Path, replicas: int | None = None) -> Settings:
    """`replicas`: processes each of auth, staff and orders (None: the default, one per core)."""
    edge, admin, auth, staff, orders, realtime, realtime_ws = free_ports(7)
    # Metrics pages on free ports too: a `posmesh run` on this machine holds the defaults.
    metrics = [f"{LOOPBACK}:{port}" for port in free_ports(5)]
    values: dict[str, object] = {
        "POSMESH_DATA_DIR": str(data_dir),
        "EDGE_HOST": LOOPBACK,
        "EDGE_PORT": edge,
        "ENVOY_ADMIN_PORT": admin,
        "AUTH_ADDR": f"{LOOPBACK}:{auth}",
        "STAFF_ADDR": f"{LOOPBACK}:{staff}",
        "ORDERS_ADDR": f"{LOOPBACK}:{orders}",
        "REALTIME_ADDR": f"{LOOPBACK}:{realtime}",
        "REALTIME_WS_ADDR": f"{LOOPBACK}:{realtime_ws}",
        "REALTIME_WS_ADDRS": f"{LOOPBACK}:{realtime_ws}",
        "DATABASE_URL": os.environ.get("DATABASE_URL") or None,
        "REDIS_URL": os.environ.get("REDIS_URL") or None,
        "OTEL_EXPORTER_OTLP_ENDPOINT": None,
        "AUTH_METRICS_ADDR": metrics[0], "STAFF_METRICS_ADDR": metrics[1],
        "ORDERS_METRICS_ADDR": metrics[2], "REALTIME_METRICS_ADDR": metrics[3],
        "ENVOY_METRICS_ADDR": metrics[4],
        **BENCH_OVERRIDES,
    }
    if replicas is not None:
        values.update(AUTH_REPLICAS=replicas, STAFF_REPLICAS=replicas, ORDERS_REPLICAS=replicas)
    return Settings(**values)


async def start_local(replicas: int | None = None) -> System:
    # Outside pytest's and the repo's trees: embedded PostgreSQL runs as a user of its own that
    # must traverse the path.
    data_dir = Path(tempfile.mkdtemp(prefix="posmesh-bench-"))
    settings = bench_settings(data_dir, replicas)
    stack = Stack(settings)
    try:
        await stack.start()
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    return System(stack.edge_url, str(stack.ca_file), stack.settings, stack.mail_dir, stack,
                  data_dir)


def running(url: str, ca_file: str | None, mail_dir: str | None) -> System:
    settings = Settings()
    ca = ca_file or str(settings.certs_dir / "ca.pem")
    # `make run`'s dev mail server keeps its mail in <data dir>/mail (stack.supervisor).
    system = System(url.rstrip("/"), ca, settings, Path(mail_dir or settings.data_dir / "mail"))
    system.notes.append(
        f"Ran against a running stack at {url}; its limits are its own (start it with "
        + " ".join(f"{k}={v}" for k, v in BENCH_OVERRIDES.items()) + " for the same figures).")
    return system
