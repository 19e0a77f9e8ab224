"""A WebSocket client that speaks exactly the existing React Native POS app's protocol.

    sock = await AppSocket.open(stack.edge_url, "pos", restaurant_id, ca_file=stack.ca_file)
    hello = await sock.authenticate(token, user_id)          # top-level fields, as the app sends
    pong = await sock.ping()
    created = await sock.next("order.created")

Every message has the envelope {"id", "type", "data", "restaurant_id", "timestamp"}. Like the
app, the client answers a server `ping` with `pong` on its own; every message received is also
kept in `received` so a test can look at the whole conversation.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

DEFAULT_TIMEOUT = 5.0
_closing: set[asyncio.Task] = set()  # closing handshakes finishing in the background


def ws_base(edge_url: str) -> str:
    """https://host:port → wss://host:port (and http → ws)."""
    if edge_url.startswith("https://"):
        return "wss://" + edge_url[len("https://"):].rstrip("/")
    if edge_url.startswith("http://"):
        return "ws://" + edge_url[len("http://"):].rstrip("/")
    return edge_url.rstrip("/")


def tls_context(ca_file: str | None) -> ssl.SSLContext | None:
    if ca_file is None:
        return None
    context = ssl.create_default_context(cafile=str(ca_file))
    return context


class AppSocket:
    def __init__(self, ws: ClientConnection, restaurant_id: str) -> None:
        self.ws = ws
        self.restaurant_id = restaurant_id
        self.received: list[dict] = []
        self._backlog: list[dict] = []

    @classmethod
    async def open(cls, base_url: str, connection_type: str, restaurant_id: str, *,
                   ca_file: str | None = None, headers: dict[str, str] | None = None,
                   origin: str | None = None, prefix: str = "/ws", query: str = "",
                   max_size: int | None = 2**22, **options: Any) -> AppSocket:
        url = f"{ws_base(base_url)}{prefix}/{connection_type}/{restaurant_id}"
        if query:
            url += "?" + query
        ws = await connect(url, ssl=tls_context(ca_file) if url.startswith("wss://") else None,
                           additional_headers=headers, origin=origin, compression=None,
                           ping_interval=None, open_timeout=10, max_size=max_size,
                           close_timeout=2, **options)
        return cls(ws, restaurant_id)

    # --- what the app sends ----------------------------------------------------------------

    def envelope(self, kind: str, data: dict | None = None, **top: Any) -> dict:
        return {"id": uuid.uuid4().hex, "type": kind, "data": data or {},
                "restaurant_id": self.restaurant_id, "timestamp": int(time.time() * 1000), **top}

    async def send(self, message: dict) -> None:
        await self.ws.send(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def authenticate(self, token: str, user_id: Any, *, under_data: bool = False,
                           last_event_id: str | None = None, restaurant_id: str | None = None,
                           capabilities: list[str] | None = None,
                           timeout: float = 10.0) -> dict:
        """Sends `authenticate` and returns the auth_success or auth_error that answers it (the
        app waits up to 10 s). `capabilities=["reauth"]`: a client that refreshes in place."""
        fields: dict[str, Any] = {"token": token, "user_id": user_id,
                                  "restaurant_id": restaurant_id or self.restaurant_id}
        if last_event_id is not None:
            fields["last_event_id"] = last_event_id
        if capabilities is not None:
            fields["capabilities"] = capabilities
        if under_data:
            message = self.envelope("authenticate", fields)
        else:
            message = self.envelope("authenticate", None, **fields)
        await self.send(message)
        return await self.next("auth_success", "auth_error", timeout=timeout)

    async def ping(self, timeout: float = DEFAULT_TIMEOUT) -> dict:
        await self.send(self.envelope("ping", {"timestamp": int(time.time() * 1000)}))
        return await self.next("pong", timeout=timeout)

    async def reauth(self, token: str, timeout: float = DEFAULT_TIMEOUT) -> dict:
        await self.send(self.envelope("reauth", {"token": token}))
        return await self.next("auth_success", "auth_error", timeout=timeout)

    # --- what the app reads ----------------------------------------------------------------

    async def _read(self, timeout: float) -> dict:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        message = json.loads(raw)
        self.received.append(message)
        if message.get("type") == "ping":
            try:
                await self.send(self.envelope("pong", {"timestamp": message.get("data", {}).get(
                    "timestamp")}))
            except ConnectionClosed:
                pass  # closing: what the server sent before its close frame is still to be read
        return message

    async def next(self, *types: str, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """The next message of one of `types` (any type when none given); server pings are
        answered and skipped unless asked for, other messages are kept for later calls."""
        for index, message in enumerate(self._backlog):
            if not types or message["type"] in types:
                return self._backlog.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {types or 'message'} within {timeout}s; got "
                                   f"{[m['type'] for m in self.received[-10:]]}")
            message = await self._read(left)
            if not types or message["type"] in types:
                return message
            if message["type"] != "ping":
                self._backlog.append(message)

    async def events(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> list[dict]:
        """The next `count` order/menu events, in arrival order."""
        kinds = ("order.created", "order.updated", "order.status_changed", "menu.updated")
        return [await self.next(*kinds, timeout=timeout) for _ in range(count)]

    async def closed(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[int | None, str]:
        """Reads until the server's close frame arrives; returns (close code, reason), or
        (None, "") when the connection dropped without one. Like the app, it acts on the close
        frame and lets the TCP teardown finish in the background."""
        deadline = time.monotonic() + timeout
        while self.ws.protocol.close_rcvd is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the server did not close within {timeout}s")
            try:
                await self._read(min(left, 0.05))
            except (TimeoutError, asyncio.TimeoutError):
                continue
            except ConnectionClosed:
                break
        # Messages that arrived before the close frame are still queued: keep them.
        try:
            while True:
                await self._read(0.05)
        except (TimeoutError, asyncio.TimeoutError, ConnectionClosed):
            pass
        frame = self.ws.protocol.close_rcvd
        return (frame.code, frame.reason) if frame is not None else (None, "")
    def messages(self, kind: str) -> list[dict]:
        return [m for m in self.received if m.get("type") == kind]

    async def close(self) -> None:
        """Starts the closing handshake and returns; it completes in the background (through
        Envoy the TCP teardown can wait for Envoy's delayed-close timer)."""
        task = asyncio.get_running_loop().create_task(self.ws.close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    async def __aenter__(self) -> AppSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
