"""`posmesh certs rotate` under steady load: every process takes the new certificates for new
connections (the services' gRPC and WebSocket ports present them, Envoy holds its new one) and
no request fails meanwhile."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import sys
import time
import urllib.request

from cryptography import x509

from stack.supervisor import Stack, settings_env
from tests.fault.conftest import eventually
from tests.fault.load import SteadyLoad

SERVICES = ("auth", "staff", "orders", "realtime")


def _serial(stack: Stack, name: str) -> int:
    return x509.load_pem_x509_certificate(stack.mesh_files(name).cert_file.read_bytes()).serial_number


def _presented_serial(stack: Stack, addr: str) -> int:
    """The serial of the certificate a service port presents to a new connection (which must
    bring the edge's certificate, or the handshake fails)."""
    files = stack.mesh_files("edge")
    context = ssl.create_default_context(cafile=str(files.ca_file))
    context.load_cert_chain(files.cert_file, files.key_file)
    context.check_hostname = False
    context.set_alpn_protocols(["h2", "http/1.1"])
    host, _, port = addr.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=3) as raw:
        with context.wrap_socket(raw, server_hostname="realtime.posmesh.local") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def _edge_serials(stack: Stack) -> set[int]:
    """Serials of the certificates Envoy holds (admin /certs)."""
    url = f"http://127.0.0.1:{stack.settings.envoy_admin_port}/certs"
    with urllib.request.urlopen(url, timeout=3) as reply:
        certs = json.load(reply)["certificates"]
    return {int(chain["serial_number"], 16) for entry in certs
            for chain in entry.get("cert_chain", [])}


async def _rotate(stack: Stack) -> None:
    env = {**os.environ, **{k: v for k, v in settings_env(stack.settings).items() if v is not None}}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stack.cli", "certs", "rotate", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()


async def test_rotating_the_mesh_certificates_under_steady_load_loses_no_request(
        stack, edge, party, dish):
    old = {name: _serial(stack, name) for name in (*SERVICES, "edge")}
    ports = {name: stack.addr(name) for name in SERVICES} | {
        "realtime websocket": stack.settings.realtime_ws_addr}
    async with SteadyLoad(edge, party.staff, dish, rate=15) as load:
        await asyncio.sleep(1.5)
        await _rotate(stack)
        rotated_at = time.monotonic()
        new = {name: _serial(stack, name) for name in old}
        for what, addr in ports.items():
            name = what.split()[0]
            await eventually(lambda: asyncio.to_thread(
                lambda: _presented_serial(stack, addr) == new[name]),
                timeout=10, what=f"{what} presenting its new certificate")
        await eventually(lambda: asyncio.to_thread(lambda: new["edge"] in _edge_serials(stack)),
                         timeout=10, what="Envoy holding its new certificate")
        await asyncio.sleep(2)  # the load goes on over the new connections

    assert all(new[name] != old[name] for name in old)
    assert load.failures() == [], load.describe(load.failures())
    assert len(load.succeeded_after(rotated_at)) >= 20
