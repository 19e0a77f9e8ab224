"""The whole system on one machine: stores, the dev mail server, services and Envoy as supervised
child processes.

`posmesh run` and the test suite's `stack` fixture both use `Stack`, so tests exercise exactly
what a developer runs. A child that exits unexpectedly is recorded as the stack's failure
(`wait_failed()`), with the last lines of its log. A service process that crashes is started
again instead (its replicas, if any, serve meanwhile); only a crash loop fails the stack.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from posmesh.common import clients, mesh_tls
from posmesh.common.settings import REPLICATED_SERVICES, Settings
from stack import codegen, db_roles, envoy_config, redis_acl
from stack.certs import DevCerts, ensure_dev_certs
from stack.mesh_certs import ensure_mesh_certs
from stack.embedded import (DEFAULT_MAX_CONNECTIONS, EmbeddedPostgres, EmbeddedRedis, free_port,
                            port_open)

log = logging.getLogger("posmesh.stack")

SERVICES = ("auth", "staff", "orders", "realtime")
MAIL_SERVER = "mail"  # the dev mail server's child name
STOP_TIMEOUT_SECONDS = 10.0
TAIL_LINES = 40
# A crashed service process is started again after a backoff (RESTART_FIRST_DELAY_SECONDS,
# doubling); one that crashes CRASH_LOOP_LIMIT times within CRASH_LOOP_WINDOW_SECONDS fails the
# stack instead.
RESTART_FIRST_DELAY_SECONDS = 0.2
RESTART_MAX_DELAY_SECONDS = 5.0
CRASH_LOOP_LIMIT = 5
CRASH_LOOP_WINDOW_SECONDS = 60.0


def _die_with_supervisor() -> Callable[[], None] | None:
    """preexec_fn for children: on Linux they get SIGTERM when the supervisor dies without
    stopping them (SIGKILL, a crash), instead of living on as orphans holding the ports."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


_PREEXEC = _die_with_supervisor()


def settings_env(settings: Settings) -> dict[str, str | None]:
    """Every setting as the environment variable that sets it (None: unset it)."""
    env: dict[str, str | None] = {}
    for name, info in Settings.model_fields.items():
        key = info.alias or name.upper()
        value = getattr(settings, name)
        if value is None:
            env[key] = None
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        elif isinstance(value, list):
            env[key] = ",".join(str(item) for item in value)
        elif isinstance(value, Path):
            env[key] = str(value.resolve())
        else:
            env[key] = str(value)
    return env


def replica_addrs(settings: Settings) -> dict[str, list[str]]:
    """AUTH_ADDRS, STAFF_ADDRS, ORDERS_ADDRS as settings updates: the first replica at *_ADDR,
    the others on free ports of its host (loopback when *_ADDR names a host); a list set by hand
    is kept, and must have one address per replica."""
    updates: dict[str, list[str]] = {}
    for service in REPLICATED_SERVICES:
        count, given = settings.replicas(service), getattr(settings, f"{service}_addrs")
        if given:
            if len(given) != count:
                raise ValueError(f"{service.upper()}_ADDRS lists {len(given)} addresses for "
                                 f"{service.upper()}_REPLICAS={count}")
            continue
        first = settings.service_addr(service)
        host = first.rpartition(":")[0].strip("[]")
        try:
            ip_address(host)
        except ValueError:
            host = "127.0.0.1"
        updates[f"{service}_addrs"] = [first, *(_join(host, free_port(host)) for _ in range(count - 1))]
    return updates


