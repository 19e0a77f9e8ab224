"""Paired devices end to end through the edge: pairing codes (single-use, 10 minutes, one
restaurant's), the device's own credential (device claims, no user, rotating refresh), what a
device's type may call, renaming and revoking, and a kitchen screen's socket closed by revoking
it. See docs/auth.md#devices-and-pins."""

from __future__ import annotations

import time

import jwt
import pytest

from tests.support.accounts import auth_db
from tests.support.devices import pair_device, pairing_code
from tests.support.orders import add_menu_item, line, open_restaurant, place_order
from tests.support.realtime import edge_socket
from tests.support.restaurants import error_reason, ok


@pytest.fixture(scope="module")
async def party(edge):
    return await open_restaurant(edge)


@pytest.fixture(scope="module")
async def other_party(edge):
    return await open_restaurant(edge)


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


async def test_a_paired_kitchen_screen_holds_a_device_token_with_no_user(edge, party):
    code = await pairing_code(edge, party.manager, "KITCHEN_SCREEN", "Pass")
    assert len(code["code"]) == 9 and code["code"][4] == "-"
    assert code["device_type"] == "KITCHEN_SCREEN" and code["restaurant_id"] == party.restaurant_id

    # Codes are read aloud and typed: case, spaces and dashes do not matter.
    typed = code["code"].lower().replace("-", " ")
    paired = ok(await edge.post("/api/v1/devices:pair", json={"code": typed}))

    device = paired["device"]
    assert device["name"] == "Pass" and device["device_type"] == "KITCHEN_SCREEN"
    assert paired["refresh_token"].startswith("pmrt_")
    claims = claims_of(paired["access_token"])
    assert claims["sub"] == "" and claims["role"] == ""
    assert claims["device_id"] == device["id"] and claims["device_type"] == "KITCHEN_SCREEN"
    assert claims["restaurant_id"] == party.restaurant_id
    listed = ok(await edge.get("/api/v1/devices", headers=party.manager.headers))
    assert device["id"] in [d["id"] for d in listed["devices"]]


async def test_a_pairing_code_works_once(edge, party):
    code = await pairing_code(edge, party.owner, "TILL")
    ok(await edge.post("/api/v1/devices:pair", json={"code": code["code"]}))

    again = await edge.post("/api/v1/devices:pair", json={"code": code["code"]})

    assert again.status_code == 409 and error_reason(again) == "PAIRING_CODE_USED"


async def test_a_pairing_code_older_than_ten_minutes_is_refused(stack, edge, party):
    code = await pairing_code(edge, party.manager, "TILL")
    async with auth_db(stack) as db:  # ten minutes pass for this code
        await db.execute("UPDATE pairing_codes SET created_at = created_at - interval '10 min', "
                         "expires_at = expires_at - interval '10 min' WHERE device_id IS NULL "
                         "AND restaurant_id = $1", party.restaurant_id)

    reply = await edge.post("/api/v1/devices:pair", json={"code": code["code"]})

    assert reply.status_code == 409 and error_reason(reply) == "PAIRING_CODE_EXPIRED"


async def test_a_code_of_another_restaurant_or_none_is_not_valid(edge, party, other_party):
    theirs = await pairing_code(edge, other_party.manager, "TILL")

    crossed = await edge.post("/api/v1/devices:pair", json={
        "code": theirs["code"], "restaurant_id": party.restaurant_id})
    made_up = await edge.post("/api/v1/devices:pair", json={"code": "ABCD-EFGH"})
    malformed = await edge.post("/api/v1/devices:pair", json={"code": "not a code"})

    for reply in (crossed, made_up, malformed):
        assert reply.status_code == 400 and error_reason(reply) == "PAIRING_CODE_INVALID", reply.text
    # The refused attempt did not spend the other restaurant's code.
    ok(await edge.post("/api/v1/devices:pair", json={"code": theirs["code"]}))


async def test_only_owners_and_managers_pair_and_manage_devices(edge, party):
    for call in (edge.post("/api/v1/devices:createPairingCode", headers=party.staff.headers,
                           json={"device_type": "TILL"}),
                 edge.get("/api/v1/devices", headers=party.staff.headers)):
        reply = await call
        assert reply.status_code == 403 and error_reason(reply) == "ROLE_FORBIDDEN", reply.text
    unknown_type = await edge.post("/api/v1/devices:createPairingCode",
                                   headers=party.manager.headers, json={"device_type": 0})
    assert unknown_type.status_code == 400 and error_reason(unknown_type) == "INVALID_ARGUMENT"


async def test_a_device_refreshes_its_own_credential_which_rotates(edge, party):
    screen = await pair_device(edge, party.manager, "KITCHEN_SCREEN")

    refreshed = ok(await edge.post("/api/v1/auth/refresh",
                                   json={"refresh_token": screen.refresh_token}))

    assert refreshed["device_id"] == screen.device_id
    assert refreshed["device_type"] == "KITCHEN_SCREEN" and refreshed["user"]["id"] == ""
    assert refreshed["restaurant_id"] == party.restaurant_id
    assert claims_of(refreshed["access_token"])["device_id"] == screen.device_id
    assert refreshed["refresh_token"] != screen.refresh_token


