"""Restaurants over HTTPS through Envoy: create (the caller becomes owner), switch into it, list,
get, update with optimistic concurrency, and the 400s for bad fields."""

from __future__ import annotations

import asyncio
import secrets

import httpx
import pytest

from tests.support.restaurants import (
    add_employee,
    create_restaurant_as_owner,
    error_metadata,
    error_reason,
    ok,
    register,
    switch_restaurant,
    unique_email,
)



async def test_a_new_restaurant_makes_its_creator_the_owner_once_they_switch_into_it(edge: httpx.AsyncClient):
    creator = await register(edge, "founder")
    assert creator.restaurant_id == ""
    name = f"Chez {secrets.token_hex(3)}"
    restaurant = ok(await edge.post("/api/v1/restaurants", headers=creator.headers, json={
        "name": name, "timezone": "Europe/Paris", "currency": "eur",
        "address": {"line1": "1 Rue de Rivoli", "city": "Paris", "country": "fr"}}))
    assert restaurant["role"] == "owner" and restaurant["version"] == 1
    assert (restaurant["currency"], restaurant["currency_minor_units"]) == ("EUR", 2)
    assert restaurant["address"]["country"] == "FR"

    # The token in hand predates the restaurant: no context until the client switches.
    before = await edge.get("/api/v1/employees", headers=creator.headers)
    assert before.status_code == 403 and error_reason(before) == "NO_RESTAURANT_CONTEXT"
    assert "switch-restaurant" in before.json()["message"]

    owner = await switch_restaurant(edge, creator, restaurant["id"])
    assert (owner.restaurant_id, owner.role) == (restaurant["id"], "owner")
    employees = ok(await edge.get("/api/v1/employees", headers=owner.headers))["employees"]
    assert [(e["user_id"], e["access_role"], e["email"]) for e in employees] == [
        (creator.user_id, "owner", creator.email)]
    me = ok(await edge.get("/api/v1/auth/me", headers=owner.headers))
    assert {"restaurant_id": restaurant["id"], "restaurant_name": name, "role": "owner"} in [
        {key: m[key] for key in ("restaurant_id", "restaurant_name", "role")} for m in me["memberships"]]


async def test_a_user_lists_only_the_restaurants_they_work_at_page_by_page(edge):
    owner, first = await create_restaurant_as_owner(edge)
    created = [first["id"]]
    for _ in range(2):
        # Switching into the new restaurant rotates the session: carry the new one forward.
        owner, more = await create_restaurant_as_owner(edge, owner=owner)
        created.append(more["id"])
    await create_restaurant_as_owner(edge)  # someone else's

    seen, token = [], ""
    while True:
        page = ok(await edge.get("/api/v1/restaurants", headers=owner.headers,
                                 params={"page_size": 2, "page_token": token}))
        assert len(page["restaurants"]) <= 2
        seen.extend(r["id"] for r in page["restaurants"])
        token = page["next_page_token"]
        if not token:
            break
    assert seen == created


async def test_a_restaurant_the_caller_does_not_work_at_is_not_found_and_reveals_nothing(edge):
    owner, restaurant = await create_restaurant_as_owner(edge, name=f"Secret {secrets.token_hex(4)}")
    outsider = await register(edge, "outsider")
    for session in (outsider, (await create_restaurant_as_owner(edge))[0]):
        response = await edge.get(f"/api/v1/restaurants/{restaurant['id']}", headers=session.headers)
        assert response.status_code == 404 and error_reason(response) == "RESTAURANT_NOT_FOUND"
        assert restaurant["name"] not in response.text
    mine = ok(await edge.get(f"/api/v1/restaurants/{restaurant['id']}", headers=owner.headers))
    assert mine["name"] == restaurant["name"]


async def test_staff_can_read_their_restaurant_with_their_own_role(edge):
    owner, restaurant = await create_restaurant_as_owner(edge)
    staff = await add_employee(edge, owner, "staff")
    seen = ok(await edge.get(f"/api/v1/restaurants/{restaurant['id']}", headers=staff.headers))
    assert seen["role"] == "staff"
    listed = ok(await edge.get("/api/v1/restaurants", headers=staff.headers))["restaurants"]
    assert [(r["id"], r["role"]) for r in listed] == [(restaurant["id"], "staff")]


async def test_a_stale_restaurant_update_is_a_409_version_conflict_and_changes_nothing(edge):
    owner, restaurant = await create_restaurant_as_owner(edge)
    path = f"/api/v1/restaurants/{restaurant['id']}"
    updated = ok(await edge.patch(path, headers=owner.headers,
                                  json={"name": "Renamed Bistro", "version": 1}))
    assert (updated["name"], updated["version"]) == ("Renamed Bistro", 2)
    assert updated["timezone"] == restaurant["timezone"]  # absent fields keep their values

    stale = await edge.patch(path, headers=owner.headers, json={"name": "Lost Update", "version": 1})
    assert stale.status_code == 409 and error_reason(stale) == "VERSION_CONFLICT"
    assert error_metadata(stale).items() >= {"expected_version": "1", "current_version": "2"}.items()
    current = ok(await edge.get(path, headers=owner.headers))
    assert (current["name"], current["version"]) == ("Renamed Bistro", 2)

    unversioned = await edge.patch(path, headers=owner.headers, json={"name": "No version"})
    assert unversioned.status_code == 400 and error_reason(unversioned) == "VERSION_REQUIRED"


