"""`posmesh run --demo`: the seeded restaurant is usable at once and seeding twice is harmless.

The demo's emails are fixed, so the whole module shares one seeded data dir."""

from __future__ import annotations

import json

import pytest_asyncio

from stack import demo


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def seeded(stack, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("demo")
    restaurant_id, logins = await demo.seed(stack.edge_url, stack.ca_file, data_dir, stack.mail_dir)
    return data_dir, restaurant_id, logins


async def test_demo_people_log_in_to_the_demo_restaurant_with_their_roles(edge, seeded):
    _, restaurant_id, logins = seeded
    roles = []
    for login in logins:
        response = await edge.post("/api/v1/auth/login", json={
            "email": login.email, "password": login.password})
        assert response.status_code == 200, response.text
        assert response.json()["restaurant_id"] == restaurant_id
        roles.append(response.json()["role"])
    assert sorted(roles) == ["manager", "owner", "staff", "staff"]


async def test_demo_menu_holds_every_item_in_the_restaurants_currency(edge, seeded):
    _, restaurant_id, logins = seeded
    token = (await edge.post("/api/v1/auth/login", json={
        "email": logins[2].email, "password": logins[2].password})).json()["access_token"]

    menu = await edge.get(f"/api/v1/restaurants/{restaurant_id}/menu",
                          headers={"authorization": f"Bearer {token}"})

    assert menu.status_code == 200, menu.text
    names = sorted(item["name"] for item in menu.json()["items"])
    assert names == sorted(name for items in demo.MENU.values() for name, _, _ in items)
    assert {item["currency"] for item in menu.json()["items"]} == {"GBP"}


async def test_seeding_the_same_data_dir_again_reuses_the_restaurant_and_logins(stack, seeded):
    data_dir, restaurant_id, logins = seeded

    again_id, again_logins = await demo.seed(stack.edge_url, stack.ca_file, data_dir, stack.mail_dir)

    assert again_id == restaurant_id
    assert again_logins == logins
    assert (data_dir / "demo-credentials.json").stat().st_mode & 0o077 == 0


async def test_seeding_with_stale_credentials_fails_with_a_clear_demo_error(stack, seeded, tmp_path):
    _, _, logins = seeded
    stale = [{"email": login.email, "password": "not-the-password", "role": login.role}
             for login in logins]
    (tmp_path / "demo-credentials.json").write_text(json.dumps({"logins": stale}))

    try:
        await demo.seed(stack.edge_url, stack.ca_file, tmp_path, stack.mail_dir)
    except demo.DemoError as error:
        assert "log in as owner@demo.posmesh.test" in str(error)
        assert "INVALID_CREDENTIALS" in str(error)
    else:
        raise AssertionError("seeding with a wrong stored password must fail")


async def test_the_demo_pairs_a_till_where_its_server_signs_in_with_the_printed_pin(
        stack, edge, seeded):
    from stack import demo_devices

    data_dir, restaurant_id, logins = seeded
    till = await demo_devices.pair_demo_devices(stack.edge_url, stack.ca_file, data_dir,
                                                restaurant_id, logins)
    token = next(d for d in till.devices if d.device_type == "TILL").access_token

    reply = await edge.post("/api/v1/devices:pinLogin", headers={"authorization": f"Bearer {token}"},
                            json={"user_id": till.user_id, "pin": till.pin})

    assert reply.status_code == 200, reply.text
    assert reply.json()["user"]["restaurant_id"] == restaurant_id
    printed = demo_devices.describe(stack.edge_url, "ca.pem", till)
    assert f'"pin": "{till.pin}"' in printed and "devices:pinLogin" in printed
    assert till.browser_code in printed and "/kitchen/" in printed
    # A second run rotates the same devices' credentials instead of pairing new ones.
    again = await demo_devices.pair_demo_devices(stack.edge_url, stack.ca_file, data_dir,
                                                 restaurant_id, logins)
    assert [d.device_id for d in again.devices] == [d.device_id for d in till.devices]
    assert again.pin == till.pin
    assert (data_dir / "demo-devices.json").stat().st_mode & 0o077 == 0
