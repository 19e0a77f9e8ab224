"""Creates the bench's restaurants through the public API, with the same helpers the e2e tests
use (tests/support): an owner per restaurant (who creates it), a manager and staff hired by the
owner, a menu, and a few open orders."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import httpx

from bench.world import Person, Restaurant, World
from tests.support.mail import Mailbox, use_mailbox
from tests.support.orders import add_menu_item, line, place_order
from tests.support.restaurants import PASSWORD, Session, add_employee, create_restaurant_as_owner

MENU_ITEMS = 8
SEED_ORDERS = 10
STAFF_PER_RESTAURANT = 2


def edge_client(edge_url: str, ca_file: str) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=ca_file)
    return httpx.AsyncClient(base_url=edge_url, verify=context, http2=True, timeout=30,
                             limits=httpx.Limits(max_connections=20))


def _person(session: Session, role: str) -> Person:
    return Person(session.user_id, session.email, role, session.access_token, session.refresh_token)


async def _restaurant(edge: httpx.AsyncClient, index: int) -> Restaurant:
    owner, restaurant = await create_restaurant_as_owner(edge, name=f"Bench Bistro {index:02d}")
    manager = await add_employee(edge, owner, "manager")
    staff = [await add_employee(edge, owner, "staff") for _ in range(STAFF_PER_RESTAURANT)]
    items = [await add_menu_item(edge, manager, price_minor=350 + 50 * n, tax_rate_ppm=200_000,
                                 name=f"Dish {n}") for n in range(MENU_ITEMS)]
    orders = await asyncio.gather(*(
        place_order(edge, staff[n % len(staff)], [line(items[n % MENU_ITEMS], 1 + n % 3)])
        for n in range(SEED_ORDERS)))
    return Restaurant(restaurant["id"], _person(owner, "owner"), _person(manager, "manager"),
                      [_person(s, "staff") for s in staff], [item["id"] for item in items],
                      [order["id"] for order in orders])


async def build_world(edge_url: str, ca_file: str, mail_dir: Path, restaurants: int) -> World:
    # The helpers verify each owner and accept each invitation with the link the stack mailed.
    use_mailbox(Mailbox(mail_dir))
    # A few restaurants at a time: each hire hashes a password (argon2id, ~30 ms of CPU).
    gate = asyncio.Semaphore(4)
    async with edge_client(edge_url, ca_file) as edge:
        async def one(index: int) -> Restaurant:
            async with gate:
                return await _restaurant(edge, index)
        built = await asyncio.gather(*(one(n) for n in range(restaurants)))
    return World(list(built), PASSWORD)
