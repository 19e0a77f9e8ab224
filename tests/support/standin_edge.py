"""A real Envoy from the real template, in front of stand-in services in this process: for what
the edge does itself (its limits, its own answers), without a whole stack."""

from __future__ import annotations

import asyncio
import ssl
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import grpc
import httpx

from posmesh.common.settings import Settings
from stack import envoy_config
from tests.harness import data_dir, free_ports


@asynccontextmanager
async def standin_edge(register: Callable[[grpc.aio.Server], None],
                       **settings: object) -> AsyncIterator[httpx.AsyncClient]:
    """`register(server)` adds the stand-in servicers; every service address (auth, staff,
    orders, realtime) points at that one server. `settings`: Settings overrides by alias."""
    edge_port, admin_port, service_port = free_ports(3)
    server = grpc.aio.server()
    register(server)
    server.add_insecure_port(f"127.0.0.1:{service_port}")
    await server.start()
    addr = f"127.0.0.1:{service_port}"
    try:
        with data_dir() as folder:
            values = {"POSMESH_DATA_DIR": str(folder), "EDGE_HOST": "127.0.0.1",
                      "EDGE_PORT": edge_port, "ENVOY_ADMIN_PORT": admin_port,
                      "AUTH_ADDR": addr, "STAFF_ADDR": addr, "ORDERS_ADDR": addr,
                      "REALTIME_ADDR": addr,
                      # One plaintext stand-in plays every service: these tests are about what
                      # the edge answers itself (mutual TLS inside: tests/e2e/test_mesh_mtls.py).
                      "MESH_TLS": False, **settings}
            config = envoy_config.render(Settings(**values), folder / "envoy")
            envoy = await asyncio.create_subprocess_exec(
                str(envoy_config.envoy_binary()), "-c", str(config), "--disable-hot-restart",
                "--log-level", "error", stdout=asyncio.subprocess.DEVNULL)
            context = ssl.create_default_context(cafile=str(folder / "certs" / "ca.pem"))
            try:
                async with httpx.AsyncClient(base_url=f"https://localhost:{edge_port}",
                                             verify=context, http2=True, timeout=5) as client:
                    for _ in range(200):
                        try:
                            await client.get("/ping")
                            break
                        except httpx.ConnectError:
                            await asyncio.sleep(0.05)  # Envoy still starting
                    yield client
            finally:
                envoy.terminate()
                await envoy.wait()
    finally:
        await server.stop(0)
