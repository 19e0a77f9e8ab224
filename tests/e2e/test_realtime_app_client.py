"""The existing app's WebSocket client, as it actually behaves (tests/support/app_client.py), through
Envoy and both realtime processes: one live socket per session, no event twice, none lost across
forced reconnects, and an onboarding channel that tells a new user the moment they may switch."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from tests.support.app_client import AppLikeClient, Tokens
from tests.support.orders import add_menu_item, event_head, line, open_restaurant, place_order
from tests.support.realtime import token_expiring
from tests.support.restaurants import ok, register

FORCED_RECONNECTS = 20
# How each forced reconnect happens, in turn: the network drops; the app acts out a token warning
# (refresh, then one or two new sockets without closing the old); the token expires on a live
# socket (auth_error TOKEN_EXPIRED, 4001, refresh, reconnect).
SCHEDULE = ("network", "warning", "network", "expiry", "network") * 4


def refresher(edge):
    async def refresh(refresh_token: str) -> Tokens:
        body = ok(await edge.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token}))
        return Tokens(body["access_token"], body["refresh_token"])
    return refresh


async def sample_live_sockets(edge, party, counts: list[int], stop: asyncio.Event) -> None:
    """Every 100 ms: how many pos sockets the server holds for the restaurant (the app's only)."""
    while not stop.is_set():
        reply = await edge.get(f"/api/v1/restaurants/{party.restaurant_id}/presence",
                               headers=party.manager.headers)
        if reply.status_code == 200:
            counts.append(next(c["count"] for c in reply.json()["connections"]
                               if c["connection_type"] == "pos"))
        await asyncio.sleep(0.1)


async def test_the_apps_client_gets_every_event_once_across_20_forced_reconnects(stack, edge):
    party = await open_restaurant(edge)
    dish = await add_menu_item(edge, party.manager)
    staff = party.staff
    app = AppLikeClient(stack.edge_url, stack.ca_file, Tokens(staff.access_token,
                                                              staff.refresh_token),
                        staff.user_id, refresher(edge))
    first_event = await event_head(stack, party.restaurant_id)
    await app.start()
    await asyncio.wait_for(app.connected.wait(), 10)
    live_counts: list[int] = []
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(sample_live_sockets(edge, party, live_counts, stop_sampling))
    created: list[str] = []
    started = time.monotonic()
    try:
        for kind in SCHEDULE:
            order = await place_order(edge, staff, [line(dish)])
            created.append(order["id"])
            await app.wait_for(lambda: _orders(app) >= set(created))
            # The client answers the gateway's confirmation ping within a tick of a delivery.
            seen_at = max(item.at for item in app.events())
            await app.wait_for(lambda: app.last_pong_at > seen_at, timeout=5)
            await asyncio.sleep(0.1)  # the pong is on the wire before the network goes
            if kind == "network":
                app.drop_network()
            elif kind == "warning":
                await app.on_token_warning()
            else:
                app.tokens = Tokens(token_expiring(stack, app.tokens.access_token, seconds=2),
                                    app.tokens.refresh_token)
                app.drop_network()  # reconnects on the short token, which then expires
            # Orders created while the app is away.
            for _ in range(2):
                created.append((await place_order(edge, staff, [line(dish)]))["id"])
            await app.wait_for(lambda: _orders(app) >= set(created), timeout=20)
        await asyncio.sleep(0.5)  # anything late would arrive now
    finally:
        stop_sampling.set()
        await sampler
        await app.stop()

    every_event = list(range(first_event + 1, await event_head(stack, party.restaurant_id) + 1))
    delivered = Counter(int(item.id) for item in app.events())
    duplicates = {event_id: n for event_id, n in delivered.items() if n > 1}
    lost = [event_id for event_id in every_event if event_id not in delivered]
    print(f"\napp-like client: {FORCED_RECONNECTS} forced reconnects in "
          f"{time.monotonic() - started:.1f}s: sockets opened {app.sockets_opened}, "
          f"events {len(every_event)}, delivered {sum(delivered.values())}, duplicates "
          f"{len(duplicates)}, lost {len(lost)}, closes {dict(app.closes)}, most live sockets "
          f"{max(live_counts)} over {len(live_counts)} samples")
    assert len(SCHEDULE) == FORCED_RECONNECTS
    assert lost == [] and duplicates == {}
    assert sorted(delivered) == every_event
    assert max(live_counts) <= 1, "a session held two live sockets"
    assert app.closes[1000] >= 1, "the acted-out warnings replaced sockets"


async def test_an_onboarding_user_is_told_of_an_invitation_and_of_the_membership_within_a_second(
        stack, edge):
    newcomer = await register(edge, "newcomer")  # verified, no restaurant yet
    app = AppLikeClient(stack.edge_url, stack.ca_file, Tokens(newcomer.access_token,
                                                              newcomer.refresh_token),
                        newcomer.user_id, refresher(edge))
    await app.start()
    await asyncio.wait_for(app.connected.wait(), 10)
    (welcome,) = app.events("auth_success")
    assert welcome.data["scope"] == "user" and app.closes == Counter()
    party = await open_restaurant(edge)

    invited = ok(await edge.post("/api/v1/employees", headers=party.owner.headers, json={
        "first_name": "New", "last_name": "Comer", "email": newcomer.email,
        "access_role": "staff"}))
    await app.wait_for(lambda: app.events("invitation.received"), timeout=5)
    (invitation,) = app.events("invitation.received")
    assert invitation.data["restaurant_id"] == party.restaurant_id

    accepted_at = time.monotonic()
    ok(await edge.post("/api/v1/invitations:accept", headers=newcomer.headers,
                       json={"invitation_id": invitation.data["invitation_id"]}))
    await app.wait_for(lambda: app.events("membership.granted"), timeout=5)
    (granted,) = app.events("membership.granted")
    await app.stop()

    assert granted.at - accepted_at < 1.0
    assert granted.data["restaurant_id"] == party.restaurant_id
    assert granted.data["role"] == "staff" and invited["state"] == "INVITED"
    assert app.sockets_opened == 1, "the onboarding socket is never refused"


def _orders(app: AppLikeClient) -> set[str]:
    return {item.data.get("order", {}).get("id") for item in app.events("order.created")}
