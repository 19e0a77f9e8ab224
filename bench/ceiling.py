"""The ceiling: a second, bench-only Envoy that answers every request itself (`direct_response`),
with the same binary, TLS certificate, ALPN, HTTP/2 settings and worker count as the edge.

Whatever a workload achieves through the real edge is set against what the same client gets from
Envoy doing nothing at all. The edge's own config (envoy/envoy.yaml.j2) is left untouched.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
from pathlib import Path

from stack.envoy_config import envoy_binary
from tests.harness import free_ports

PATH = "/bench/direct"
BODY = '{"ok":true}'


def render(out_dir: Path, cert_file: Path, key_file: Path, port: int, admin_port: int) -> Path:
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": [{
            "name": "ceiling",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "per_connection_buffer_limit_bytes": 32768,
            "filter_chains": [{
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "common_tls_context": {
                            "alpn_protocols": ["h2", "http/1.1"],
                            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                            "tls_certificates": [{
                                "certificate_chain": {"filename": str(cert_file)},
                                "private_key": {"filename": str(key_file)}}]}}},
                "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ceiling",
                        "codec_type": "AUTO",
                        "http2_protocol_options": {"max_concurrent_streams": 100,
                                                   "initial_stream_window_size": 65536,
                                                   "initial_connection_window_size": 1048576},
                        "route_config": {"virtual_hosts": [{
                            "name": "ceiling", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"},
                                        "direct_response": {"status": 200,
                                                            "body": {"inline_string": BODY}},
                                        "response_headers_to_add": [{"header": {
                                            "key": "content-type", "value": "application/json"}}]}]}]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                    }}],
            }],
        }]},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "ceiling-envoy.json"
    path.write_text(json.dumps(config, indent=1))
    return path


class CeilingEnvoy:
    def __init__(self, data_dir: Path, cert_file: Path, key_file: Path) -> None:
        self.port, self.admin_port = free_ports(2)
        self.config = render(data_dir / "bench", cert_file, key_file, self.port, self.admin_port)
        self.log_file = data_dir / "bench" / "ceiling-envoy.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 20.0) -> None:
        with self.log_file.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(envoy_binary()), "-c", str(self.config), "--log-level", "warn",
                "--disable-hot-restart",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(self._ready):
            if self.process.returncode is not None:
                raise RuntimeError(f"the ceiling Envoy exited: {self.log_file.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("the ceiling Envoy did not become ready")
            await asyncio.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()


def h2load_path() -> str | None:
    """Debian's h2load (nghttp2-client), when installed: a C client that can saturate Envoy."""
    return shutil.which("h2load")


async def h2load(url: str, *, duration: int, clients: int = 8, streams: int = 32,
                 threads: int = 2) -> dict | None:
    """Runs h2load against `url`; its req/s and mean latency, or None when it is not installed."""
    binary = h2load_path()
    if binary is None:
        return None
    process = await asyncio.create_subprocess_exec(
        binary, "-t", str(threads), "-c", str(clients), "-m", str(streams), "-D", str(duration),
        "--warm-up-time", "1", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    result: dict = {"command": f"h2load -t {threads} -c {clients} -m {streams} -D {duration} "
                               f"--warm-up-time 1 {url}"}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("finished in"):
            # finished in 5.00s, 21345.20 req/s, 2.1MB/s
            parts = [p.strip() for p in line.split(",")]
            result["rps"] = float(parts[1].split()[0])
        elif line.startswith("requests:"):
            # requests: 106726 total, 106726 started, 106726 done, 106726 succeeded, 0 failed, ...
            fields = dict(reversed(p.strip().split(" ", 1)) for p in line[len("requests:"):].split(","))
            result["succeeded"] = int(fields.get("succeeded", 0))
            result["failed"] = int(fields.get("failed", 0)) + int(fields.get("errored", 0))
        elif line.startswith("time for request:"):
            values = line.split(":", 1)[1].split()
            result["mean_ms"] = _ms(values[2])
    return result if "rps" in result else {"error": text[-500:], **result}


def _ms(value: str) -> float:
    for suffix, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if value.endswith(suffix):
            return round(float(value[: -len(suffix)]) * factor, 3)
    return float(value)
