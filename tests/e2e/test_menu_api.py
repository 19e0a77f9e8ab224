"""The menu through the edge: categories and items, versions, availability, menu.updated events."""

from __future__ import annotations

import pytest_asyncio

from tests.support.orders import (
    add_menu_item,
    error_reason,
    event_head,
    open_restaurant,
    read_events,
)


@pytest_asyncio.fixture(scope="module")
async def party(stack, edge):
    return await open_restaurant(edge, currency="EUR", timezone="Europe/Paris")


def menu_path(party, *rest: str) -> str:
    return "/".join([f"/api/v1/restaurants/{party.restaurant_id}/menu", *rest])


async def test_items_are_priced_in_the_restaurants_currency_and_everyone_reads_them(edge, party):
    item = await add_menu_item(edge, party.owner, name="Croissant", price_minor=180,
                               tax_rate_ppm=55_000)
    assert (item["currency"], int(item["price_minor"]), item["tax_rate_ppm"]) == ("EUR", 180, 55_000)
    assert (item["available"], item["version"]) == (True, 1)
    for member in (party.owner, party.manager, party.staff):
        menu = (await edge.get(menu_path(party), headers=member.headers)).json()
        assert menu["currency"] == "EUR"
        assert item["id"] in {i["id"] for i in menu["items"]}


async def test_categories_order_the_menu_and_deleting_one_keeps_its_items(edge, party):
    mains = (await edge.post(menu_path(party, "categories"), headers=party.manager.headers,
                             json={"name": "Mains", "position": 2})).json()
    starters = (await edge.post(menu_path(party, "categories"), headers=party.manager.headers,
                                json={"name": "Starters", "position": 1})).json()
    dish = await add_menu_item(edge, party.manager, name="Steak", category_id=mains["id"])
    menu = (await edge.get(menu_path(party), headers=party.staff.headers)).json()
    assert [c["name"] for c in menu["categories"]][:2] == ["Starters", "Mains"]
    duplicate = await edge.post(menu_path(party, "categories"), headers=party.manager.headers,
                                json={"name": "mains"})
    assert (duplicate.status_code, error_reason(duplicate)) == (409, "CATEGORY_EXISTS")
    renamed = await edge.patch(menu_path(party, "categories", starters["id"]),
                               headers=party.manager.headers,
                               json={"name": "Small plates", "version": starters["version"]})
    assert renamed.status_code == 200 and renamed.json()["version"] == 2
    removed = await edge.delete(menu_path(party, "categories", mains["id"]), headers=party.manager.headers)
    assert removed.status_code == 200
    menu = (await edge.get(menu_path(party), headers=party.staff.headers)).json()
    steak = next(i for i in menu["items"] if i["id"] == dish["id"])
    assert steak["category_id"] == "" and steak["version"] == 2
    assert mains["id"] not in {c["id"] for c in menu["categories"]}


async def test_an_item_in_another_restaurants_category_is_refused(edge, party):
    other = await open_restaurant(edge)
    theirs = (await edge.post(f"/api/v1/restaurants/{other.restaurant_id}/menu/categories",
                              headers=other.manager.headers, json={"name": "Theirs"})).json()
    reply = await edge.post(menu_path(party, "items"), headers=party.manager.headers,
                            json={"name": "X", "price_minor": "1", "category_id": theirs["id"]})
    assert (reply.status_code, error_reason(reply)) == (404, "MENU_CATEGORY_NOT_FOUND")


async def test_an_update_changes_only_the_fields_sent_and_needs_the_current_version(edge, party):
    item = await add_menu_item(edge, party.manager, name="Soup", price_minor=500, tax_rate_ppm=100_000)
    path = menu_path(party, "items", item["id"])
    changed = await edge.patch(path, headers=party.manager.headers,
                               json={"available": False, "version": 1})
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["available"], body["name"], int(body["price_minor"]), body["version"]) == (
        False, "Soup", 500, 2)
    stale = await edge.patch(path, headers=party.manager.headers, json={"price_minor": "1", "version": 1})
    assert (stale.status_code, error_reason(stale)) == (409, "VERSION_CONFLICT")
    missing = await edge.patch(path, headers=party.manager.headers, json={"price_minor": "1"})
    assert (missing.status_code, error_reason(missing)) == (400, "FIELD_REQUIRED")


async def test_unavailable_items_are_hidden_unless_asked_for(edge, party):
    hidden = await add_menu_item(edge, party.manager, available=False)
    default = (await edge.get(menu_path(party), headers=party.staff.headers)).json()
    everything = (await edge.get(menu_path(party), headers=party.staff.headers,
                                 params={"include_unavailable": "true"})).json()
    assert hidden["id"] not in {i["id"] for i in default["items"]}
    assert hidden["id"] in {i["id"] for i in everything["items"]}


async def test_a_deleted_item_leaves_the_menu(edge, party):
    item = await add_menu_item(edge, party.manager)
    reply = await edge.delete(menu_path(party, "items", item["id"]), headers=party.manager.headers)
    assert reply.status_code == 200
    again = await edge.delete(menu_path(party, "items", item["id"]), headers=party.manager.headers)
    assert (again.status_code, error_reason(again)) == (404, "MENU_ITEM_NOT_FOUND")
    menu = (await edge.get(menu_path(party), headers=party.staff.headers,
                           params={"include_unavailable": "true"})).json()
    assert item["id"] not in {i["id"] for i in menu["items"]}


async def test_bad_menu_input_is_400_with_a_reason(edge, party):
    cases = [({"price_minor": "1"}, "FIELD_REQUIRED"),
             ({"name": "X"}, "FIELD_REQUIRED"),
             ({"name": "X", "price_minor": "-5"}, "VALUE_OUT_OF_RANGE"),
             ({"name": "X", "price_minor": "1", "tax_rate_ppm": 1_000_001}, "VALUE_OUT_OF_RANGE"),
             ({"name": "X" * 201, "price_minor": "1"}, "FIELD_TOO_LONG"),
             ({"name": "X", "price_minor": "1", "category_id": "nope"}, "INVALID_ID")]
    for body, reason in cases:
        reply = await edge.post(menu_path(party, "items"), headers=party.manager.headers, json=body)
        assert (reply.status_code, error_reason(reply)) == (400, reason), (body, reply.text)


async def test_every_menu_change_is_a_menu_updated_event(stack, edge, party):
    head = await event_head(stack, party.restaurant_id)
    item = await add_menu_item(edge, party.manager, name="Tart")
    await edge.patch(menu_path(party, "items", item["id"]), headers=party.manager.headers,
                     json={"price_minor": "700", "version": 1})
    await edge.delete(menu_path(party, "items", item["id"]), headers=party.manager.headers)
    events = await read_events(stack, party.restaurant_id, after=head)
    assert [(e["type"], e["menu_change"]) for e in events] == [
        ("menu.updated", "item.created"), ("menu.updated", "item.updated"),
        ("menu.updated", "item.deleted")]
    assert int(events[1]["menu_item"]["price_minor"]) == 700
    assert all(e["menu_item"]["id"] == item["id"] for e in events)
