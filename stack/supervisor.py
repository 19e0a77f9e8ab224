"""The whole system on one machine: stores, the dev mail server, services and Envoy as supervised
child processes.

`posmesh run` and the test suite's `stack` fixture both use `Stack`, so tests exercise exactly
what a developer runs. A child that exits unexpectedly is recorded as the stack's failure
(`wait_failed()`), with the last lines of its log.
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
from pathlib import Path
from typing import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from posmesh.common.settings import Settings
from stack import codegen, envoy_config
from stack.certs import DevCerts, ensure_dev_certs
from stack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, port_open

log = logging.getLogger("posmesh.stack")

SERVICES = ("auth", "staff", "orders", "realtime")
MAIL_SERVER = "mail"  # the dev mail server's child name
STOP_TIMEOUT_SECONDS = 10.0
TAIL_LINES = 40


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
        self.envoy_config: Path | None = None
        self.children: dict[str, Child] = {}
        self._metrics_addrs: dict[str, str] = {}  # service process -> its metrics address
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
        """gRPC address of a service process ('realtime-2' for the second realtime)."""
        if name.startswith("realtime-"):
            return self.extra_realtime_addrs[int(name.split("-")[1]) - 2]
        return self.settings.service_addr(name)

    @property
    def mail_dir(self) -> Path:
        """Where the dev mail server stores every mail (a Maildir; `posmesh mail` reads it)."""
        return self.data_dir / "mail"

    @property
    def service_names(self) -> list[str]:
        return [*SERVICES, *(f"realtime-{n}" for n in range(2, self.realtime_replicas + 1))]

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
        self.started_in = time.monotonic() - started

    def _prepare(self) -> None:
        """Blocking steps before any child starts: stores, certificates, code, Envoy config."""
        updates: dict[str, object] = {"data_dir": self.data_dir}
        if not self.settings.database_url:
            self.postgres = EmbeddedPostgres(self.data_dir / "pgdata")
            updates["database_url"] = self.postgres.start()
        if not self.settings.redis_url:
            self.redis = EmbeddedRedis(self.data_dir / "redis" / "redis.db")
            updates["redis_url"] = self.redis.start()
        if not self.settings.smtp_url:
            self.mail_port = free_port()
            updates["smtp_url"] = f"smtp://127.0.0.1:{self.mail_port}"
        self.settings = self.settings.model_copy(update=updates)
        self.certs = ensure_dev_certs(self.settings.certs_dir)
        codegen.ensure_generated()
        if self.realtime_replicas > 1 and len(self.settings.realtime_ws_addrs) < self.realtime_replicas:
            raise ValueError("REALTIME_WS_ADDRS must list one WebSocket address per realtime process")
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
        await self._terminate(self.children[name])

    async def start_service(self, name: str, timeout: float = 60.0) -> None:
        child = self.children[name]
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
        return self.children[name].log_file.read_text(errors="replace")

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
        env.update(overrides or {})
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _service_child(self, name: str) -> Child:
        service, overrides = name, {}
        if name.startswith("realtime-"):
            service = "realtime"
            index = int(name.split("-")[1]) - 1
            overrides = {"REALTIME_ADDR": self.addr(name),
                         "REALTIME_WS_ADDR": self.settings.realtime_ws_addrs[index]}
        overrides.update(self._metrics_override(name))
        return Child(name, [sys.executable, "-m", "stack.cli", "serve", service],
                     self._child_env(overrides), self.data_dir / "logs" / f"{name}.log", self.echo)

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
        log.error("%s", died)
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(died)

    async def _terminate(self, child: Child) -> None:
        child.stopping = True
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
            async with grpc.aio.insecure_channel(self.addr(name)) as channel:
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
