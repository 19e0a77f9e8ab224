"""Realtime end to end, connecting: the existing React Native app's protocol through Envoy over
TLS against the real stack (two realtime processes, real auth tokens, real orders), and every way
a connection can be refused or misbehave. See docs/realtime.md."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.exceptions import InvalidStatus

from tests.support.orders import add_menu_item, line, open_restaurant, place_order
from tests.support.realtime import edge_socket, new_session, signed_in, token_expiring

ALLOWED_ORIGIN = "capacitor://localhost"


@pytest.fixture(scope="module")
async def party(edge):
    return await open_restaurant(edge)


@pytest.fixture(scope="module")
async def other_party(edge):
    return await open_restaurant(edge)


@pytest.fixture(scope="module")
async def dish(edge, party):
    return await add_menu_item(edge, party.manager, price_minor=950)


async def test_the_existing_app_connects_pings_and_receives_an_order_created_through_the_api(
        stack, edge, party, dish):
    # The app's URL carries ?token=&user_id= from older builds: ignored, never trusted.
    sock = await edge_socket(stack, "pos", party.restaurant_id,
                             query="token=not-a-token&user_id=0")
    hello = await sock.authenticate(party.staff.access_token, party.staff.user_id)
    assert hello["type"] == "auth_success"
    assert set(hello) == {"id", "type", "data", "restaurant_id", "timestamp"}
    assert hello["data"]["user_id"] == party.staff.user_id
    assert hello["data"]["restaurant_id"] == party.restaurant_id
    assert hello["data"]["role"] == "staff"
    assert hello["data"]["connection_id"]
    assert 0 < hello["data"]["expires_in"] <= 900

    pong = await sock.ping()
    assert pong["type"] == "pong" and pong["restaurant_id"] == party.restaurant_id

    order = await place_order(edge, party.staff, [line(dish, 2)], notes="window seat")
    created = await sock.next("order.created")
    assert created["restaurant_id"] == party.restaurant_id
    assert created["id"].isdigit()
    assert created["timestamp"].endswith("Z")
    sent = created["data"]["order"]
    assert sent["id"] == order["id"]
    assert sent["status"] == order["status"] == "OPEN"
    assert sent["total_minor"] == order["total_minor"]
    assert sent["lines"][0]["menu_item_id"] == dish["id"]
    assert sent["notes"] == "window seat"
    await sock.close()


async def test_authenticate_fields_under_data_on_the_legacy_path(stack, party):
    sock = await edge_socket(stack, "kitchen", party.restaurant_id, prefix="/api/v1/websocket/ws")
    hello = await sock.authenticate(party.staff.access_token, party.staff.user_id, under_data=True)
    assert hello["type"] == "auth_success"
    await sock.close()


async def test_a_client_that_can_set_headers_authenticates_with_bearer(stack, party):
    sock = await edge_socket(stack, "kitchen", party.restaurant_id,
                             headers={"Authorization": f"Bearer {party.staff.access_token}"})
    hello = await sock.next("auth_success", "auth_error")
    assert hello["type"] == "auth_success" and hello["data"]["user_id"] == party.staff.user_id
    assert (await sock.ping())["type"] == "pong"
    await sock.close()


async def test_token_expired_warning_then_reauth_keeps_the_connection(stack, edge, party, dish):
    short = token_expiring(stack, party.staff.access_token, seconds=4)
    sock = await edge_socket(stack, "pos", party.restaurant_id)
    hello = await sock.authenticate(short, party.staff.user_id, capabilities=["reauth"])
    assert hello["type"] == "auth_success" and hello["data"]["expires_in"] <= 4
    # Within the warning lead already: the warning follows auth_success at once.
    warning = await sock.next("token_expired", timeout=3)
    assert 0 < warning["data"]["seconds_until_expiry"] <= 4
    renewed = await sock.reauth(party.staff.access_token)
    assert renewed["type"] == "auth_success" and renewed["data"]["expires_in"] > 60
    await asyncio.sleep(4.5)  # past the first token's expiry
    assert (await sock.ping())["type"] == "pong"
    await place_order(edge, party.staff, [line(dish)])
    assert (await sock.next("order.created"))["data"]["order"]["restaurant_id"] == \
        party.restaurant_id
    await sock.close()


async def test_without_reauth_the_socket_is_closed_with_4001_at_expiry(stack, party):
    sock = await edge_socket(stack, "pos", party.restaurant_id)
    hello = await sock.authenticate(token_expiring(stack, party.staff.access_token, seconds=3),
                                    party.staff.user_id)
    assert hello["type"] == "auth_success"
    assert (await sock.next("token_expired"))["data"]["seconds_until_expiry"] <= 3
    error = await sock.next("auth_error", timeout=5)
    assert error["data"]["code"] == "TOKEN_EXPIRED"
    assert error["data"]["action"] == "REFRESH_TOKEN"
    assert (await sock.closed())[0] == 4001


async def test_no_authenticate_in_time_is_auth_error_auth_timeout_then_4001(stack, party):
    sock = await edge_socket(stack, "pos", party.restaurant_id)
    started = time.monotonic()
    error = await sock.next("auth_error", timeout=10)
    assert error["data"]["code"] == "AUTH_TIMEOUT"
    assert await sock.closed() == (4001, "AUTH_TIMEOUT")
    assert 1.5 < time.monotonic() - started < 8


async def test_an_expired_token_gets_token_expired_and_refresh_token(stack, party):
    expired = token_expiring(stack, party.staff.access_token, seconds=-30)
    sock = await edge_socket(stack, "pos", party.restaurant_id)
    error = await sock.authenticate(expired, party.staff.user_id)
    assert error["type"] == "auth_error"
    assert error["data"]["code"] == "TOKEN_EXPIRED"
    assert error["data"]["action"] == "REFRESH_TOKEN"
    assert error["data"]["retry_after_ms"] == 0
    assert await sock.closed() == (4001, "TOKEN_EXPIRED")


async def test_an_app_refreshing_its_token_is_not_locked_out_by_its_expired_reconnects(stack, party):
    # Well over the per-address budget of plain attempts would be needed to trip the window of
    # expired-token reconnects; the next connection with a fresh token still gets in.
    expired = token_expiring(stack, party.staff.access_token, seconds=-30)
    for _ in range(10):
        sock = await edge_socket(stack, "pos", party.restaurant_id)
        assert (await sock.authenticate(expired, party.staff.user_id))["data"]["code"] == \
            "TOKEN_EXPIRED"
        await sock.closed()
    sock = await signed_in(stack, party.staff)
    await sock.close()


async def test_a_garbage_token_is_token_invalid_4001(stack, party):
    sock = await edge_socket(stack, "pos", party.restaurant_id)
    error = await sock.authenticate("eyJhbGciOiJub25lIn0.e30.", party.staff.user_id)
    assert error["data"]["code"] == "TOKEN_INVALID"
    assert (await sock.closed())[0] == 4001


async def test_a_token_for_another_restaurant_is_closed_with_4003(stack, party, other_party):
    sock = await edge_socket(stack, "pos", party.restaurant_id)
    error = await sock.authenticate(other_party.staff.access_token, other_party.staff.user_id)
    assert error["data"]["code"] == "TENANT_MISMATCH"
    assert error["data"]["action"] == "SWITCH_RESTAURANT"
    assert await sock.closed() == (4003, "TENANT_MISMATCH")


async def test_a_user_id_that_is_not_the_tokens_user_is_refused_with_4001(stack, party):
    sock = await edge_socket(stack, "pos", party.restaurant_id)
    error = await sock.authenticate(party.staff.access_token, "other-user")
    assert error["type"] == "auth_error" and error["data"]["code"] == "USER_ID_MISMATCH"
    assert error["data"]["action"] == "LOGIN"
    assert (await sock.closed())[0] == 4001
    fine = await signed_in(stack, party.staff)  # the service is unaffected
    await fine.close()


@pytest.mark.parametrize("sent_user_id", ["0", 0, "", "00000000-0000-0000-0000-000000000000",
                                          None])
async def test_a_missing_or_zero_user_id_is_taken_from_the_token(stack, party, sent_user_id):
    sock = await edge_socket(stack, "pos", party.restaurant_id)
    if sent_user_id is None:  # no user_id field at all
        await sock.send({"type": "authenticate", "token": party.staff.access_token,
                         "restaurant_id": party.restaurant_id, "timestamp": 1})
        welcome = await sock.next("auth_error", "auth_success")
    else:
        welcome = await sock.authenticate(party.staff.access_token, sent_user_id)
    assert welcome["type"] == "auth_success", welcome
    assert welcome["data"]["user_id"] == party.staff.user_id
    assert welcome["data"]["restaurant_id"] == party.restaurant_id
    await sock.close()


async def test_a_browser_on_an_allowed_origin_authenticates_with_only_a_token(stack, party):
    sock = await edge_socket(stack, "kitchen", party.restaurant_id,
                             origin="capacitor://localhost")
    await sock.send({"type": "authenticate", "token": party.staff.access_token})
    welcome = await sock.next("auth_error", "auth_success")
    assert welcome["type"] == "auth_success", welcome
    assert welcome["data"]["user_id"] == party.staff.user_id
    await sock.close()


async def test_management_sockets_are_for_owners_and_managers(stack, party):
    staff = await edge_socket(stack, "management", party.restaurant_id)
    error = await staff.authenticate(party.staff.access_token, party.staff.user_id)
    assert error["data"]["code"] == "ROLE_FORBIDDEN"
    assert (await staff.closed())[0] == 4003
    manager = await signed_in(stack, party.manager, "management")
    await manager.close()


async def test_logout_closes_the_sessions_sockets_within_a_second(stack, edge):
    own = await open_restaurant(edge)  # its own party: this logs a session out
    sock = await signed_in(stack, own.staff, "kitchen")
    bystander = await signed_in(stack, own.manager, "kitchen")
    reply = await edge.post("/api/v1/auth/logout", headers=own.staff.headers, json={})
    assert reply.status_code == 200, reply.text
    logged_out = time.monotonic()
    # The auth_error and the close frame right behind it: what the app acts on. (The TCP
    # teardown through Envoy can take Envoy's delayed-close second longer.)
    error = await sock.next("auth_error", timeout=1.0)
    assert time.monotonic() - logged_out < 1.0
    assert error["data"]["code"] == "SESSION_REVOKED" and error["data"]["action"] == "LOGIN"
    assert await sock.closed(timeout=3) == (4001, "LOGOUT")
    assert (await bystander.ping())["type"] == "pong"
    # The revoked token cannot come back either.
    again = await edge_socket(stack, "kitchen", own.restaurant_id)
    refused = await again.authenticate(own.staff.access_token, own.staff.user_id)
    assert refused["data"]["code"] == "SESSION_REVOKED"
    await bystander.close()


async def test_deactivating_an_employee_closes_their_sockets_with_4003(stack, edge):
    own = await open_restaurant(edge)
    sock = await signed_in(stack, own.staff, "kitchen")
    listed = await edge.get("/api/v1/employees", headers=own.manager.headers)
    assert listed.status_code == 200, listed.text
    employee = next(e for e in listed.json()["employees"] if e["user_id"] == own.staff.user_id)
    removed = await edge.delete(f"/api/v1/employees/{employee['id']}", headers=own.manager.headers)
    assert removed.status_code == 200, removed.text
    changed = time.monotonic()
    error = await sock.next("auth_error", timeout=1.0)
    assert time.monotonic() - changed < 1.0
    assert error["data"]["code"] == "MEMBERSHIP_REVOKED"
    code, reason = await sock.closed()
    assert code == 4003 and reason
    # Coming back with the same token is refused the same way.
    again = await edge_socket(stack, "kitchen", own.restaurant_id)
    refused = await again.authenticate(own.staff.access_token, own.staff.user_id)
    assert refused["data"]["code"] == "MEMBERSHIP_REVOKED"
    assert (await again.closed())[0] == 4003


async def test_a_browser_origin_not_on_the_allowlist_is_refused_at_the_upgrade(stack, party):
    with pytest.raises(InvalidStatus) as refused:
        await edge_socket(stack, "pos", party.restaurant_id, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body)["code"] == "ORIGIN_NOT_ALLOWED"
    allowed = await edge_socket(stack, "pos", party.restaurant_id, origin=ALLOWED_ORIGIN)
    assert (await allowed.authenticate(party.staff.access_token, party.staff.user_id))[
        "type"] == "auth_success"
    await allowed.close()


async def test_garbage_binary_unknown_and_invalid_utf8_frames_never_hurt_the_service(
        stack, edge, party):
    bystander = await signed_in(stack, party.manager, "kitchen")
    sock = await signed_in(stack, party.staff)
    for raw, code in (("{not json", "INVALID_JSON"), (b"\x00\x01\x02", "BINARY_NOT_SUPPORTED"),
                      ('{"type": "drop_tables"}', "UNKNOWN_TYPE"), ("42", "INVALID_MESSAGE"),
                      ('{"type": "ping", "data": "x"}', "INVALID_MESSAGE")):
        await sock.send_raw(raw)
        error = await sock.next("error")
        assert error["data"]["code"] == code and error["data"]["message"]
    assert (await sock.ping())["type"] == "pong"

    sock.ws.protocol.send_text(b'{"type": "ping", "bad": "\xc3\x28"}')  # not UTF-8
    sock.ws.send_data()
    assert (await sock.closed())[0] == 1007
    assert (await bystander.ping())["type"] == "pong"
    assert (await edge.get("/api/v1/health")).json()["status"] == "SERVING"
    await bystander.close()


async def test_an_oversized_frame_is_closed_with_1009(stack, party):
    sock = await signed_in(stack, party.staff)
    await sock.send_raw(json.dumps({"type": "ping", "data": {"pad": "x" * 70_000}}))
    assert (await sock.closed())[0] == 1009


async def test_a_message_flood_is_throttled_then_closed_and_others_are_unaffected(stack, party):
    bystander = await signed_in(stack, party.manager, "kitchen")
    flooder = await signed_in(stack, party.staff)
    garbage = await signed_in(stack, party.owner)
    ping = json.dumps({"type": "ping", "data": {}})
    # The server may close mid-way: later sends fail, which is the point.
    await asyncio.gather(*(flooder.send_raw(ping) for _ in range(600)),
                         *(garbage.send_raw("garbage") for _ in range(60)), return_exceptions=True)
    assert await flooder.closed() == (1008, "MESSAGE_FLOOD")
    assert any(m["data"]["code"] == "RATE_LIMITED" for m in flooder.messages("error"))
    assert await garbage.closed() == (1008, "TOO_MANY_INVALID_MESSAGES")
    started = time.monotonic()
    assert (await bystander.ping())["type"] == "pong"
    assert time.monotonic() - started < 1.0
    await bystander.close()


async def test_a_users_sockets_over_the_cap_are_refused_with_4029(stack, edge):
    own = await open_restaurant(edge)
    cap = stack.settings.ws_max_connections_per_user
    devices = await asyncio.gather(*(new_session(edge, own.staff) for _ in range(cap + 1)))
    socks = await asyncio.gather(*(signed_in(stack, device, "kitchen")
                                   for device in devices[:cap]))
    extra = await edge_socket(stack, "kitchen", own.restaurant_id)
    error = await extra.authenticate(devices[cap].access_token, own.staff.user_id)
    assert error["data"]["code"] == "TOO_MANY_CONNECTIONS"
    assert error["data"]["retry_after_ms"] > 0
    assert await extra.closed() == (4029, "TOO_MANY_CONNECTIONS")
    await asyncio.gather(*(sock.close() for sock in socks))


async def test_presence_counts_screens_per_type_across_both_processes(stack, edge):
    own = await open_restaurant(edge)
    kitchens = [await signed_in(stack, await new_session(edge, own.staff), "kitchen")
                for _ in range(3)]
    till = await signed_in(stack, own.staff, "pos")
    reply = await edge.get(f"/api/v1/restaurants/{own.restaurant_id}/presence",
                           headers=own.manager.headers)
    assert reply.status_code == 200, reply.text
    counts = {c["connection_type"]: c["count"] for c in reply.json()["connections"]}
    assert counts == {"pos": 1, "kitchen": 3, "management": 0}
    denied = await edge.get(f"/api/v1/restaurants/{own.restaurant_id}/presence",
                            headers=own.staff.headers)
    assert denied.status_code == 403
    for sock in (*kitchens, till):
        await sock.close()
    await asyncio.sleep(0.3)
    reply = await edge.get(f"/api/v1/restaurants/{own.restaurant_id}/presence",
                           headers=own.manager.headers)
    assert all(c["count"] == 0 for c in reply.json()["connections"])
