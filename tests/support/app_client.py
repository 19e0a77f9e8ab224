"""A WebSocket client that behaves like the existing React Native POS app, quirks included (issue 17
is its specification), for end-to-end tests of what the server must cope with:

- it authenticates by first message with `user_id` and an ISO timestamp, never `last_event_id`;
- it answers server pings and sends its own heartbeat ping;
- on `token_expired` it refreshes its token and opens a new socket without closing the old one,
  sometimes twice (once from its refresh listener, once from its warning handler); the old socket
  keeps its handlers, so whatever it still receives is processed;
- any close that is not 1000 — of any of its sockets — tears down the current socket and
  reconnects with backoff; a 1000 is left alone;
- with no restaurant in its token it connects to `/ws/pos/onboarding`.

Everything it processes is recorded, so a test can count sockets, events, duplicates and gaps.

    app = AppLikeClient(stack.edge_url, stack.ca_file, session, refresh=refresh)
    await app.start()
    ...
    await app.stop()
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Awaitable, Callable

import jwt
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.ws_client import ws_base

ORDER_EVENTS = ("order.created", "order.updated", "order.status_changed", "menu.updated")


@dataclass
class Tokens:
    access_token: str
    refresh_token: str


@dataclass
class Received:
    socket: int
    type: str
    id: str
    data: dict
    at: float


@dataclass
class AppLikeClient:
    edge_url: str
    ca_file: str | None  # None for plain ws (an in-process gateway)
    tokens: Tokens
    user_id: str
    refresh: Callable[[str], Awaitable[Tokens]]  # refresh token → a new pair
    connection_type: str = "pos"
    heartbeat_seconds: float = 15.0
    double_reconnect_chance: float = 0.5
    seed: int = 7
    received: list[Received] = field(default_factory=list)
    sockets_opened: int = 0
    closes: Counter = field(default_factory=Counter)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    last_pong_at: float = 0.0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._open: dict[int, ClientConnection] = {}
        self._current: int | None = None
        self._tasks: set[asyncio.Task] = set()
        self._reconnecting = False
        self._stopped = False
        self._backoff = 0.5

    # --- what the app does -----------------------------------------------------------------

    async def start(self) -> None:
        await self._connect()

    async def stop(self) -> None:
        self._stopped = True
        for ws in list(self._open.values()):
            await ws.close(1000)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def restaurant_id(self) -> str:
        claims = jwt.decode(self.tokens.access_token, options={"verify_signature": False})
        return claims.get("restaurant_id") or ""

    def _path(self) -> str:
        target = self.restaurant_id or "onboarding"
        return f"{ws_base(self.edge_url)}/ws/{self.connection_type}/{target}"

    async def _connect(self) -> None:
        url = self._path()
        context = (ssl.create_default_context(cafile=str(self.ca_file))
                   if url.startswith("wss://") else None)
        ws = await connect(url, ssl=context, compression=None, ping_interval=None,
                           open_timeout=10, close_timeout=2)
        self.sockets_opened += 1
        number = self.sockets_opened
        self._open[number] = ws
        self._current = number
        await ws.send(json.dumps({
            "type": "authenticate", "token": self.tokens.access_token, "user_id": self.user_id,
            "restaurant_id": self.restaurant_id or None,
            "timestamp": datetime.now(timezone.utc).isoformat()}))
        self._spawn(self._read(number, ws))
        self._spawn(self._heartbeat(number, ws))

    def _spawn(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, number: int, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "ping":
                    await ws.send(json.dumps({"type": "pong", "id": uuid.uuid4().hex,
                                              "data": {"timestamp": message["data"]["timestamp"]}}))
                    self.last_pong_at = time.monotonic()
                    continue
                self.received.append(Received(number, kind, str(message.get("id")),
                                              message.get("data") or {}, time.monotonic()))
                if kind == "auth_success" and number == self._current:
                    self._backoff = 0.5
                    self.connected.set()
                elif kind == "token_expired":
                    await self._on_token_warning()
                elif kind == "auth_error" and (message.get("data") or {}).get("code") == \
                        "TOKEN_EXPIRED":
                    self.tokens = await self.refresh(self.tokens.refresh_token)
        except ConnectionClosed:
            pass
        finally:
            self._open.pop(number, None)
            frame = ws.protocol.close_rcvd
            code = frame.code if frame is not None else 1006
            self.closes[code] += 1
            if number == self._current:
                self.connected.clear()
            if code != 1000 and not self._stopped:
                # The app's close handler: whichever socket it was, tear down and reconnect.
                self._spawn(self._reconnect())

    async def _heartbeat(self, number: int, ws: ClientConnection) -> None:
        try:
            while number in self._open:
                await asyncio.sleep(self.heartbeat_seconds)
                await ws.send(json.dumps({"type": "ping", "id": uuid.uuid4().hex,
                                          "data": {"timestamp": int(time.time() * 1000)}}))
        except ConnectionClosed:
            pass

    async def on_token_warning(self) -> None:
        """What the app does when warned that its token expires (tests call it directly to act
        out the warning on a server that no longer sends it to this client)."""
        await self._on_token_warning()

    async def _on_token_warning(self) -> None:
        self.tokens = await self.refresh(self.tokens.refresh_token)
        await self._connect()  # the old socket is abandoned, not closed
        if self._random.random() < self.double_reconnect_chance:
            await self._connect()  # the warning handler reconnects too

    async def _reconnect(self) -> None:
        if self._reconnecting:
            return
        self._reconnecting = True
        try:
            current = self._open.get(self._current) if self._current is not None else None
            if current is not None:
                await current.close(1000)
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, 8.0)
            while not self._stopped:
                try:
                    await self._connect()
                    return
                except (OSError, ConnectionClosed, TimeoutError):
                    await asyncio.sleep(self._backoff)
        finally:
            self._reconnecting = False

    # --- what a test forces ----------------------------------------------------------------

    def drop_network(self) -> None:
        """The phone loses its connection: no close handshake on the current socket."""
        ws = self._open.get(self._current) if self._current is not None else None
        if ws is not None:
            ws.transport.abort()

    # --- what a test reads -----------------------------------------------------------------

    def events(self, *types: str) -> list[Received]:
        kinds = types or ORDER_EVENTS
        return [item for item in self.received if item.type in kinds]

    def duplicates(self) -> dict[str, int]:
        counts = Counter(item.id for item in self.events())
        return {event_id: count for event_id, count in counts.items() if count > 1}

    @property
    def open_sockets(self) -> int:
        return len(self._open)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not reached within {timeout}s; received "
                                   f"{[(r.type, r.id) for r in self.received[-8:]]}")
            await asyncio.sleep(0.02)
