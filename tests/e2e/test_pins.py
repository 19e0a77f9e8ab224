"""Staff PIN sign-in on paired tills end to end through the edge: setting a PIN, what a PIN
refuses, where a PIN works (a till of the person's restaurant only), wrong PINs throttled per
person and per till with growing lockouts, the manager's reset and its setup code, switching user
on a till, and the idle lock. See docs/auth.md#devices-and-pins."""

from __future__ import annotations

import asyncio

import jwt
import pytest

from tests.support.devices import pair_device, pin_login, set_pin, setup_pin
from tests.support.orders import open_restaurant
from tests.support.restaurants import error_metadata, error_reason, ok


@pytest.fixture(scope="module")
async def party(edge):
    return await open_restaurant(edge)


@pytest.fixture(scope="module")
async def till(edge, party):
    return await pair_device(edge, party.manager, "TILL", "Front till")


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


async def wrong_pin(edge, device, user_id: str):
    return await edge.post("/api/v1/devices:pinLogin", headers=device.headers,
                           json={"user_id": user_id, "pin": "8642"})


async def test_a_member_signs_in_on_a_till_with_their_pin(edge, party, till):
    await set_pin(edge, party.staff, "2580")

    clerk = await pin_login(edge, till, party.staff, "2580")

    claims = claims_of(clerk.access_token)
    assert claims["sub"] == party.staff.user_id and claims["role"] == "staff"
    assert claims["device_id"] == till.device_id and claims["device_type"] == "TILL"
    assert claims["restaurant_id"] == party.restaurant_id
    assert 0 < clerk.body["expires_in"] <= clerk.body["idle_lock_seconds"]
    # The staff session is the person's: they work on the till as themselves.
    me = ok(await edge.get("/api/v1/auth/me", headers=clerk.headers))
    assert me["user"]["id"] == party.staff.user_id and me["session_id"] == clerk.session_id
    ok(await edge.get("/api/v1/orders/active", headers=clerk.headers))
    # A session on a till stays in the till's restaurant.
    switched = await edge.post("/api/v1/auth/switch-restaurant", headers=clerk.headers,
                               json={"restaurant_id": party.restaurant_id})
    assert switched.status_code == 403 and error_reason(switched) == "DEVICE_FORBIDDEN"
    people = ok(await edge.get("/api/v1/devices:pinUsers", headers=till.headers))["users"]
    assert {"user_id": party.staff.user_id, "has_pin": True}.items() <= next(
        user for user in people if user["user_id"] == party.staff.user_id).items()


@pytest.mark.parametrize("pin", ["0000", "1111", "1234", "9876", "7890", "3210", "123",
                                 "123456789", "12a4", "١٢٣٩"])
async def test_trivial_and_malformed_pins_are_refused(edge, party, pin):
    reply = await edge.post("/api/v1/pin:set", headers=party.manager.headers, json={"pin": pin})

    assert reply.status_code == 400 and error_reason(reply) == "WEAK_PIN", reply.text
    assert error_metadata(reply)["field"] == "pin"


async def test_a_pin_works_only_on_a_paired_till_of_its_restaurant(edge, party, till):
    other = await open_restaurant(edge)
    their_till = await pair_device(edge, other.manager, "TILL")
    screen = await pair_device(edge, party.manager, "KITCHEN_SCREEN")
    await set_pin(edge, party.manager, "4826")

    elsewhere = await edge.post("/api/v1/devices:pinLogin", headers=their_till.headers,
                                json={"user_id": party.manager.user_id, "pin": "4826"})
    no_device = await edge.post("/api/v1/devices:pinLogin", headers=party.owner.headers,
                                json={"user_id": party.manager.user_id, "pin": "4826"})
    kitchen = await edge.post("/api/v1/devices:pinLogin", headers=screen.headers,
                              json={"user_id": party.manager.user_id, "pin": "4826"})

    assert elsewhere.status_code == 401 and error_reason(elsewhere) == "PIN_INVALID"
    assert no_device.status_code == 403 and error_reason(no_device) == "DEVICE_REQUIRED"
    assert kitchen.status_code == 403 and error_reason(kitchen) == "DEVICE_FORBIDDEN"
    await pin_login(edge, till, party.manager, "4826")  # and on its own restaurant's till it works


