"""WebSocket holders: processes that keep many authenticated app sockets open through the edge
and time-stamp every order event they receive.

The orchestrator drives each holder over a pipe (`SocketHolder.call(command, **args)`):
`connect` opens sockets (header auth: `Authorization: Bearer` on the upgrade, then the server's
`auth_success`), `reset` starts a new measurement, `receipts` returns when each socket got each
order.created (by order id), `status` counts open sockets and close codes, `stop` closes all.

Receipt times are taken from the system-wide monotonic clock right after a frame is read, before
any parsing, so they compare with the create call's response time taken in another process.
Every socket also checks that the event ids it receives only ever go up by one (no gap, no
duplicate, in order).
"""

from __future__ import annotations

import array
import asyncio
import json
import multiprocessing
import resource
import ssl
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ORDER_ID_MARK = b'"order":{"id":"'


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raises RLIMIT_NOFILE for this process (and its children): to `wanted` when privileged,
    else to the hard limit. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in ((max(wanted, hard), max(wanted, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, target)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def ws_url(edge_url: str, connection_type: str, restaurant_id: str) -> str:
    return f"wss://{edge_url.split('://', 1)[1].rstrip('/')}/ws/{connection_type}/{restaurant_id}"


@dataclass
class SocketSpec:
    connection_type: str
    restaurant_id: str
    token: str
    # Straight to the realtime process's WebSocket port instead of through Envoy: only for the
    # sockets beyond what Envoy can hold under this machine's open-file limit.
    direct: bool = False


@dataclass
class _Stats:
    connected: int = 0
    failures: Counter = field(default_factory=Counter)
    closes: Counter = field(default_factory=Counter)
    out_of_order: int = 0
    via_edge: int = 0
    direct: int = 0
    edge_refused: int = 0  # refused by Envoy, then held straight on the realtime port
    edge_refusals: Counter = field(default_factory=Counter)
    handshake: array.array = field(default_factory=lambda: array.array("d"))


class Holder:
    """Runs inside the holder process."""

    def __init__(self, edge_url: str, ca_file: str, realtime_ws_addr: str = "",
                 mesh_dir: str = "") -> None:
        self.edge_url = edge_url
        self.realtime_ws_addr = realtime_ws_addr
        self.context = ssl.create_default_context(cafile=ca_file)
        self.context.set_alpn_protocols(["http/1.1"])
        # Straight to the realtime port: mutual TLS with the edge's mesh certificate (the only
        # identity that port accepts); plaintext when the stack runs with MESH_TLS=false.
        self.direct_context = None
        if mesh_dir:
            folder = Path(mesh_dir)
            self.direct_context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
            self.direct_context.load_cert_chain(folder / "edge.pem", folder / "edge-key.pem")
            self.direct_context.set_alpn_protocols(["http/1.1"])
        self.sockets: list[ClientConnection] = []
        self.tasks: list[asyncio.Task] = []
        self.receipts: dict[str, array.array] = defaultdict(lambda: array.array("d"))
        self.stats = _Stats()

    async def _open(self, spec: SocketSpec) -> None:
        started = time.monotonic()
        ws, error = await self._upgrade(spec)
        if ws is None and not spec.direct and self.realtime_ws_addr:
            # Envoy refused it (its overload manager stops accepting past its heap limit):
            # hold the socket on the realtime process anyway, straight to its port.
            ws, second = await self._upgrade(SocketSpec(spec.connection_type, spec.restaurant_id,
                                                        spec.token, direct=True))
            if ws is not None:
                self.stats.edge_refused += 1
                self.stats.edge_refusals[error] += 1
            else:
                error = second
        if ws is None:
            self.stats.failures[error] += 1
            return
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), 30))
        except Exception as exc:
            self.stats.failures[f"no auth_success: {type(exc).__name__}"] += 1
            await ws.close()
            return
        if first.get("type") != "auth_success":
            self.stats.failures[f"{first.get('type')}: {first.get('data', {}).get('code')}"] += 1
            await ws.close()
            return
        self.stats.handshake.append(time.monotonic() - started)
        self.stats.connected += 1
        self.sockets.append(ws)
        self.tasks.append(asyncio.ensure_future(self._read(ws)))

    async def _upgrade(self, spec: SocketSpec) -> tuple[ClientConnection | None, str]:
        if spec.direct:
            scheme = "wss" if self.direct_context is not None else "ws"
            url = f"{scheme}://{self.realtime_ws_addr}/ws/{spec.connection_type}/{spec.restaurant_id}"
        else:
            url = ws_url(self.edge_url, spec.connection_type, spec.restaurant_id)
        try:
            ws = await connect(url, ssl=self.direct_context if spec.direct else self.context,
                               compression=None, ping_interval=None,
                               open_timeout=60, close_timeout=2, max_size=1 << 20,
                               additional_headers={"authorization": f"Bearer {spec.token}"})
        except Exception as exc:
            return None, f"upgrade: {type(exc).__name__}: {str(exc)[:80]}"
        if spec.direct:
            self.stats.direct += 1
        else:
            self.stats.via_edge += 1
        return ws, ""

    async def _read(self, ws: ClientConnection) -> None:
        last_sequence = 0
        receipts = self.receipts
        now = time.monotonic
        try:
            while True:
                raw = await ws.recv(decode=False)
                received = now()
                if raw.startswith(b'{"id":"m-'):
                    if b'"type":"ping"' in raw[:80]:
                        await ws.send(json.dumps({"id": uuid.uuid4().hex, "type": "pong", "data": {},
                                                  "restaurant_id": None,
                                                  "timestamp": int(time.time() * 1000)}))
                    continue
                end = raw.find(b'"', 7)
                sequence = int(raw[7:end])
                if last_sequence and sequence != last_sequence + 1:
                    self.stats.out_of_order += 1
                last_sequence = sequence
                mark = raw.find(ORDER_ID_MARK)
                if mark >= 0 and b'"type":"order.created"' in raw[:80]:
                    start = mark + len(ORDER_ID_MARK)
                    receipts[raw[start:start + 36].decode()].append(received)
        except ConnectionClosed as closed:
            frame = closed.rcvd
            self.stats.closes[f"{frame.code} {frame.reason}" if frame else "no close frame"] += 1
        except Exception as exc:
            self.stats.closes[type(exc).__name__] += 1

    async def connect(self, specs: list[SocketSpec], concurrency: int = 64) -> dict:
        gate = asyncio.Semaphore(concurrency)
        before = self.stats.connected
        started = time.monotonic()

        async def one(spec: SocketSpec) -> None:
            async with gate:
                await self._open(spec)
        await asyncio.gather(*(one(spec) for spec in specs))
        handshakes = sorted(self.stats.handshake)
        return {"connected": self.stats.connected - before, "open": self.open_count(),
                "failures": dict(self.stats.failures), "seconds": time.monotonic() - started,
                "via_edge": self.stats.via_edge, "direct": self.stats.direct,
                "edge_refused": self.stats.edge_refused,
                "edge_refusals": dict(self.stats.edge_refusals),
                "handshake_p50_ms": handshakes[len(handshakes) // 2] * 1000 if handshakes else 0}

    def open_count(self) -> int:
        return sum(1 for task in self.tasks if not task.done())

    def reset(self) -> dict:
        self.receipts.clear()
        self.stats.out_of_order = 0
        return {"open": self.open_count()}

    def collect(self) -> dict:
        return {"receipts": {key: list(value) for key, value in self.receipts.items()},
                "out_of_order": self.stats.out_of_order, "open": self.open_count(),
                "closes": dict(self.stats.closes)}

    async def stop(self) -> dict:
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return {"closed": len(self.sockets)}


def _holder_main(pipe, edge_url: str, ca_file: str, realtime_ws_addr: str, mesh_dir: str = "") -> None:
    import uvloop

    raise_fd_limit()

    async def serve() -> None:
        holder = Holder(edge_url, ca_file, realtime_ws_addr, mesh_dir)
        loop = asyncio.get_running_loop()
        while True:
            command, args = await loop.run_in_executor(None, pipe.recv)
            try:
                if command == "connect":
                    reply = await holder.connect([SocketSpec(*s) for s in args["specs"]],
                                                 args.get("concurrency", 64))
                elif command == "reset":
                    reply = holder.reset()
                elif command == "receipts":
                    reply = holder.collect()
                elif command == "count":
                    reply = {"receipts": sum(len(times) for times in holder.receipts.values())}
                elif command == "status":
                    reply = {"open": holder.open_count(), "closes": dict(holder.stats.closes)}
                elif command == "stop":
                    pipe.send(await holder.stop())
                    return
                else:
                    reply = {"error": f"unknown command {command}"}
            except Exception as exc:  # report it to the orchestrator rather than dying silently
                reply = {"error": repr(exc)}
            pipe.send(reply)

    uvloop.run(serve())


class SocketHolder:
    """The orchestrator's handle on one holder process."""

    def __init__(self, edge_url: str, ca_file: str, realtime_ws_addr: str = "",
                 mesh_dir: str = "") -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self.process = context.Process(target=_holder_main,
                                       args=(child, edge_url, str(ca_file), realtime_ws_addr,
                                             mesh_dir),
                                       daemon=True)
        self.process.start()
        self._lock = asyncio.Lock()

    async def call(self, command: str, **args) -> dict:
        async with self._lock:
            self._pipe.send((command, args))
            reply = await asyncio.to_thread(self._pipe.recv)
        if isinstance(reply, dict) and "error" in reply:
            raise RuntimeError(f"socket holder: {reply['error']}")
        return reply

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.call("stop"), 60)
        except Exception:
            pass
        await asyncio.to_thread(self.process.join, 10)
        if self.process.is_alive():
            self.process.terminate()
