"""A mixed POS day: simulated people with think time, not connections firing back to back.

Per restaurant: tills (staff; a `pos` socket each), kitchen screens (staff; a `kitchen` socket
each) and managers' phones (HTTP only). Each simulated user acts about once a second (exponential
think time, mean 1 s) on an open-loop schedule fixed in advance, so a slow reply never delays the
user's next action and latency is measured from when the action was due.

- till: 60 % list active orders, 25 % get an order it has seen, 10 % read the menu, 5 % create
  an order;
- kitchen screen: moves an order it owns one step along OPEN → … → PAID (orders are split between
  a restaurant's screens by id, so two screens never race on one order), else lists active orders;
- manager's phone: 35 % active orders, 25 % order history, 20 % menu, 10 % presence, 10 % staff.

Every order.created a restaurant's sockets receive is time-stamped against the till's create
response (same process, same clock): event delivery latency under the day's load.
"""

from __future__ import annotations

import array
import asyncio
import json
import random
import ssl
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.h2client import H2Pool, tls_context
from bench.openloop import Recorder
from bench.scenarios import JSON, bearer, error_kind
from bench.sockets import ORDER_ID_MARK, raise_fd_limit, ws_url
from bench.world import Restaurant, Target

NEXT_STATUS = {"OPEN": "SENT_TO_KITCHEN", "SENT_TO_KITCHEN": "PREPARING", "PREPARING": "READY",
               "READY": "SERVED", "SERVED": "PAID"}


@dataclass
class DaySpec:
    target: Target
    edge_url: str
    restaurants: list[Restaurant]
    tills: int
    kitchens: int
    phones: int
    duration: float
    warmup: float
    seed: int
    start_at: float
    connections: int = 4


@dataclass
class DayResult:
    by_kind: dict[str, Recorder]
    event_latencies: array.array
    sockets: int
    socket_failures: Counter
    socket_closes: Counter
    missing_events: int
    users: int
    actions: int
    duration: float


@dataclass
class _Place:
    restaurant: Restaurant
    seen_orders: list[str] = field(default_factory=list)
    # Kitchen screen index -> {order id: (status, version)} of the orders that screen owns.
    owned: dict[int, dict[str, tuple[str, int]]] = field(default_factory=lambda: defaultdict(dict))
    # Orders created by this process's tills while measuring: id -> response time.
    created_at: dict[str, float] = field(default_factory=dict)
    # Every order.created the restaurant's sockets received: id -> receipt times.
    receipts: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def run_day(spec: DaySpec) -> DayResult:
    import uvloop

    raise_fd_limit()
    return uvloop.run(_Day(spec).run())


