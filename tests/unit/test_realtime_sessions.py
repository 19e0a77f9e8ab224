"""Sessions on the realtime gateway, in process: one live socket per session and connection type,
resuming without last_event_id from the position the client confirmed, user-scoped (onboarding)
sockets and user events. End to end, through Envoy and two processes, with a client that behaves
like the existing app: tests/e2e/test_realtime_app_client.py."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from posmesh.common.user_events import UserEvent
from services.realtime import resume
from tests.support.app_client import AppLikeClient, Tokens
from tests.support.gateway_rig import RESTAURANT, Rig


@pytest.fixture(scope="module")
async def rig():
    rig = Rig(WS_RESUME_MAX_EVENTS=20)
    await rig.start()
    yield rig
    await rig.stop()


def ids(events: list[dict]) -> list[int]:
    return [int(event["id"]) for event in events]


async def confirmed(sock, rig, *, timeout: float = 6.0) -> None:
    """Reads (answering the gateway's pings) until the gateway has confirmed what it sent."""
    deadline = time.monotonic() + timeout
    while True:
        conns = [c for c in rig.gateway.index.all if c.user_id == sock.user_id]
        if conns and all(c.confirmed >= c.delivered for c in conns) \
                and all(c.saved == c.confirmed for c in conns):
            return
        assert time.monotonic() < deadline, [(c.delivered, c.confirmed, c.saved) for c in conns]
        try:
            await sock.next("no-such-type", timeout=0.1)
        except TimeoutError:
            pass


async def app_socket(rig, token: str, user: str, kind: str = "pos", **options):
    sock = await rig.open(kind, **options)
    sock.user_id = user
    hello = await sock.authenticate(token, user)
    assert hello["type"] == "auth_success", hello
    return sock


# --- one live socket per session and connection type --------------------------------------------

async def test_a_second_socket_of_the_session_replaces_the_first_with_a_normal_closure(rig):
    sid, user = uuid.uuid4().hex, "u-twice"
    first = await app_socket(rig, rig.token(user=user, sid=sid), user)
    replaced_before = rig.gateway.metrics.replaced

    second = await app_socket(rig, rig.token(user=user, sid=sid), user)

    notice = await first.next("replaced")
    assert notice["data"]["code"] == "REPLACED" and notice["data"]["close_code"] == 1000
    assert await first.closed() == (1000, "REPLACED")
    assert rig.gateway.metrics.replaced == replaced_before + 1
    assert (await second.ping())["type"] == "pong"
    await second.close()


async def test_the_replaced_socket_gets_no_event_the_new_one_gets(rig):
    sid, user = uuid.uuid4().hex, "u-no-double"
    first = await app_socket(rig, rig.token(user=user, sid=sid), user)
    (before,) = rig.orders.commit(RESTAURANT)
    assert ids(await first.events(1)) == [before]
    await confirmed(first, rig)

    second = await app_socket(rig, rig.token(user=user, sid=sid), user)
    after = rig.orders.commit(RESTAURANT, 2)

    assert ids(await second.events(2)) == after
    await first.closed()
    assert [m for m in first.received if m["type"] == "order.created"
            and int(m["id"]) in after] == []
    await second.close()


async def test_other_sessions_and_other_connection_types_are_not_replaced(rig):
    user = "u-many"
    sid = uuid.uuid4().hex
    till = await app_socket(rig, rig.token(user=user, sid=sid), user, "pos")
    kitchen = await app_socket(rig, rig.token(user=user, sid=sid), user, "kitchen")
    tablet = await app_socket(rig, rig.token(user=user), user, "pos")  # another session

    for sock in (till, kitchen, tablet):
        assert (await sock.ping())["type"] == "pong"
        await sock.close()


async def test_the_cap_per_session_is_a_setting():
    rig = Rig(WS_MAX_SOCKETS_PER_SESSION=2)
    await rig.start()
    try:
        sid, user = uuid.uuid4().hex, "u-cap"
        socks = [await app_socket(rig, rig.token(user=user, sid=sid), user) for _ in range(3)]
        assert await socks[0].closed() == (1000, "REPLACED")
        for sock in socks[1:]:
            assert (await sock.ping())["type"] == "pong"
            await sock.close()
    finally:
        await rig.stop()


# --- resuming without last_event_id --------------------------------------------------------------

async def test_a_replacement_resumes_where_the_replaced_socket_got_with_no_gap_or_repeat(rig):
    sid, user = uuid.uuid4().hex, "u-resume"
    first = await app_socket(rig, rig.token(user=user, sid=sid), user)
    seen = rig.orders.commit(RESTAURANT, 2)
    assert ids(await first.events(2)) == seen
    # No confirmation ping answered yet for the last one: the completed close confirms it.
    second_opening = asyncio.create_task(app_socket(rig, rig.token(user=user, sid=sid), user))
    assert await first.closed() == (1000, "REPLACED")
    second = await second_opening
    later = rig.orders.commit(RESTAURANT, 2)

    assert ids(await second.events(2)) == later
    await second.close()


async def test_after_a_dropped_connection_the_next_socket_gets_the_gap_once(rig):
    sid, user = uuid.uuid4().hex, "u-drop"
    first = await app_socket(rig, rig.token(user=user, sid=sid), user)
    seen = rig.orders.commit(RESTAURANT, 3)
    assert ids(await first.events(3)) == seen
    await confirmed(first, rig)
    first.ws.transport.abort()  # the network goes away: no close handshake
    await asyncio.sleep(0.2)
    missed = rig.orders.commit(RESTAURANT, 3)

    second = await app_socket(rig, rig.token(user=user, sid=sid), user)
    live = rig.orders.commit(RESTAURANT)

    assert ids(await second.events(4)) == missed + live
    assert rig.gateway.metrics.resumed >= 1
    await second.close()


async def test_events_sent_after_the_last_confirmation_are_sent_again_never_lost(rig):
    sid, user = uuid.uuid4().hex, "u-unconfirmed"
    first = await app_socket(rig, rig.token(user=user, sid=sid), user)
    seen = rig.orders.commit(RESTAURANT)
    assert ids(await first.events(1)) == seen
    await confirmed(first, rig)
    unconfirmed = rig.orders.commit(RESTAURANT)
    assert ids(await first.events(1)) == unconfirmed
    first.ws.transport.abort()  # before any ping could confirm it
    await asyncio.sleep(0.2)

    second = await app_socket(rig, rig.token(user=user, sid=sid), user)

    # At least once: the event that may have died in flight comes again, with its id.
    assert ids(await second.events(1)) == unconfirmed
    await second.close()


async def test_an_explicit_last_event_id_wins_over_the_stored_position(rig):
    sid, user = uuid.uuid4().hex, "u-explicit"
    first = await app_socket(rig, rig.token(user=user, sid=sid), user)
    seen = rig.orders.commit(RESTAURANT, 3)
    assert ids(await first.events(3)) == seen
    await confirmed(first, rig)
    await first.close()

    second = await rig.open()
    hello = await second.authenticate(rig.token(user=user, sid=sid), user,
                                      last_event_id=str(seen[0]))
    assert hello["type"] == "auth_success"
    assert ids(await second.events(2)) == seen[1:]
    await second.close()


async def test_a_session_further_behind_than_the_window_is_told_to_resync(rig):
    sid, user = uuid.uuid4().hex, "u-far"
    first = await app_socket(rig, rig.token(user=user, sid=sid), user)
    await confirmed(first, rig)
    await first.close()
    await asyncio.sleep(0.2)
    rig.orders.commit(RESTAURANT, 25)  # WS_RESUME_MAX_EVENTS is 20 in this rig

    second = await app_socket(rig, rig.token(user=user, sid=sid), user)
    assert (await second.next("resync_required"))["data"]["reason"]
    (live,) = rig.orders.commit(RESTAURANT)
    assert ids(await second.events(1)) == [live]
    await second.close()


def test_a_stored_position_is_used_only_within_the_window_and_for_the_same_restaurant():
    point = resume.ResumePoint("r-1", 40, confirmed_at=1000.0)
    decide = resume.decide

    assert decide(point, restaurant_id="r-1", head=45, now=1100.0, window_seconds=900,
                  max_events=500) == resume.ResumeDecision(40, False, True)
    assert decide(point, restaurant_id="r-1", head=45, now=2000.0, window_seconds=900,
                  max_events=500) == resume.ResumeDecision(None, True, False)
    assert decide(point, restaurant_id="r-1", head=600, now=1100.0, window_seconds=900,
                  max_events=500) == resume.ResumeDecision(None, True, False)
    assert decide(point, restaurant_id="r-2", head=45, now=1100.0, window_seconds=900,
                  max_events=500) == resume.ResumeDecision(None, False, False)
    assert decide(None, restaurant_id="r-1", head=45, now=1100.0, window_seconds=900,
                  max_events=500) == resume.ResumeDecision(None, False, False)


# --- user-scoped sockets and user events ---------------------------------------------------------

async def test_the_onboarding_path_is_a_user_scoped_socket_that_gets_the_users_events(rig):
    sock = await rig.open("pos", "onboarding")
    hello = await sock.authenticate(rig.token(user="u-new", restaurant=""), "u-new")
    assert hello["type"] == "auth_success"
    assert hello["data"]["scope"] == "user" and hello["data"]["restaurant_id"] is None

    rig.gateway.on_user_event("u-1-0", UserEvent("u-new", "membership.granted",
                                                 {"restaurant_id": "r-9", "role": "staff"}))
    rig.gateway.on_user_event("u-2-0", UserEvent("someone-else", "membership.granted", {}))
    rig.orders.commit(RESTAURANT)  # restaurant events never reach a user-scoped socket

    granted = await sock.next("membership.granted")
    assert granted["id"] == "u-1-0" and granted["data"]["restaurant_id"] == "r-9"
    assert (await sock.ping())["type"] == "pong"
    assert [m["type"] for m in sock.received if "." in m["type"]] == ["membership.granted"]
    await sock.close()


async def test_a_token_without_a_restaurant_is_accepted_as_user_scoped_on_any_path(rig):
    sock = await rig.open("pos", RESTAURANT)
    hello = await sock.authenticate(rig.token(user="u-onboarding", restaurant=""), "u-onboarding")

    assert hello["type"] == "auth_success" and hello["data"]["scope"] == "user"
    await sock.close()


async def test_onboarding_still_refuses_a_bad_token(rig):
    sock = await rig.open("pos", "onboarding")
    error = await sock.authenticate("not-a-token", "u-x")

    assert error["data"]["code"] == "TOKEN_INVALID"
    assert (await sock.closed())[0] == 4001


# --- the token warning, with a client that reconnects on it instead of sending reauth ------------

@pytest.mark.parametrize("warning_to", ["reauth-clients", "all"])
async def test_the_apps_client_loses_and_repeats_nothing_around_token_expiry(rig, monkeypatch,
                                                                            warning_to):
    """Measures both settings of WS_TOKEN_WARNING_TO with the app's client: warned, it refreshes
    and opens one or two sockets without closing the old; not warned, it is closed at expiry
    (4001), refreshes and reconnects."""
    monkeypatch.setattr(rig.settings, "ws_token_warning_to", warning_to)
    sid, user = uuid.uuid4().hex, f"u-expiry-{warning_to}"

    async def refresh(_: str) -> Tokens:
        return Tokens(rig.token(user=user, sid=sid, ttl=600), "refresh")

    app = AppLikeClient(rig.url, None, Tokens(rig.token(user=user, sid=sid, ttl=3), "refresh"),
                        user, refresh, double_reconnect_chance=1.0)
    first = rig.orders.commit(RESTAURANT, 0)
    head = len(rig.orders.history[RESTAURANT])
    await app.start()
    await asyncio.wait_for(app.connected.wait(), 5)
    started = time.monotonic()
    while time.monotonic() - started < 6.0:  # across the expiry at 3 s
        rig.orders.commit(RESTAURANT)
        await asyncio.sleep(0.1)
    expected = list(range(head + 1, len(rig.orders.history[RESTAURANT]) + 1))
    await app.wait_for(lambda: {int(e.id) for e in app.events()} >= set(expected), timeout=10)
    await app.stop()

    delivered = [int(e.id) for e in app.events()]
    arrivals = sorted(e.at for e in app.events())
    longest_gap = max(b - a for a, b in zip(arrivals, arrivals[1:]))
    print(f"\nWS_TOKEN_WARNING_TO={warning_to}: sockets opened {app.sockets_opened}, events "
          f"{len(expected)}, delivered {len(delivered)}, duplicates "
          f"{len(delivered) - len(set(delivered))}, lost {len(set(expected) - set(delivered))}, "
          f"closes {dict(app.closes)}, longest silence {longest_gap * 1000:.0f} ms")
    assert first == []
    assert sorted(delivered) == expected, "each event exactly once"
    if warning_to == "all":
        assert app.sockets_opened == 3 and app.closes[1000] >= 2  # two replaced, one live
    else:
        assert app.sockets_opened == 2 and app.closes[4001] == 1