async def test_wrong_pins_lock_the_person_out_for_longer_each_time(edge):
    own = await open_restaurant(edge)
    till = await pair_device(edge, own.manager, "TILL")
    await set_pin(edge, own.staff, "3917")
    for _ in range(4):
        reply = await wrong_pin(edge, till, own.staff.user_id)
        assert reply.status_code == 401 and error_reason(reply) == "PIN_INVALID", reply.text

    fifth = await wrong_pin(edge, till, own.staff.user_id)
    right_during_lockout = await edge.post("/api/v1/devices:pinLogin", headers=till.headers,
                                           json={"user_id": own.staff.user_id, "pin": "3917"})

    # The test stack's first lockout is LOGIN_LOCKOUT_BASE_SECONDS=1 (production: 30).
    assert fifth.status_code == 429 and error_reason(fifth) == "TOO_MANY_ATTEMPTS"
    assert error_metadata(fifth)["retry_after_seconds"] == "1"
    assert right_during_lockout.status_code == 429
    await asyncio.sleep(1.2)
    # While the lockout is remembered, one more wrong PIN locks again, twice as long.
    again = await wrong_pin(edge, till, own.staff.user_id)
    assert again.status_code == 429 and error_metadata(again)["retry_after_seconds"] == "2"
    await asyncio.sleep(2.2)
    await pin_login(edge, till, own.staff, "3917")


async def test_wrong_pins_on_one_till_lock_that_till_for_everyone(edge):
    own = await open_restaurant(edge)
    till = await pair_device(edge, own.manager, "TILL")
    other_till = await pair_device(edge, own.manager, "TILL")
    for member in (own.owner, own.manager, own.staff):
        await set_pin(edge, member, "5082")
    people = [own.owner.user_id, own.manager.user_id, own.staff.user_id]
    # PIN_DEVICE_MAX_FAILURES=10: four guesses at each of three people (under the per-person 5).
    replies = [await wrong_pin(edge, till, people[i % 3]) for i in range(10)]
    assert [error_reason(r) for r in replies[:9]] == ["PIN_INVALID"] * 9
    assert error_reason(replies[9]) == "TOO_MANY_ATTEMPTS"

    owner_here = await edge.post("/api/v1/devices:pinLogin", headers=till.headers,
                                 json={"user_id": own.owner.user_id, "pin": "5082"})

    assert owner_here.status_code == 429 and error_reason(owner_here) == "TOO_MANY_ATTEMPTS"
    await pin_login(edge, other_till, own.owner, "5082")  # the person is not locked out


async def test_signing_in_on_a_till_ends_the_previous_persons_session_there(edge, party):
    till = await pair_device(edge, party.manager, "TILL")
    other_till = await pair_device(edge, party.manager, "TILL")
    await set_pin(edge, party.owner, "7531")
    await set_pin(edge, party.staff, "2580")
    first = await pin_login(edge, till, party.staff, "2580")
    elsewhere = await pin_login(edge, other_till, party.staff, "2580")

    second = await pin_login(edge, till, party.owner, "7531")

    gone = await edge.get("/api/v1/orders/active", headers=first.headers)
    assert gone.status_code == 401 and error_reason(gone) == "SESSION_REVOKED"
    refresh = await edge.post("/api/v1/auth/refresh", json={"refresh_token": first.refresh_token})
    assert refresh.status_code == 401 and error_reason(refresh) == "SESSION_REVOKED"
    ok(await edge.get("/api/v1/orders/active", headers=second.headers))
    ok(await edge.get("/api/v1/orders/active", headers=elsewhere.headers))  # another till's


async def test_a_manager_resets_a_pin_and_the_employee_chooses_a_new_one_on_the_till(
        edge, party, till):
    await set_pin(edge, party.staff, "2580")
    reset = ok(await edge.post(f"/api/v1/pins/{party.staff.user_id}:reset",
                               headers=party.manager.headers, json={}))
    assert len(reset["code"]) == 8 and reset["user_id"] == party.staff.user_id

    old_pin = await edge.post("/api/v1/devices:pinLogin", headers=till.headers,
                              json={"user_id": party.staff.user_id, "pin": "2580"})
    wrong_code = await edge.post("/api/v1/devices:setupPin", headers=till.headers, json={
        "user_id": party.staff.user_id, "setup_code": "00000000", "new_pin": "1470"})
    trivial = await edge.post("/api/v1/devices:setupPin", headers=till.headers, json={
        "user_id": party.staff.user_id, "setup_code": reset["code"], "new_pin": "4444"})
    assert old_pin.status_code == 409 and error_reason(old_pin) == "PIN_NOT_SET"
    assert wrong_code.status_code == 400 and error_reason(wrong_code) == "SETUP_CODE_INVALID"
    assert trivial.status_code == 400 and error_reason(trivial) == "WEAK_PIN"

    clerk = await setup_pin(edge, till, party.staff.user_id, reset["code"], "1470")

    assert claims_of(clerk.access_token)["sub"] == party.staff.user_id
    reused = await edge.post("/api/v1/devices:setupPin", headers=till.headers, json={
        "user_id": party.staff.user_id, "setup_code": reset["code"], "new_pin": "3692"})
    assert reused.status_code == 400 and error_reason(reused) == "SETUP_CODE_INVALID"
    await pin_login(edge, till, party.staff, "1470")
    await set_pin(edge, party.staff, "2580")  # back to what the other tests here use


