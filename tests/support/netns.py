"""Several "machines" on this one: Linux network namespaces (iproute2, as root), each with its own
address on a private bridge, for the multi-node rehearsal (tests/fault/test_multi_node.py).

    async with Lab.create() as lab:           # bridge + namespaces: stores, node-a, node-b
        await lab.start_stores()              # PostgreSQL, Redis, mail on the stores' address
        await lab.migrate()                   # `posmesh migrate`, as the Kubernetes Job does
        await lab.start_node("a"); await lab.start_node("b")   # `posmesh run` in each: Envoy + 4 services
        lab.edge_url("a") ...
        lab.kill_node("b")                    # SIGKILL every process of that namespace

The test process stays in the host namespace and reaches every node over the bridge, as clients
on the restaurant's network would. Each node's services talk to each other on the node's own
loopback and to the stores over the bridge; both nodes share one signing key ring (the
Kubernetes Secret's role) and one certificate naming both nodes' addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import httpx

from posmesh.common.settings import Settings
from stack import certs
from stack.supervisor import _PREEXEC, settings_env

ROOT = Path(__file__).resolve().parents[2]
STORES, NODES = "stores", ("a", "b")
HOST_OCTETS = {"a": 10, "b": 11, STORES: 20}
EDGE_PORT = 8443
# As the test stack (tests/harness.py): every client of the lab comes from the bridge's one
# address, so limits meant for one abusive client must not throttle the rehearsal.
NODE_SETTINGS = {
    "EDGE_LOGIN_RATE_LIMIT_PER_MINUTE": 100_000,
    "EDGE_HEALTH_RATE_LIMIT_PER_MINUTE": 100_000,
    "EDGE_SIGNUP_RATE_LIMIT_PER_MINUTE": 100_000,
    "LOGIN_IP_MAX_FAILURES": 1000,
    "ENROLLMENT_HASHES_PER_SECOND": 1000,
    "ADMISSION_MAX_IN_FLIGHT": 256,
    "ADMISSION_MAX_QUEUE_MS": 5000,
    "JWKS_REFRESH_SECONDS": 2,
    "EDGE_JWKS_CACHE_SECONDS": 2,
    "MAIL_POLL_SECONDS": 1.0,
    # Two nodes x three database services share one PostgreSQL (max_connections 300).
    "DB_POOL_SIZE": 5,
    "DB_MAX_OVERFLOW": 10,
    "OTEL_EXPORTER_OTLP_ENDPOINT": None,
}


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _subnet_in_use(prefix: str) -> bool:
    shown = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    return f" {prefix}." in shown


@dataclass
class Lab:
    tag: str  # short and unique: interface names are at most 15 characters
    prefix: str  # the lab's /24, e.g. "10.213.7"
    folder: Path
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    @classmethod
    @contextlib.asynccontextmanager
    async def create(cls):
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise RuntimeError("the multi-node rehearsal needs root and iproute2 (`ip netns`)")
        while True:
            prefix = f"10.{secrets.randbelow(50) + 200}.{secrets.randbelow(250) + 1}"
            if not _subnet_in_use(prefix):
                break
        folder = Path(tempfile.mkdtemp(prefix="posmesh-netns-"))
        folder.chmod(0o755)  # embedded PostgreSQL runs as a user of its own
        lab = cls(secrets.token_hex(3), prefix, folder)
        try:
            await asyncio.to_thread(lab._build)
            yield lab
        finally:
            await lab._teardown()
            shutil.rmtree(folder, ignore_errors=True)

    # --- addresses -------------------------------------------------------------------------

    def namespace(self, machine: str) -> str:
        return f"pm{self.tag}-{machine}"

    def address(self, machine: str) -> str:
        return f"{self.prefix}.{HOST_OCTETS[machine]}"

    def edge_url(self, node: str) -> str:
        return f"https://{self.address(node)}:{EDGE_PORT}"

    @property
    def ca_file(self) -> Path:
        return self.folder / "certs" / "ca.pem"

    @property
    def mail_dir(self) -> Path:
        return self.folder / STORES / "mail"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def client(self, node: str, **options) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.edge_url(node), verify=self.tls(), http2=True,
                                 timeout=options.pop("timeout", 15), **options)

    # --- the network -----------------------------------------------------------------------

    def _build(self) -> None:
        bridge = f"pm{self.tag}br"
        _ip("link", "add", bridge, "type", "bridge")
        self.links.append(bridge)
        _ip("addr", "add", f"{self.prefix}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for machine in (STORES, *NODES):
            ns = self.namespace(machine)
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            outside, inside = f"pm{self.tag}{machine[0]}h", f"pm{self.tag}{machine[0]}n"
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            self.links.append(outside)
            _ip("link", "set", inside, "netns", ns)
            _ip("link", "set", outside, "master", bridge)
            _ip("link", "set", outside, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(machine)}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        # One certificate for both nodes' edges (clients check it against the address they dial).
        names = (*certs.IPS, *(self.address(node) for node in NODES))
        with mock.patch.object(certs, "IPS", names):
            certs.ensure_dev_certs(self.folder / "certs")
        # One signing key ring for both nodes' auth services.
        from services.auth import keys

        keys.ensure_keys(Settings(JWT_KEYS_DIR=str(self.folder / "keys")))

    def pids(self, machine: str) -> list[int]:
        listed = subprocess.run(["ip", "netns", "pids", self.namespace(machine)],
                                capture_output=True, text=True).stdout.split()
        return [int(pid) for pid in listed]

    def kill_machine(self, machine: str) -> int:
        """SIGKILL every process of the namespace at once (no drain, no goodbye); returns how
        many there were. Repeated until none is left (a child forked meanwhile)."""
        killed: set[int] = set()
        for _ in range(20):
            pids = self.pids(machine)
            if not pids:
                return len(killed)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(0.05)
        raise RuntimeError(f"processes of {machine} survive SIGKILL: {self.pids(machine)}")

    async def _teardown(self) -> None:
        for machine in (*NODES, STORES):
            if self.namespace(machine) not in self.namespaces:
                continue
            process = self.processes.get(machine)
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(process.wait(), 20)
            await asyncio.to_thread(self.kill_machine, machine)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)

    # --- the machines ----------------------------------------------------------------------

    def _env(self, values: dict[str, object]) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in settings_env(Settings(**values)).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def _spawn(self, machine: str, argv: list[str], env: dict[str, str] | None = None,
                     log_name: str | None = None) -> asyncio.subprocess.Process:
        log = open(self.folder / f"{log_name or machine}.log", "ab")
        try:
            return await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", self.namespace(machine), *argv, cwd=ROOT,
                env=env or dict(os.environ), stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                # SIGTERM when the test process dies without its teardown (the nodes' own
                # supervisors then stop their children).
                preexec_fn=_PREEXEC)
        finally:
            log.close()

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    async def start_stores(self, timeout: float = 60) -> None:
        self.processes[STORES] = await self._spawn(STORES, [
            sys.executable, "-m", "tests.support.netns_stores",
            "--dir", str(self.folder / STORES), "--host", self.address(STORES)])
        await self._until(lambda: "ready" in self.log(STORES).splitlines(), timeout, STORES)

    def node_settings(self, node: str) -> dict[str, object]:
        stores = self.address(STORES)
        return {
            **NODE_SETTINGS,
            "POSMESH_DATA_DIR": str(self.folder / node),
            "JWT_KEYS_DIR": str(self.folder / "keys"),
            "EDGE_HOST": self.address(node),
            "EDGE_PORT": EDGE_PORT,
            "DATABASE_URL": f"postgresql://postgres@{stores}:5432/postgres",
            "REDIS_URL": f"redis://{stores}:6379/0",
            "SMTP_URL": f"smtp://{stores}:1025",
            "PUBLIC_BASE_URL": self.edge_url(node),
        }

    @property
    def secrets_dir(self) -> Path:
        return self.folder / "secrets"

    async def migrate(self) -> str:
        """`posmesh migrate` from node a's namespace (the Kubernetes migrations Job's command):
        the database roles, with passwords made into the lab's secrets folder, which every node
        then holds a copy of (the Secrets' role), and every migration."""
        process = await self._spawn(
            NODES[0], [sys.executable, "-m", "stack.cli", "migrate", "--secrets-dir",
                       str(self.secrets_dir)],
            self._env(self.node_settings(NODES[0])), "migrate")
        code = await asyncio.wait_for(process.wait(), 120)
        assert code == 0, self.log("migrate")
        return self.log("migrate")

    async def start_node(self, node: str, timeout: float = 120) -> None:
        data = self.folder / node
        shutil.copytree(self.folder / "certs", data / "certs", dirs_exist_ok=True)
        # The same role passwords as every other node (a node would otherwise set its own).
        shutil.copytree(self.secrets_dir, data / "secrets", dirs_exist_ok=True)
        self.processes[node] = await self._spawn(
            node, [sys.executable, "-m", "stack.cli", "run"], self._env(self.node_settings(node)))
        await self._until(lambda: "posmesh is up" in self.log(node), timeout, node)

    async def probe(self, node: str, service: str) -> tuple[int, str]:
        """`posmesh probe <service>` inside the node, with the node's settings and mesh
        certificates (what a Kubernetes exec probe runs in the service's pod)."""
        settings = self.node_settings(node)
        process = await self._spawn(node, [sys.executable, "-m", "stack.cli", "probe", service],
                                    self._env(settings), f"probe-{node}-{service}")
        code = await asyncio.wait_for(process.wait(), 60)
        return code, self.log(f"probe-{node}-{service}")

    async def _until(self, check, timeout: float, machine: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            process = self.processes[machine]
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{machine} did not start:\n{self.log(machine)}")
            await asyncio.sleep(0.2)

    def kill_node(self, node: str) -> int:
        return self.kill_machine(node)

