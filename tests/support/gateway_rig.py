"""The realtime gateway in process, for unit tests: a real websockets server on loopback and the
app's client (tests/support/ws_client.py), with real signed tokens and a real local revocation
set (`rig.revoke(sid)`); Redis-backed parts (presence, IP window, session sockets, resume
positions) and the orders feed are in memory.

    rig = Rig(); await rig.start()
    sock = await rig.signed_in(user="u-1")
    rig.orders.commit(RESTAURANT, 2)          # two order events
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter, defaultdict

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.asyncio.server import serve

from posmesh.common.authn import Authenticator
from posmesh.common.revocations import RevocationSet, SessionRevocation
from posmesh.common.settings import Settings
from posmesh.common.tokens import KeySet, TokenVerifier
from services.realtime import protocol
from services.realtime.gateway import RealtimeGateway
from services.realtime.hub import FeedItem, OrderHub
from services.realtime.limits import Verdict
from services.realtime.presence import Admission
from tests.support.ws_client import AppSocket

ISSUER, AUDIENCE, KID = "https://issuer.test", "posmesh-test", "gw-key"
RESTAURANT = "rest-1"
ALLOWED_ORIGIN = "capacitor://localhost"


class MemoryRegistry:
    process_id = "test-process"
    redis_ok = True

    def __init__(self) -> None:
        self.users: Counter[str] = Counter()
        self.presence_counts: defaultdict[str, Counter[str]] = defaultdict(Counter)

    async def admit(self, user_id, restaurant_id, connection_type, *, per_user, per_restaurant):
        if self.users[user_id] >= per_user:
            return Admission(False, "user", self.users[user_id])
        self.users[user_id] += 1
        self.presence_counts[restaurant_id][connection_type] += 1
        return Admission(True)

    async def release(self, user_id, restaurant_id, connection_type):
        self.users[user_id] -= 1
        self.presence_counts[restaurant_id][connection_type] -= 1

    def local_presence(self):
        return {r: dict(c) for r, c in self.presence_counts.items()}

    async def live_processes(self):
        return [self.process_id]

    def local_totals(self):
        totals: Counter[str] = Counter()
        for counts in self.presence_counts.values():
            totals.update(counts)
        return dict(totals)


class MemoryWindow:
    def __init__(self) -> None:
        self.hits: list[tuple[str, bool]] = []
        self.refuse = False

    async def hit(self, ip: str, limit: int, *, expired_token: bool = False) -> Verdict:
        self.hits.append((ip, expired_token))
        return Verdict(False, 30000) if self.refuse else Verdict(True)


class MemoryOrders:
    """WatchRestaurantOrders in memory, as the orders service answers it: a replay after
    `after` (or live from the newest event), then live; no message while nothing happens."""

    def __init__(self) -> None:
        self.history: defaultdict[str, list[int]] = defaultdict(list)
        self.listeners: defaultdict[str, list[asyncio.Queue]] = defaultdict(list)

    def commit(self, restaurant_id: str, count: int = 1) -> list[int]:
        added = []
        for _ in range(count):
            sequence = len(self.history[restaurant_id]) + 1
            self.history[restaurant_id].append(sequence)
            added.append(sequence)
            for queue in self.listeners[restaurant_id]:
                queue.put_nowait(sequence)
        return added

    @staticmethod
    def item(restaurant_id: str, sequence: int) -> FeedItem:
        frame = json.dumps({"id": str(sequence), "type": "order.created",
                            "restaurant_id": restaurant_id, "timestamp": "t",
                            "data": {"order": {"id": f"o-{sequence}"}}}).encode()
        return FeedItem(sequence=sequence, frame=protocol.wire_text_frame(frame))

    async def head(self, restaurant_id: str) -> int | None:
        return len(self.history[restaurant_id])

    async def watch(self, restaurant_id: str, after: int | None):
        queue: asyncio.Queue = asyncio.Queue()
        self.listeners[restaurant_id].append(queue)
        try:
            if after is None:
                after = len(self.history[restaurant_id])
            else:
                for sequence in list(self.history[restaurant_id]):
                    if sequence > after:
                        yield self.item(restaurant_id, sequence)
                        after = sequence
            while True:
                sequence = await queue.get()
                if after is None or sequence > after:
                    yield self.item(restaurant_id, sequence)
        finally:
            self.listeners[restaurant_id].remove(queue)


class Rig:
    def __init__(self, **settings: object) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        keys = KeySet()
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        keys.load_jwks({"keys": [{**public, "kid": KID, "alg": "ES256", "use": "sig"}]})
        self.revocations = RevocationSet(lifetime_seconds=910, max_entries=1000)
        self.authenticator = Authenticator(
            TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE, leeway_seconds=10),
            self.revocations)
        self.settings = Settings(**{
            "WS_AUTH_TIMEOUT_SECONDS": 0.6, "WS_TOKEN_WARNING_SECONDS": 2,
            "WS_PING_INTERVAL_SECONDS": 1.0, "WS_MAX_MESSAGE_BYTES": 4096,
            "WS_MAX_CONNECTIONS_PER_USER": 3, "CORS_ALLOWED_ORIGINS": ALLOWED_ORIGIN, **settings})
        self.orders = MemoryOrders()
        self.registry = MemoryRegistry()
        self.window = MemoryWindow()
        self.hub = OrderHub(self.orders, pending_limit=16, linger_seconds=0.2, ready_timeout=1.0)
        self.gateway = RealtimeGateway(self.settings, authenticator=self.authenticator, redis=None,
                                       hub=self.hub, registry=self.registry,
                                       send_buffer_limit=64 * 1024, ip_window=self.window)
        self.url = ""
        self._server = None

    def token(self, *, user: str = "user-1", restaurant: str = RESTAURANT, role: str = "staff",
              ttl: int = 600, sid: str | None = None) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": user, "sid": sid or uuid.uuid4().hex,
                  "restaurant_id": restaurant, "role": role, "jti": uuid.uuid4().hex,
                  "iat": now - 1, "exp": now + ttl}
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": KID})

    def revoke(self, sid: str, reason: str = "LOGOUT") -> None:
        """The session is in the process's revocation set (as the follower puts it there)."""
        self.revocations.add(SessionRevocation(sid, "", "", reason))

    async def open(self, kind: str = "pos", restaurant: str = RESTAURANT, **options) -> AppSocket:
        return await AppSocket.open(self.url, kind, restaurant, **options)

    async def signed_in(self, *, user: str = "user-1", kind: str = "pos", **token) -> AppSocket:
        sock = await self.open(kind)
        hello = await sock.authenticate(self.token(user=user, **token), user)
        assert hello["type"] == "auth_success", hello
        return sock

    async def start(self) -> None:
        self.gateway.start()
        self._server = await serve(
            self.gateway.handler, "127.0.0.1", 0, process_request=self.gateway.process_request,
            compression=None, ping_interval=None, ping_timeout=None, close_timeout=1,
            max_size=self.settings.ws_max_message_bytes, max_queue=4)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        await self.gateway.stop()
        self._server.close()
        await self._server.wait_closed()
        await self.hub.stop()
