"""What each HTTP workload sends: a `fire(i)` per scenario, run by bench.loadgen in its own
process. Every request goes through the edge over TLS with the tokens of real sessions; a reply
other than the expected status is an error, named by its status and ErrorInfo reason."""

from __future__ import annotations

import json
import random
import uuid
from typing import Callable

from bench.h2client import H2Pool
from bench.openloop import NO_JSON, Fire, Outcome
from bench.world import World

JSON = (b"content-type", b"application/json")

# The orders mix of the orders issue: 70 % list active, 20 % get, 10 % create, by i % 10.
MIX_LIST, MIX_GET = 7, 9


def bearer(token: str) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + token.encode())


def error_kind(status: int, body: bytes) -> str:
    """'503 SERVICE_UNAVAILABLE': the status and the ErrorInfo reason of a JSON error body."""
    reason = ""
    try:
        parsed = json.loads(body)
        for detail in parsed.get("details", []) if isinstance(parsed, dict) else []:
            if isinstance(detail, dict) and detail.get("reason"):
                reason = detail["reason"]
                break
    except (ValueError, AttributeError):
        reason = NO_JSON
    return f"{status} {reason}".strip()


def order_body(rng: random.Random, item_ids: list[str]) -> bytes:
    lines = [{"menu_item_id": rng.choice(item_ids), "quantity": rng.randint(1, 3)}
             for _ in range(rng.randint(1, 3))]
    return json.dumps({"request_id": str(uuid.uuid4()), "order_type": "TAKEAWAY",
                       "lines": lines}).encode()


def till_order_body(rng: random.Random, item_ids: list[str]) -> bytes:
    """A till's full order: four lines, some with notes and modifiers, for a table (~750 bytes)."""
    notes = ["no onions", "sauce on the side", "", ""]
    modifiers = [["extra cheese", "gluten free"], ["large"], [], ["no ice"]]
    lines = [{"menu_item_id": rng.choice(item_ids), "quantity": rng.randint(1, 3),
              "notes": notes[k], "modifiers": modifiers[k]} for k in range(4)]
    return json.dumps({"request_id": str(uuid.uuid4()), "order_type": "DINE_IN",
                       "table_number": str(rng.randint(1, 40)), "lines": lines,
                       "notes": "birthday: bring the cake out last"}).encode()


# A manager's phone looking at today's open and preparing orders (query parameters).
ORDER_HISTORY_PATH = "/api/v1/orders?page_size=10&statuses=OPEN&statuses=PREPARING"