class _Day:
    def __init__(self, spec: DaySpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.places = [_Place(r) for r in spec.restaurants]
        self.by_kind: dict[str, Recorder] = defaultdict(Recorder)
        self.event_latencies = array.array("d")
        self.socket_failures: Counter = Counter()
        self.socket_closes: Counter = Counter()
        self.sockets = 0
        self.measuring = False
        self.pool: H2Pool | None = None

    # --- sockets --------------------------------------------------------------------------------

    async def _socket(self, place: _Place, kind: str, token: str, context: ssl.SSLContext) -> None:
        url = ws_url(self.spec.edge_url, kind, place.restaurant.id)
        try:
            ws = await connect(url, ssl=context, compression=None, ping_interval=None,
                               open_timeout=60, close_timeout=3, max_size=1 << 20,
                               additional_headers={"authorization": f"Bearer {token}"})
            hello = json.loads(await asyncio.wait_for(ws.recv(), 30))
        except Exception as exc:
            self.socket_failures[type(exc).__name__] += 1
            return
        if hello.get("type") != "auth_success":
            self.socket_failures[str(hello.get("data", {}).get("code"))] += 1
            await ws.close()
            return
        self.sockets += 1
        self.per_restaurant[place.restaurant.id] += 1
        kitchen_index = self.kitchen_counter[place.restaurant.id] if kind == "kitchen" else -1
        if kind == "kitchen":
            self.kitchen_counter[place.restaurant.id] += 1
        self.open_sockets.append(ws)
        asyncio.ensure_future(self._listen(ws, place, kitchen_index))

    async def _listen(self, ws, place: _Place, kitchen_index: int) -> None:
        kitchens = self.spec.kitchens
        try:
            while True:
                raw = await ws.recv(decode=False)
                received = time.monotonic()
                if raw.startswith(b'{"id":"m-'):
                    if b'"type":"ping"' in raw[:80]:
                        await ws.send(json.dumps({"id": uuid.uuid4().hex, "type": "pong",
                                                  "data": {}, "restaurant_id": None,
                                                  "timestamp": int(time.time() * 1000)}))
                    continue
                if b'"type":"order.created"' in raw[:80]:
                    mark = raw.find(ORDER_ID_MARK) + len(ORDER_ID_MARK)
                    order_id = raw[mark:mark + 36].decode()
                    place.receipts[order_id].append(received)
                    if kitchen_index >= 0:
                        if hash(order_id) % kitchens == kitchen_index:
                            place.owned[kitchen_index].setdefault(order_id, ("OPEN", 1))
                    elif len(place.seen_orders) < 500:
                        place.seen_orders.append(order_id)
        except ConnectionClosed as closed:
            frame = closed.rcvd
            self.socket_closes[f"{frame.code} {frame.reason}" if frame else "no close frame"] += 1
        except Exception as exc:
            self.socket_closes[type(exc).__name__] += 1

    # --- actions ----------------------------------------------------------------------------------

    async def _call(self, kind: str, method: str, path: str, token: str, body: bytes = b""
                    ) -> tuple[str | None, bytes]:
        status, reply = await self.pool.request(method, path, [bearer(token), JSON], body)
        return (None if status == 200 else error_kind(status, reply)), reply

    async def till(self, place: _Place, user: int) -> tuple[str, str | None]:
        restaurant = place.restaurant
        token = restaurant.staff[user % len(restaurant.staff)].access_token
        roll = self.rng.random()
        if roll < 0.60:
            return "list_active", (await self._call("", "GET", "/api/v1/orders/active", token))[0]
        if roll < 0.85:
            known = place.seen_orders or restaurant.order_ids
            order_id = self.rng.choice(known)
            return "get_order", (await self._call("", "GET", f"/api/v1/orders/{order_id}", token))[0]
        if roll < 0.95:
            path = f"/api/v1/restaurants/{restaurant.id}/menu"
            return "get_menu", (await self._call("", "GET", path, token))[0]
        body = json.dumps({"request_id": str(uuid.uuid4()), "order_type": "TAKEAWAY", "lines": [
            {"menu_item_id": self.rng.choice(restaurant.menu_item_ids),
             "quantity": self.rng.randint(1, 3)} for _ in range(self.rng.randint(1, 4))]}).encode()
        error, reply = await self._call("", "POST", "/api/v1/orders", token, body)
        if error is None and self.measuring:
            place.created_at[json.loads(reply)["id"]] = time.monotonic()
        return "create_order", error

    async def kitchen(self, place: _Place, screen: int) -> tuple[str, str | None]:
        restaurant = place.restaurant
        token = restaurant.staff[screen % len(restaurant.staff)].access_token
        owned = place.owned[screen]
        # An order this screen owns and is not moving right now.
        for order_id, (status, version) in list(owned.items()):
            if version > 0:
                owned[order_id] = (status, -version)  # in flight
                target = NEXT_STATUS[status]
                body = json.dumps({"status": target, "version": version}).encode()
                error, reply = await self._call("", "POST", f"/api/v1/orders/{order_id}/status",
                                                token, body)
                if error is None:
                    order = json.loads(reply)
                    if order["status"] in NEXT_STATUS:
                        owned[order_id] = (order["status"], order["version"])
                    else:
                        owned.pop(order_id, None)
                else:
                    owned.pop(order_id, None)
                return "update_status", error
        return "list_active", (await self._call("", "GET", "/api/v1/orders/active", token))[0]

    async def phone(self, place: _Place, user: int) -> tuple[str, str | None]:
        restaurant = place.restaurant
        token = restaurant.manager.access_token
        roll = self.rng.random()
        if roll < 0.35:
            return "list_active", (await self._call("", "GET", "/api/v1/orders/active", token))[0]
        if roll < 0.60:
            return "list_orders", (await self._call("", "GET", "/api/v1/orders?page_size=20", token))[0]
        if roll < 0.80:
            path = f"/api/v1/restaurants/{restaurant.id}/menu"
            return "get_menu", (await self._call("", "GET", path, token))[0]
        if roll < 0.90:
            path = f"/api/v1/restaurants/{restaurant.id}/presence"
            return "presence", (await self._call("", "GET", path, token))[0]
        return "list_employees", (await self._call("", "GET", "/api/v1/employees", token))[0]

    # --- the day ----------------------------------------------------------------------------------

    async def run(self) -> DayResult:
        spec = self.spec
        target = spec.target
        self.pool = H2Pool(target.host, target.port, tls_context(target.ca_file),
                           connections=spec.connections, server_hostname=target.server_hostname)
        await self.pool.start()
        context = ssl.create_default_context(cafile=target.ca_file)
        context.set_alpn_protocols(["http/1.1"])
        self.kitchen_counter: Counter = Counter()
        self.per_restaurant: Counter = Counter()
        self.open_sockets = []
        gate = asyncio.Semaphore(32)

        async def open_one(place: _Place, kind: str, token: str) -> None:
            async with gate:
                await self._socket(place, kind, token, context)
        await asyncio.gather(*(
            open_one(place, kind, place.restaurant.staff[n % len(place.restaurant.staff)].access_token)
            for place in self.places
            for kind, count in (("pos", spec.tills), ("kitchen", spec.kitchens))
            for n in range(count)))

        users = [(place, role, n) for place in self.places
                 for role, count in (("till", spec.tills), ("kitchen", spec.kitchens),
                                     ("phone", spec.phones))
                 for n in range(count)]
        total = spec.warmup + spec.duration
        schedule: list[tuple[float, int]] = []
        for index in range(len(users)):
            due = self.rng.uniform(0, 1.0)
            while due < total:
                schedule.append((due, index))
                due += self.rng.expovariate(1.0)
        schedule.sort()

        delay = spec.start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        start = time.monotonic()
        pending: set[asyncio.Task] = set()
        actions = 0

        async def act(due_at: float, index: int) -> None:
            place, role, n = users[index]
            try:
                kind, error = await asyncio.wait_for(
                    getattr(self, role)(place, n), 15)
            except asyncio.TimeoutError:  # which action it was is not known: name the person
                kind, error = f"{role} (no answer in 15 s)", "timeout"
            except Exception as exc:
                kind, error = f"{role} (failed)", type(exc).__name__
            if due_at - start >= spec.warmup:
                self.by_kind[kind].record(time.monotonic() - due_at, error)

        for offset, index in schedule:
            due_at = start + offset
            wait = due_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not self.measuring and offset >= spec.warmup:
                self.measuring = True
            task = asyncio.ensure_future(act(due_at, index))
            pending.add(task)
            task.add_done_callback(pending.discard)
            actions += 1
        if pending:
            await asyncio.wait(pending)
        await asyncio.sleep(2.0)  # the last events reach the sockets
        missing = 0
        for place in self.places:
            sockets_per_restaurant = self.per_restaurant[place.restaurant.id]
            for order_id, responded in place.created_at.items():
                times = place.receipts.get(order_id, [])
                missing += max(0, sockets_per_restaurant - len(times))
                # A socket may read the event before the till has the response: clamp at 0.
                self.event_latencies.extend(max(0.0, t - responded) for t in times)
        # All at once: a close through Envoy takes about a second (its delayed_close_timeout).
        await asyncio.gather(*(ws.close() for ws in self.open_sockets), return_exceptions=True)
        await self.pool.close()
        return DayResult(dict(self.by_kind), self.event_latencies, self.sockets,
                         self.socket_failures, self.socket_closes, missing, len(users), actions,
                         spec.duration)