async def test_a_rename_reaches_every_members_view_of_their_memberships(edge):
    owner, restaurant = await create_restaurant_as_owner(edge)
    staff = await add_employee(edge, owner, "staff")
    new_name = f"Renamed {secrets.token_hex(3)}"
    ok(await edge.patch(f"/api/v1/restaurants/{restaurant['id']}", headers=owner.headers,
                        json={"name": new_name, "version": 1}))
    me = ok(await edge.get("/api/v1/auth/me", headers=staff.headers))
    assert [m["restaurant_name"] for m in me["memberships"]] == [new_name]


async def test_an_update_mask_changes_exactly_the_named_address_field(edge):
    owner, restaurant = await create_restaurant_as_owner(edge)
    updated = ok(await edge.patch(
        f"/api/v1/restaurants/{restaurant['id']}", headers=owner.headers,
        params={"update_mask": "address.city"},
        json={"name": "ignored", "version": 1, "address": {"city": "Manchester", "line1": "ignored"}}))
    assert updated["address"]["city"] == "Manchester"
    assert updated["address"]["line1"] == restaurant["address"]["line1"]
    assert updated["name"] == restaurant["name"]


@pytest.mark.parametrize("field, value, reason", [
    ("currency", "EURO", "INVALID_CURRENCY"),
    ("currency", "XAU", "INVALID_CURRENCY"),
    ("currency", "", "FIELD_REQUIRED"),
    ("timezone", "Mars/Olympus_Mons", "INVALID_TIMEZONE"),
    ("timezone", "", "FIELD_REQUIRED"),
    ("name", "", "FIELD_REQUIRED"),
    ("name", "N" * 121, "FIELD_TOO_LONG"),
    ("name", "two\nlines", "INVALID_TEXT"),
    ("address", {"country": "ZZ"}, "INVALID_COUNTRY"),
    ("address", {"line1": "L" * 201}, "FIELD_TOO_LONG"),
    ("address", {"postal_code": "P" * 21}, "FIELD_TOO_LONG"),
])
async def test_bad_restaurant_fields_are_400_with_a_reason_naming_the_field(edge, field, value, reason):
    creator = await register(edge, "badinput")
    body = {"name": "Good Name", "timezone": "Europe/London", "currency": "GBP", field: value}
    response = await edge.post("/api/v1/restaurants", headers=creator.headers, json=body)
    assert response.status_code == 400, response.text
    assert error_reason(response) == reason
    assert error_metadata(response)["field"].startswith(f"restaurant.{field}")
    listed = ok(await edge.get("/api/v1/restaurants", headers=creator.headers))
    assert listed["restaurants"] == []


async def test_bad_values_in_an_update_are_400_and_change_nothing(edge):
    owner, restaurant = await create_restaurant_as_owner(edge)
    path = f"/api/v1/restaurants/{restaurant['id']}"
    response = await edge.patch(path, headers=owner.headers, json={"currency": "ABC", "version": 1})
    assert response.status_code == 400 and error_reason(response) == "INVALID_CURRENCY"
    masked = await edge.patch(path, headers=owner.headers, params={"update_mask": "version"},
                              json={"version": 1})
    assert masked.status_code == 400 and error_reason(masked) == "INVALID_UPDATE_MASK"
    assert ok(await edge.get(path, headers=owner.headers))["version"] == 1


@pytest.mark.fault
async def test_while_auth_is_down_creating_a_restaurant_is_a_retryable_503_and_creates_nothing(edge, stack):
    owner, restaurant = await create_restaurant_as_owner(edge)
    await stack.stop_every("auth")
    try:
        response = await edge.post("/api/v1/restaurants", headers=owner.headers, json={
            "name": "Opened During Outage", "timezone": "Europe/London", "currency": "GBP"})
        assert response.status_code == 503, response.text
        assert error_reason(response) == "AUTH_UNAVAILABLE"
        assert error_metadata(response)["retryable"] == "true"
        # Inviting needs no auth call at all: the invitation waits for the invited person.
        invited_email = unique_email("invited")
        hire = await edge.post("/api/v1/employees", headers=owner.headers, json={
            "first_name": "Invited", "email": invited_email})
        assert hire.status_code == 200 and hire.json()["state"] == "INVITED", hire.text
    finally:
        await stack.start_every("auth")
    listed = ok(await edge.get("/api/v1/restaurants", headers=owner.headers))["restaurants"]
    assert [r["id"] for r in listed] == [restaurant["id"]]
    employees = ok(await edge.get("/api/v1/employees", headers=owner.headers,
                                  params={"state": "all"}))["employees"]
    assert [e["email"] for e in employees] == [owner.email, invited_email]
    # As an app does with a retryable answer: staff's channel to auth reconnects within a second.
    for _ in range(50):
        retried = await edge.post("/api/v1/restaurants", headers=owner.headers, json={
            "name": "Opened After Outage", "timezone": "Europe/London", "currency": "GBP"})
        if error_reason(retried) != "AUTH_UNAVAILABLE":
            break
        await asyncio.sleep(0.1)
    assert retried.status_code == 200, retried.text