def postgres_connections(settings: Settings) -> int:
    """max_connections for the embedded PostgreSQL: every database process's pool at full size
    (auth, staff and orders, each replica) plus headroom for migrations, psql and health."""
    processes = sum(settings.replicas(service) for service in REPLICATED_SERVICES)
    return max(DEFAULT_MAX_CONNECTIONS,
               processes * (settings.db_pool_size + settings.db_max_overflow) + 60)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_file: Path
    echo: bool = False
    process: asyncio.subprocess.Process | None = None
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    stopping: bool = False
    restartable: bool = False  # a service process: started again when it crashes
    crashed_at: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=CRASH_LOOP_LIMIT))
    _restart: asyncio.Task | None = None
    _pump: asyncio.Task | None = None
    _waiter: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def last_lines(self) -> str:
        return "\n".join(self.tail)


class ChildDied(RuntimeError):
    def __init__(self, child: Child, returncode: int | None) -> None:
        self.child = child
        self.returncode = returncode
        super().__init__(
            f"{child.name} exited with code {returncode}; its last log lines "
            f"({child.log_file}):\n{child.last_lines()}"
        )


class Stack:
    def __init__(self, settings: Settings, *, extra_realtime_addrs: Sequence[str] = (),
                 echo: bool = False) -> None:
        """`settings` as every process will see them. Each address in `extra_realtime_addrs`
        starts one more realtime process (gRPC there, WebSocket at the next address of
        REALTIME_WS_ADDRS). `echo` copies every child's log lines to stdout."""
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.echo = echo
        self.extra_realtime_addrs = list(extra_realtime_addrs)
        self.realtime_replicas = 1 + len(self.extra_realtime_addrs)
        self.postgres: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self.mail_port: int | None = None  # the dev mail server's, when SMTP_URL is unset
        self.certs: DevCerts | None = None
        self.db_roles: db_roles.DatabaseRoles | None = None
        self.redis_urls: dict[str, str] = {}  # service -> its ACL user's URL
        self._redis_users: str | None = None  # the prefix of users added to an outside Redis
        self.envoy_config: Path | None = None
        self.children: dict[str, Child] = {}
        self._metrics_addrs: dict[str, str] = {}  # service process -> its metrics address
        # Service processes that crashed and were started again (the test suite fails a test
        # during which one crashed unless the test caused it).
        self.crashes: list[ChildDied] = []
        self.started_in: float | None = None
        self._failed: asyncio.Future[ChildDied] | None = None
        self._stopping = False

    # --- addresses -------------------------------------------------------------------------

    @property
    def edge_url(self) -> str:
        return f"https://localhost:{self.settings.edge_port}"

    @property
    def ca_file(self) -> Path:
        assert self.certs is not None, "stack not started"
        return self.certs.ca_file

    def addr(self, name: str) -> str:
        """gRPC address of a service process ('realtime-2' for the second realtime, 'orders-2'
        for the second orders replica)."""
        service, _, number = name.partition("-")
        if service == "realtime" and number:
            return self.extra_realtime_addrs[int(number) - 2]
        return self.settings.service_addrs(service)[int(number or 1) - 1]

    def replicas(self, service: str) -> list[str]:
        """The process names of `service`: 'orders', 'orders-2', ..."""
        count = self.realtime_replicas if service == "realtime" else self.settings.replicas(service)
        return [service, *(f"{service}-{n}" for n in range(2, count + 1))]

    async def stop_every(self, service: str) -> None:
        """Every process of `service` (the service is down)."""
        await asyncio.gather(*(self.stop_service(name) for name in self.replicas(service)))

    async def start_every(self, service: str) -> None:
        await asyncio.gather(*(self.start_service(name) for name in self.replicas(service)))

    def mesh_files(self, identity: str) -> mesh_tls.MeshFiles:
        """The key and certificate `identity` ('edge', 'staff', ...) holds in the mesh."""
        return mesh_tls.files_for(self.settings, identity)

    def channel(self, name: str, *, as_identity: str = mesh_tls.EDGE) -> grpc.aio.Channel:
        """A channel to a service process ('realtime-2' too) holding `as_identity`'s certificate
        (plaintext when MESH_TLS=false). The caller closes it."""
        service = name.split("-")[0]
        if not self.settings.mesh_tls:
            return grpc.aio.insecure_channel(self.addr(name), options=clients.CHANNEL_OPTIONS)
        credentials = mesh_tls.channel_credentials(self.mesh_files(as_identity).read())
        options = [*clients.CHANNEL_OPTIONS,
                   ("grpc.ssl_target_name_override", mesh_tls.server_name(service))]
        return grpc.aio.secure_channel(self.addr(name), credentials, options=options)

    @property
    def secrets_dir(self) -> Path:
        """Passwords made on first run (0600): the database roles', Redis users'."""
        return self.data_dir / "secrets"

    @property
    def mail_dir(self) -> Path:
        """Where the dev mail server stores every mail (a Maildir; `posmesh mail` reads it)."""
        return self.data_dir / "mail"

    @property
    def service_names(self) -> list[str]:
        return [name for service in SERVICES for name in self.replicas(service)]

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, timeout: float = 120.0) -> None:
        started = time.monotonic()
        self._failed = asyncio.get_running_loop().create_future()
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            await asyncio.to_thread(self._prepare)
            if self.mail_port is not None:
                await self._spawn(self._mail_child())
            for name in self.service_names:
                await self._spawn(self._service_child(name))
            await self._spawn(self._envoy_child())
            await self._wait_ready(deadline=started + timeout)
        except BaseException:
            await self.stop()
            raise
        self.started_in = time.monotonic() - started  # from now on a crashed service restarts

    def _prepare(self) -> None:
        """Blocking steps before any child starts: stores, certificates, code, Envoy config."""
        updates: dict[str, object] = {"data_dir": self.data_dir}
        if not self.settings.database_url:
            self.postgres = EmbeddedPostgres(self.data_dir / "pgdata",
                                             max_connections=postgres_connections(self.settings))
            updates["database_url"] = self.postgres.start()
        embedded_redis = not self.settings.redis_url
        redis_users = redis_acl.user_prefix(self.data_dir, embedded=embedded_redis)
        if embedded_redis:
            self.redis = EmbeddedRedis(self.data_dir / "redis" / "redis.db",
                                       acl=redis_acl.config_lines(redis_users, self.secrets_dir))
            updates["redis_url"] = redis_acl.admin_url(self.redis.start(), self.secrets_dir)
        if not self.settings.smtp_url:
            self.mail_port = free_port()
            updates["smtp_url"] = f"smtp://127.0.0.1:{self.mail_port}"
        self.settings = self.settings.model_copy(update=updates)
        # Least privilege: each service connects as its own role; the owner role migrates first.
        self.db_roles = db_roles.bootstrap(self.settings.database_url, self.secrets_dir)
        db_roles.migrate(self.db_roles.owner_url)
        if not embedded_redis:
            redis_acl.add_users(self.settings.redis_url, redis_users, self.secrets_dir)
            self._redis_users = redis_users
        self.redis_urls = redis_acl.service_urls(self.settings.redis_url, redis_users,
                                                 self.secrets_dir)
        self.certs = ensure_dev_certs(self.settings.certs_dir)
        if self.settings.mesh_tls:
            ensure_mesh_certs(mesh_tls.mesh_dir(self.settings))
        codegen.ensure_generated()
        if self.realtime_replicas > 1 and len(self.settings.realtime_ws_addrs) < self.realtime_replicas:
            raise ValueError("REALTIME_WS_ADDRS must list one WebSocket address per realtime process")
        self.settings = self.settings.model_copy(update=replica_addrs(self.settings))
        self.envoy_config = envoy_config.render(self.settings, self.data_dir / "envoy")
        envoy_config.validate(self.envoy_config)

    async def stop(self) -> None:
        """Envoy first (no new traffic), then the services, then the mail server (a sender
        finishing its last mail still reaches it), Redis and PostgreSQL."""
        self._stopping = True
        envoy = self.children.get("envoy")
        if envoy is not None:
            await self._terminate(envoy)
        await asyncio.gather(*(self._terminate(child) for child in self.children.values()
                               if child.name != MAIL_SERVER))
        if MAIL_SERVER in self.children:
            await self._terminate(self.children[MAIL_SERVER])
        if self.redis is not None:
            await asyncio.to_thread(self.redis.stop)
        if self._redis_users is not None:
            await asyncio.to_thread(redis_acl.remove_users, self.settings.redis_url, self._redis_users)
            self._redis_users = None
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)

    @property
    def failure(self) -> ChildDied | None:
        """The first unexpected child exit, if any."""
        if self._failed is None or not self._failed.done():
            return None
        return self._failed.result()

    async def wait_failed(self) -> ChildDied:
        """Returns when a child exits without being asked to."""
        assert self._failed is not None, "stack not started"
        return await asyncio.shield(self._failed)

    # --- fault controls (tests) --------------------------------------------------------------

    async def stop_service(self, name: str) -> None:
        """One process ('orders' is the first orders replica; `stop_every` stops them all)."""
        await self._terminate(self.children[name])

    async def crash_service(self, name: str) -> None:
        """SIGKILL one service process as a crash would end it: the supervisor starts it again
        (and records it in `crashes`)."""
        process = self.children[name].process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()

    async def wait_ready(self, name: str, timeout: float = 60.0) -> None:
        child = self.children[name]
        deadline = time.monotonic() + timeout
        while not (child.running and await self._service_ready(name)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not become ready:\n{child.last_lines()}")
            await asyncio.sleep(0.1)

    async def start_service(self, name: str, timeout: float = 60.0) -> None:
        child = self.children[name]
        if child._restart is not None:
            child._restart.cancel()
        if child.running:
            return
        await self._spawn(child)
        deadline = time.monotonic() + timeout
        while not await self._service_ready(name):
            self._raise_if_dead(child)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not become ready:\n{child.last_lines()}")
            await asyncio.sleep(0.1)

    async def stop_mail_server(self) -> None:
        self._require(self.mail_port, "SMTP_URL points at an external mail server")
        await self._terminate(self.children[MAIL_SERVER])

    async def start_mail_server(self, timeout: float = 30.0) -> None:
        """Again on the same port, with the same store."""
        self._require(self.mail_port, "SMTP_URL points at an external mail server")
        child = self.children[MAIL_SERVER]
        if child.running:
            return
        await self._spawn(child)
        deadline = time.monotonic() + timeout
        while not await self._mail_server_ready():
            self._raise_if_dead(child)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the mail server did not come back:\n{child.last_lines()}")
            await asyncio.sleep(0.05)

    async def stop_redis(self) -> None:
        self._require(self.redis, "REDIS_URL points at an external Redis").stop()

    async def start_redis(self) -> None:
        await asyncio.to_thread(self._require(self.redis, "REDIS_URL points at an external Redis").start)

    async def restart_postgres(self) -> None:
        postgres = self._require(self.postgres, "DATABASE_URL points at an external PostgreSQL")
        await asyncio.to_thread(postgres.restart)

    def service_log(self, name: str) -> str:
        """One process's log so far ('orders' is the first orders replica)."""
        return self.children[name].log_file.read_text(errors="replace")

    def log_offsets(self, service: str) -> dict[str, int]:
        """Where each process of `service` has got to in its log (for `logs_since`)."""
        return {name: len(self.service_log(name)) for name in self.replicas(service)}

    def logs_since(self, offsets: dict[str, int]) -> str:
        """What those processes logged since `offsets`, one after another; dict.fromkeys(
        stack.replicas(service), 0) for everything every replica logged."""
        return "".join(self.service_log(name)[offset:] for name, offset in offsets.items())

    def pids(self) -> dict[str, list[int]]:
        pids = {name: [child.process.pid] for name, child in self.children.items()
                if child.running and child.process is not None}
        if self.redis is not None:
            pids["redis"] = self.redis.pids()
        if self.postgres is not None:
            pids["postgres"] = self.postgres.pids()
        return pids

    # --- internals ---------------------------------------------------------------------------

    @staticmethod
    def _require(store, reason: str):
        if store is None:
            raise RuntimeError(f"not controllable: {reason}")
        return store

    def _child_env(self, overrides: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in settings_env(self.settings).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        # The superuser URL stays with the supervisor: a service gets its own role's.
        env.pop("DATABASE_URL", None)
        env.pop("REDIS_URL", None)
        env.update(overrides or {})
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _service_child(self, name: str) -> Child:
        service, _, number = name.partition("-")
        overrides: dict[str, str] = {}
        if service == "realtime" and number:
            index = int(name.split("-")[1]) - 1
            overrides = {"REALTIME_ADDR": self.addr(name),
                         "REALTIME_WS_ADDR": self.settings.realtime_ws_addrs[index]}
        elif service in REPLICATED_SERVICES and number:
            overrides = {f"{service.upper()}_ADDR": self.addr(name)}
        if self.db_roles is not None and service in self.db_roles.service_urls:
            overrides["DATABASE_URL"] = self.db_roles.service_urls[service]
        if service in self.redis_urls:
            overrides["REDIS_URL"] = self.redis_urls[service]
        overrides.update(self._metrics_override(name))
        return Child(name, [sys.executable, "-m", "stack.cli", "serve", service],
                     self._child_env(overrides), self.data_dir / "logs" / f"{name}.log", self.echo,
                     restartable=True)

    def metrics_addr(self, name: str) -> str:
        """The metrics address of one service process ('' when off): the setting for the first
        process of a service; for the others ('realtime-2', 'orders-2', ...) the N-th of
        REALTIME_METRICS_ADDRS, else a free loopback port, kept across restarts."""
        if name not in self._metrics_addrs:
            service, _, number = name.partition("-")
            addr = self.settings.metrics_addr(service)
            if number and addr:
                listed = self.settings.realtime_metrics_addrs if service == "realtime" else []
                index = int(number) - 1
                addr = listed[index] if index < len(listed) else f"127.0.0.1:{free_port()}"
            self._metrics_addrs[name] = addr
        return self._metrics_addrs[name]

    def metrics_targets(self) -> dict[str, list[str]]:
        """Every process's metrics address by job (service, and `envoy`): Prometheus' targets."""
        targets: dict[str, list[str]] = {}
        for name in self.service_names:
            if addr := self.metrics_addr(name):
                targets.setdefault(name.partition("-")[0], []).append(addr)
        if self.settings.envoy_metrics_addr:
            targets["envoy"] = [self.settings.envoy_metrics_addr]
        return targets

    def _metrics_override(self, name: str) -> dict[str, str]:
        service, _, number = name.partition("-")
        return {f"{service.upper()}_METRICS_ADDR": self.metrics_addr(name)} if number else {}

    def _mail_child(self) -> Child:
        argv = [sys.executable, "-m", "stack.cli", "mail-server",
                "--listen", f"127.0.0.1:{self.mail_port}", "--maildir", str(self.mail_dir)]
        return Child(MAIL_SERVER, argv, self._child_env(), self.data_dir / "logs" / "mail.log",
                     self.echo)

    def _envoy_child(self) -> Child:
        assert self.envoy_config is not None
        argv = [str(envoy_config.envoy_binary()), "-c", str(self.envoy_config),
                "--log-level", "warn", "--disable-hot-restart", "--drain-time-s", "2",
                "--parent-shutdown-time-s", "3"]
        return Child("envoy", argv, self._child_env(), self.data_dir / "logs" / "envoy.log", self.echo)

    async def _spawn(self, child: Child) -> None:
        child.stopping = False
        child.tail.clear()
        child.process = await asyncio.create_subprocess_exec(
            *child.argv, env=child.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            # Own process group: a Ctrl-C in the terminal reaches the supervisor only, which
            # then stops the children in order.
            start_new_session=True,
            preexec_fn=_PREEXEC,
        )
        self.children[child.name] = child
        child._pump = asyncio.create_task(self._pump(child))
        child._waiter = asyncio.create_task(self._watch(child))

    async def _pump(self, child: Child) -> None:
        assert child.process is not None and child.process.stdout is not None
        with child.log_file.open("ab") as sink:
            async for raw in child.process.stdout:
                sink.write(raw)
                sink.flush()
                line = raw.decode(errors="replace").rstrip()
                child.tail.append(line)
                if child.echo:
                    print(f"{child.name:>10} | {line}", flush=True)

    async def _watch(self, child: Child) -> None:
        assert child.process is not None
        returncode = await child.process.wait()
        if child._pump is not None:
            await child._pump
        if child.stopping or self._stopping:
            return
        died = ChildDied(child, returncode)
        now = time.monotonic()
        child.crashed_at.append(now)
        recent = sum(1 for moment in child.crashed_at if now - moment < CRASH_LOOP_WINDOW_SECONDS)
        # One that cannot start at all (a bad setting) fails the start instead.
        if child.restartable and self.started_in is not None and recent < CRASH_LOOP_LIMIT:
            delay = min(RESTART_FIRST_DELAY_SECONDS * 2 ** (recent - 1), RESTART_MAX_DELAY_SECONDS)
            log.error("%s\nstarting it again in %.1fs", died, delay)
            self.crashes.append(died)
            child._restart = asyncio.create_task(self._restart_after(child, delay))
            return
        log.error("%s", died)
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(died)

    async def _restart_after(self, child: Child, delay: float) -> None:
        await asyncio.sleep(delay)
        if child.stopping or self._stopping or child.running:
            return
        child._restart = None
        await self._spawn(child)

    async def _terminate(self, child: Child) -> None:
        child.stopping = True
        if child._restart is not None:
            child._restart.cancel()
        process = child.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            log.warning("%s did not stop within %ss; killing it", child.name, STOP_TIMEOUT_SECONDS)
            process.kill()
            await process.wait()
        if child._pump is not None:
            await child._pump

    def _raise_if_dead(self, child: Child) -> None:
        if child.process is not None and child.process.returncode is not None:
            raise ChildDied(child, child.process.returncode)

    async def _service_ready(self, name: str) -> bool:
        try:
            async with self.channel(name) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return False
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return False
        if name.startswith("realtime"):
            ws = (self.settings.realtime_ws_addr if name == "realtime"
                  else self.settings.realtime_ws_addrs[int(name.split("-")[1]) - 1])
            host, _, port = ws.rpartition(":")
            return await asyncio.to_thread(port_open, host, int(port))
        return True

    async def _mail_server_ready(self) -> bool:
        return await asyncio.to_thread(port_open, "127.0.0.1", self.mail_port)

    async def _envoy_ready(self) -> bool:
        def ready() -> bool:
            import urllib.request

            url = f"http://127.0.0.1:{self.settings.envoy_admin_port}/ready"
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        return await asyncio.to_thread(ready)

    async def _wait_ready(self, deadline: float) -> None:
        pending = set(self.service_names) | {"envoy"} | ({MAIL_SERVER} & set(self.children))
        while pending:
            for name in list(pending):
                child = self.children[name]
                self._raise_if_dead(child)
                if name == "envoy":
                    ok = await self._envoy_ready()
                elif name == MAIL_SERVER:
                    ok = await self._mail_server_ready()
                else:
                    ok = await self._service_ready(name)
                if ok:
                    pending.discard(name)
            if pending:
                if time.monotonic() > deadline:
                    details = "\n".join(f"--- {n}:\n{self.children[n].last_lines()}" for n in pending)
                    raise TimeoutError(f"not ready in time: {', '.join(sorted(pending))}\n{details}")
                await asyncio.sleep(0.1)