async def test_managers_reset_staff_pins_only_and_never_someone_elsewhere(edge, party):
    other = await open_restaurant(edge)
    owners = await edge.post(f"/api/v1/pins/{party.owner.user_id}:reset",
                             headers=party.manager.headers, json={})
    foreign = await edge.post(f"/api/v1/pins/{other.staff.user_id}:reset",
                              headers=party.owner.headers, json={})
    staff = await edge.post(f"/api/v1/pins/{party.manager.user_id}:reset",
                            headers=party.staff.headers, json={})

    assert owners.status_code == 403 and error_reason(owners) == "ROLE_FORBIDDEN"
    assert foreign.status_code == 404 and error_reason(foreign) == "USER_NOT_FOUND"
    assert staff.status_code == 403 and error_reason(staff) == "ROLE_FORBIDDEN"


async def test_a_staff_session_locks_after_the_restaurants_idle_time(edge):
    own = await open_restaurant(edge)
    till = await pair_device(edge, own.manager, "TILL")
    policy = ok(await edge.patch("/api/v1/devicePolicy", headers=own.manager.headers,
                                 json={"staff_idle_lock_seconds": 2}))
    assert policy["staff_idle_lock_seconds"] == 2
    await set_pin(edge, own.staff, "2580")
    clerk = await pin_login(edge, till, own.staff, "2580")
    assert clerk.body["idle_lock_seconds"] == 2 and clerk.body["expires_in"] <= 2

    await asyncio.sleep(1)  # in use: each refresh keeps it open for another idle period
    used = ok(await edge.post("/api/v1/auth/refresh", json={"refresh_token": clerk.refresh_token}))
    assert used["device_id"] == till.device_id and used["expires_in"] <= 2
    await asyncio.sleep(3.2)  # idle past the lock, and past the auth service's 1 s sweep

    locked = await edge.post("/api/v1/auth/refresh", json={"refresh_token": used["refresh_token"]})
    stale = await edge.get("/api/v1/orders/active",
                           headers={"authorization": f"Bearer {used['access_token']}"})

    assert locked.status_code == 401 and error_reason(locked) == "SESSION_LOCKED"
    assert error_metadata(locked)["action"] == "PIN_LOGIN"
    # Locked at once, not only when the token expires (verifiers allow a leeway past expiry).
    assert stale.status_code == 401 and error_reason(stale) == "SESSION_LOCKED"
    await pin_login(edge, till, own.staff, "2580")  # the PIN unlocks the till again


async def test_the_idle_lock_is_bounded_and_set_by_managers(edge, party):
    too_long = await edge.patch("/api/v1/devicePolicy", headers=party.manager.headers,
                                json={"staff_idle_lock_seconds": 7200})
    by_staff = await edge.patch("/api/v1/devicePolicy", headers=party.staff.headers,
                                json={"staff_idle_lock_seconds": 60})

    assert too_long.status_code == 400 and error_reason(too_long) == "INVALID_ARGUMENT"
    assert by_staff.status_code == 403 and error_reason(by_staff) == "ROLE_FORBIDDEN"
    default = ok(await edge.get("/api/v1/devicePolicy", headers=party.manager.headers))
    assert default["staff_idle_lock_seconds"] == 300


async def test_an_employee_with_no_email_gets_a_setup_code_and_works_on_the_till_with_a_pin(
        edge, party, till):
    porter = ok(await edge.post("/api/v1/employees", headers=party.manager.headers, json={
        "first_name": "Kit", "last_name": "Porter", "job_title": "kitchen porter"}))
    assert porter["state"] == "ACTIVE" and porter["user_id"] and "email" not in porter
    people = ok(await edge.get("/api/v1/devices:pinUsers", headers=till.headers))["users"]
    listed = next(user for user in people if user["user_id"] == porter["user_id"])
    assert listed["full_name"] == "Kit Porter" and listed["has_pin"] is False

    code = ok(await edge.post(f"/api/v1/pins/{porter['user_id']}:reset",
                              headers=party.manager.headers, json={}))
    kit = await setup_pin(edge, till, porter["user_id"], code["code"], "3692")

    assert kit.role == "staff" and kit.body["user"]["email"] == ""
    ok(await edge.get("/api/v1/orders/active", headers=kit.headers))
    again = await pin_login(edge, till, porter["user_id"], "3692")
    assert claims_of(again.access_token)["sub"] == porter["user_id"]
    # Deactivated, the porter's PIN stops working (their membership is gone).
    ok(await edge.delete(f"/api/v1/employees/{porter['id']}", headers=party.manager.headers))
    gone = await edge.post("/api/v1/devices:pinLogin", headers=till.headers,
                           json={"user_id": porter["user_id"], "pin": "3692"})
    assert gone.status_code == 401 and error_reason(gone) == "PIN_INVALID"