class Scenarios:
    """Builds the fire function of a named scenario for one generator process."""

    def __init__(self, pool: H2Pool, world: World | None, *, seed: int, shard: int = 0,
                 shards: int = 1, extra: dict | None = None) -> None:
        self.pool = pool
        self.world = world
        self.rng = random.Random(seed * 1000 + shard)
        self.shard, self.shards = shard, shards
        self.extra = extra or {}
        # Order ids per restaurant: the seeded ones plus those this process creates.
        self.orders: dict[str, list[str]] = (
            {r.id: list(r.order_ids) for r in world.restaurants} if world else {})
        self.refresh_tokens: list[str] = []  # what logins returned (the refresh workload uses them)

    def fire(self, name: str) -> Fire:
        return getattr(self, f"_{name}")()

    # --- helpers ------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, headers, body: bytes = b"",
                    expect: int = 200, on_ok: Callable[[bytes], Outcome] | None = None) -> Outcome:
        status, reply = await self.pool.request(method, path, headers, body)
        if status != expect:
            return error_kind(status, reply)
        return on_ok(reply) if on_ok is not None else None

    def _staff_headers(self, restaurant_index: int):
        restaurant = self.world.restaurant(restaurant_index)
        person = restaurant.staff[restaurant_index // len(self.world.restaurants) % len(restaurant.staff)]
        return restaurant, [bearer(person.access_token), JSON]

    # --- scenarios ----------------------------------------------------------------------------

    def _ceiling(self) -> Fire:
        path = self.extra.get("path", "/bench/direct")

        async def fire(i: int) -> Outcome:
            return await self._call("GET", path, ())
        return fire

    def _login(self) -> Fire:
        people = [(r.id, p) for r in self.world.restaurants for p in r.people]

        async def fire(i: int) -> Outcome:
            restaurant_id, person = people[(i * self.shards + self.shard) % len(people)]
            body = json.dumps({"email": person.email, "password": self.world.password,
                               "restaurant_id": restaurant_id}).encode()

            def keep(reply: bytes) -> Outcome:
                self.refresh_tokens.append(json.loads(reply)["refresh_token"])
                return None
            return await self._call("POST", "/api/v1/auth/login", [JSON], body, on_ok=keep)
        return fire

    def _register(self) -> Fire:
        """A new account per request (a fresh address each time: a sign-up flood from many
        people, not one person retrying). Each costs an argon2id hash and a verification mail."""
        run = uuid.uuid4().hex[:8]

        async def fire(i: int) -> Outcome:
            body = json.dumps({"email": f"flood-{run}-{self.shard}-{i}@bench.posmesh.test",
                               "password": "a flood of new accounts", "full_name": "Bench Flood"})
            return await self._call("POST", "/api/v1/auth/register", [JSON], body.encode())
        return fire

    def _refresh(self) -> Fire:
        # Each refresh token is used once and replaced by its successor: a session is never
        # refreshed twice at once (that would be a reuse outside the grace window).
        free = list(self.extra["refresh_tokens"])[self.shard::self.shards]  # disjoint per process
        self.rng.shuffle(free)

        async def fire(i: int) -> Outcome:
            if not free:
                return "no idle session (generator)"
            token = free.pop()

            def rotate(reply: bytes) -> Outcome:
                free.insert(0, json.loads(reply)["refresh_token"])
                return None
            body = json.dumps({"refresh_token": token}).encode()
            return await self._call("POST", "/api/v1/auth/refresh", [JSON], body, on_ok=rotate)
        return fire

    def _verify(self) -> Fire:
        def valid(reply: bytes) -> Outcome:
            return None if json.loads(reply).get("valid") is True else "valid=false"

        async def fire(i: int) -> Outcome:
            _, headers = self._staff_headers(i)
            return await self._call("POST", "/api/v1/auth/verify", headers, b"{}", on_ok=valid)
        return fire

    def _list_active(self) -> Fire:
        async def fire(i: int) -> Outcome:
            _, headers = self._staff_headers(self.rng.randrange(1 << 20))
            return await self._call("GET", "/api/v1/orders/active", headers)
        return fire

    def _get_order(self) -> Fire:
        async def fire(i: int) -> Outcome:
            restaurant, headers = self._staff_headers(self.rng.randrange(1 << 20))
            order_id = self.rng.choice(self.orders[restaurant.id])
            return await self._call("GET", f"/api/v1/orders/{order_id}", headers)
        return fire

    def _create_order(self) -> Fire:
        async def fire(i: int) -> Outcome:
            restaurant, headers = self._staff_headers(self.rng.randrange(1 << 20))

            def keep(reply: bytes) -> Outcome:
                self.orders[restaurant.id].append(json.loads(reply)["id"])
                return None
            return await self._call("POST", "/api/v1/orders", headers,
                                    order_body(self.rng, restaurant.menu_item_ids), on_ok=keep)
        return fire

    def _till_order(self) -> Fire:
        async def fire(i: int) -> Outcome:
            restaurant, headers = self._staff_headers(self.rng.randrange(1 << 20))
            return await self._call("POST", "/api/v1/orders", headers,
                                    till_order_body(self.rng, restaurant.menu_item_ids))
        return fire

    def _order_history(self) -> Fire:
        async def fire(i: int) -> Outcome:
            _, headers = self._staff_headers(self.rng.randrange(1 << 20))
            return await self._call("GET", ORDER_HISTORY_PATH, headers)
        return fire

    def _get_menu(self) -> Fire:
        async def fire(i: int) -> Outcome:
            restaurant, headers = self._staff_headers(self.rng.randrange(1 << 20))
            return await self._call("GET", f"/api/v1/restaurants/{restaurant.id}/menu", headers)
        return fire

    def _add_items(self) -> Fire:
        """One line added to each of the given orders (at the version given)."""
        orders = self.extra["orders"]  # [(restaurant id, order id, version)]
        restaurants = {r.id: r for r in self.world.restaurants}

        async def fire(i: int) -> Outcome:
            restaurant_id, order_id, version = orders[i]
            restaurant = restaurants[restaurant_id]
            body = json.dumps({"version": version, "lines": [
                {"menu_item_id": self.rng.choice(restaurant.menu_item_ids), "quantity": 1}]})
            return await self._call("POST", f"/api/v1/orders/{order_id}/items",
                                    [bearer(restaurant.staff[0].access_token), JSON], body.encode())
        return fire

    def _orders_mix(self) -> Fire:
        list_active, get_order, create_order = self._list_active(), self._get_order(), self._create_order()

        async def fire(i: int) -> Outcome:
            slot = i % 10
            if slot < MIX_LIST:
                return await list_active(i)
            if slot < MIX_GET:
                return await get_order(i)
            return await create_order(i)
        return fire

    def _cancel(self) -> Fire:
        """Housekeeping between workloads (not measured): cancels the given open orders."""
        orders = self.extra["orders"]  # [(restaurant id, order id, version)]
        tokens = {r.id: r.staff[0].access_token for r in self.world.restaurants}

        async def fire(i: int) -> Outcome:
            restaurant_id, order_id, version = orders[i]
            body = json.dumps({"status": "CANCELLED", "version": version}).encode()
            return await self._call("POST", f"/api/v1/orders/{order_id}/status",
                                    [bearer(tokens[restaurant_id]), JSON], body)
        return fire
