"""Manager override end to end through the edge: cancelling an order the kitchen has needs an
owner or manager, or a manager's approval on the till (their PIN, for that one action on that
order by that staff session); the order event and the security log record who approved; and a
kitchen screen's own token bumps tickets but never cancels. See docs/auth.md#manager-override."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.accounts import auth_db
from tests.support.devices import pair_device, pin_login, set_pin
from tests.support.orders import add_menu_item, line, open_restaurant, place_order, read_events
from tests.support.restaurants import error_metadata, error_reason, ok

ACTION = "orders.cancelSentOrder"


@pytest.fixture(scope="module")
async def floor(edge):
    """A restaurant with PINs set, a till with the staff member signed in, and a dish."""
    party = await open_restaurant(edge)
    till = await pair_device(edge, party.manager, "TILL")
    await set_pin(edge, party.staff, "2580")
    await set_pin(edge, party.manager, "4826")
    clerk = await pin_login(edge, till, party.staff, "2580")
    dish = await add_menu_item(edge, party.manager)
    return party, till, clerk, dish


async def sent_order(edge, floor) -> dict:
    party, _, clerk, dish = floor
    order = await place_order(edge, party.staff, [line(dish)])
    return ok(await edge.post(f"/api/v1/orders/{order['id']}/status", headers=clerk.headers,
                              json={"status": "SENT_TO_KITCHEN", "version": order["version"]}))


async def approve(edge, till_session, order_id: str, approver_id: str, pin: str,
                  action: str = ACTION):
    return await edge.post("/api/v1/devices:approveAction", headers=till_session.headers, json={
        "action": action, "resource_id": order_id, "approver_user_id": approver_id,
        "approver_pin": pin})


async def cancel(edge, session, order: dict, approval: str = ""):
    body = {"status": "CANCELLED", "version": order["version"]}
    if approval:
        body["approval"] = approval
    return await edge.post(f"/api/v1/orders/{order['id']}/status", headers=session.headers,
                           json=body)


async def test_a_manager_approves_a_cancel_on_the_till_and_the_event_and_log_say_who(
        stack, edge, floor):
    party, till, clerk, _ = floor
    order = await sent_order(edge, floor)
    refused = await cancel(edge, clerk, order)
    assert refused.status_code == 403 and error_reason(refused) == "MANAGER_APPROVAL_REQUIRED"
    assert error_metadata(refused)["action"] == ACTION

    approval = ok(await approve(edge, clerk, order["id"], party.manager.user_id, "4826"))
    cancelled = ok(await cancel(edge, clerk, order, approval["approval"]))

    assert approval["approver_user_id"] == party.manager.user_id
    assert cancelled["status"] == "CANCELLED"
    events = [e for e in await read_events(stack, party.restaurant_id)
              if e.get("order", {}).get("id") == order["id"]]
    assert events[-1]["order"]["status"] == "CANCELLED"
    assert events[-1]["approved_by"] == party.manager.user_id
    assert events[-1]["actor_user_id"] == party.staff.user_id
    assert events[-1]["device_id"] == till.device_id
    for _ in range(50):  # security events are written in the background
        async with auth_db(stack) as db:
            row = await db.fetchrow(
                "SELECT user_id, details FROM security_events WHERE type = 'MANAGER_OVERRIDE' "
                "AND details->>'order_id' = $1", order["id"])
        if row is not None:
            break
        await asyncio.sleep(0.1)
    assert row is not None and row["user_id"] == party.staff.user_id
    assert f'"approver": "{party.manager.user_id}"' in row["details"]


async def test_an_approval_is_for_one_order_on_one_till_session(edge, floor):
    party, till, clerk, _ = floor
    order, other_order = await sent_order(edge, floor), await sent_order(edge, floor)
    approval = ok(await approve(edge, clerk, order["id"], party.manager.user_id, "4826"))
    second_till = await pair_device(edge, party.manager, "TILL")
    elsewhere = await pin_login(edge, second_till, party.staff, "2580")

    for session, target, token in (
            (clerk, other_order, approval["approval"]),       # another order
            (elsewhere, order, approval["approval"]),         # another till's session
            (party.staff, order, approval["approval"]),       # the person's own sign-in
            (clerk, order, clerk.access_token),               # an access token is no approval
            (clerk, order, "not-a-token")):
        reply = await cancel(edge, session, target, token)
        assert reply.status_code == 403 and error_reason(reply) == "APPROVAL_INVALID", reply.text
    # A change that fails (stale version) does not spend it.
    stale = await cancel(edge, clerk, {**order, "version": 1}, approval["approval"])
    assert error_reason(stale) == "VERSION_CONFLICT"
    ok(await cancel(edge, clerk, order, approval["approval"]))


async def test_only_a_managers_right_pin_on_a_till_approves(edge, floor):
    party, _, clerk, _ = floor
    order = await sent_order(edge, floor)

    by_staff = await approve(edge, clerk, order["id"], party.staff.user_id, "2580")
    wrong_pin = await approve(edge, clerk, order["id"], party.manager.user_id, "9513")
    unknown = await approve(edge, clerk, order["id"], party.manager.user_id, "4826",
                            action="orders.giveItAway")
    off_till = await approve(edge, party.staff, order["id"], party.manager.user_id, "4826")

    assert by_staff.status_code == 403 and error_reason(by_staff) == "APPROVER_NOT_MANAGER"
    assert wrong_pin.status_code == 401 and error_reason(wrong_pin) == "PIN_INVALID"
    assert unknown.status_code == 400 and error_reason(unknown) == "UNKNOWN_ACTION"
    assert off_till.status_code == 403 and error_reason(off_till) == "DEVICE_REQUIRED"


async def test_managers_cancel_sent_orders_and_anyone_cancels_an_open_one(edge, floor):
    party, _, clerk, dish = floor
    sent = await sent_order(edge, floor)
    still_open = await place_order(edge, party.staff, [line(dish)])

    assert ok(await cancel(edge, party.manager, sent))["status"] == "CANCELLED"
    assert ok(await cancel(edge, clerk, still_open))["status"] == "CANCELLED"


async def test_a_kitchen_screen_bumps_tickets_but_never_cancels(edge, floor):
    party, _, _, _ = floor
    screen = await pair_device(edge, party.manager, "KITCHEN_SCREEN")
    order = await sent_order(edge, floor)

    preparing = ok(await edge.post(f"/api/v1/orders/{order['id']}/status", headers=screen.headers,
                                   json={"status": "PREPARING", "version": order["version"]}))
    refused = await cancel(edge, screen, preparing)

    assert refused.status_code == 403 and error_reason(refused) == "DEVICE_FORBIDDEN"
    ready = ok(await edge.post(f"/api/v1/orders/{order['id']}/status", headers=screen.headers,
                               json={"status": "READY", "version": preparing["version"]}))
    assert ready["status"] == "READY"