async def test_a_kitchen_screen_reads_and_bumps_orders_but_takes_none_and_sees_no_management(
        edge, party):
    screen = await pair_device(edge, party.manager, "KITCHEN_SCREEN")
    dish = await add_menu_item(edge, party.manager)
    order = await place_order(edge, party.staff, [line(dish)])

    active = ok(await edge.get("/api/v1/orders/active", headers=screen.headers))
    assert order["id"] in [o["id"] for o in active["orders"]]
    refused = [
        await edge.post("/api/v1/orders", headers=screen.headers, json={
            "restaurant_id": party.restaurant_id, "request_id": "k1", "order_type": "TAKEAWAY",
            "lines": [line(dish)]}),
        await edge.get("/api/v1/employees", headers=screen.headers),
        await edge.get("/api/v1/devices", headers=screen.headers),
        await edge.get("/api/v1/auth/me", headers=screen.headers),
    ]
    for reply in refused:
        assert reply.status_code == 403 and error_reason(reply) == "DEVICE_FORBIDDEN", reply.text


async def test_a_till_without_anyone_signed_in_can_do_nothing_but_the_pin_pad(edge, party):
    till = await pair_device(edge, party.manager, "TILL")

    orders = await edge.get("/api/v1/orders/active", headers=till.headers)
    people = ok(await edge.get("/api/v1/devices:pinUsers", headers=till.headers))

    assert orders.status_code == 403 and error_reason(orders) == "DEVICE_FORBIDDEN"
    assert party.staff.user_id in [user["user_id"] for user in people["users"]]
    # The PIN pad is for devices: a person's token is refused there.
    personal = await edge.get("/api/v1/devices:pinUsers", headers=party.manager.headers)
    assert personal.status_code == 403 and error_reason(personal) == "DEVICE_REQUIRED"


async def test_a_device_is_renamed_and_revoked_by_its_restaurant_only(edge, party, other_party):
    till = await pair_device(edge, party.manager, "TILL", "Front")

    renamed = ok(await edge.patch(f"/api/v1/devices/{till.device_id}",
                                  headers=party.manager.headers, json={"name": "Bar till"}))
    foreign = await edge.delete(f"/api/v1/devices/{till.device_id}",
                                headers=other_party.manager.headers)
    revoked = ok(await edge.delete(f"/api/v1/devices/{till.device_id}",
                                   headers=party.owner.headers))

    assert renamed["name"] == "Bar till"
    assert foreign.status_code == 404 and error_reason(foreign) == "DEVICE_NOT_FOUND"
    assert revoked["revoke_time"]
    used = await edge.get("/api/v1/devices:pinUsers", headers=till.headers)
    assert used.status_code == 401 and error_reason(used) == "SESSION_REVOKED"
    refresh = await edge.post("/api/v1/auth/refresh", json={"refresh_token": till.refresh_token})
    assert refresh.status_code == 401 and error_reason(refresh) == "SESSION_REVOKED"
    listed = ok(await edge.get("/api/v1/devices", headers=party.manager.headers))
    assert till.device_id not in [d["id"] for d in listed["devices"]]
    again = await edge.delete(f"/api/v1/devices/{till.device_id}", headers=party.owner.headers)
    assert again.status_code == 404 and error_reason(again) == "DEVICE_NOT_FOUND"


async def test_revoking_a_kitchen_screen_closes_its_socket_within_a_second(stack, edge):
    own = await open_restaurant(edge)
    screen = await pair_device(edge, own.manager, "KITCHEN_SCREEN")
    sock = await edge_socket(stack, "kitchen", own.restaurant_id)
    hello = await sock.authenticate(screen.access_token, "")
    assert hello["type"] == "auth_success", hello
    dish = await add_menu_item(edge, own.manager)
    await place_order(edge, own.staff, [line(dish)])
    created = await sock.next("order.created")
    assert created["restaurant_id"] == own.restaurant_id

    ok(await edge.delete(f"/api/v1/devices/{screen.device_id}", headers=own.manager.headers))
    revoked = time.monotonic()

    error = await sock.next("auth_error", timeout=1.0)
    assert time.monotonic() - revoked < 1.0
    assert error["data"]["code"] == "SESSION_REVOKED"
    assert await sock.closed(timeout=3) == (4001, "DEVICE_REVOKED")


async def test_a_kitchen_screen_opens_kitchen_sockets_only(stack, edge, party):
    screen = await pair_device(edge, party.manager, "KITCHEN_SCREEN")
    for connection_type in ("management", "pos"):
        sock = await edge_socket(stack, connection_type, party.restaurant_id)
        refused = await sock.authenticate(screen.access_token, "")
        assert refused["data"]["code"] == "DEVICE_FORBIDDEN", refused
        assert (await sock.closed())[0] == 4003
