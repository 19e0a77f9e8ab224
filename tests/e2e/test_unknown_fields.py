"""Unknown JSON fields and query parameters through the real edge: refused with 400 UNKNOWN_FIELD
naming the field, before anything reaches a service (envoy/unknown_fields.lua); known fields, by
proto or JSON name, still work; bodies that are not strict JSON are a clean 400 BAD_REQUEST."""

from __future__ import annotations

import json
import uuid

import grpc
import httpx
import pytest
import pytest_asyncio
import yaml

from posmesh.common.settings import Settings
from stack import codegen, envoy_config

from tests.fuzz.routes import Route, mobile_routes
from tests.support.orders import Party, add_menu_item, line, open_restaurant, order_body
from tests.support.restaurants import create_restaurant_as_owner

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def test_the_check_runs_on_the_json_routes_only(tmp_path):
    path = envoy_config.render(Settings(POSMESH_DATA_DIR=str(tmp_path)), tmp_path / "envoy")
    envoy_config.validate(path)
    (listener,) = [item for item in yaml.safe_load(path.read_text())["static_resources"]["listeners"]
                   if item["name"] == "edge"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in manager["http_filters"]]
    (check,) = [f for f in manager["http_filters"] if f["name"] == "posmesh.unknown_fields"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    checked = {r["name"] for r in routes if "posmesh.unknown_fields" in r.get("typed_per_filter_config", {})}
    json_routes = {r["name"] for r in routes if "safe_regex" in r["match"]}
    json_paths = {r["match"]["safe_regex"]["regex"] for r in routes if "safe_regex" in r["match"]}

    assert check["disabled"] is True  # off unless a route turns it on
    assert names.index("envoy.filters.http.jwt_authn") < names.index("posmesh.unknown_fields") \
        < names.index("envoy.filters.http.grpc_json_transcoder")
    assert checked == json_routes
    # Every JSON path of the contract (some have a second route for calls shed last).
    assert len(json_paths) == len(envoy_config.edge_routes(codegen.DESCRIPTOR_SET).http)
    assert not any(r["name"].startswith(("websocket", "grpc")) for r in routes if r["name"] in checked)


@pytest_asyncio.fixture(scope="module")
async def party(stack, edge) -> Party:
    return await open_restaurant(edge)


@pytest_asyncio.fixture(scope="module")
async def dish(edge, party) -> dict:
    return await add_menu_item(edge, party.manager, name="Soup", price_minor=450)


@pytest.fixture(params=["http2", "http1.1"])
def client(request, edge, edge_http1) -> httpx.AsyncClient:
    return edge if request.param == "http2" else edge_http1


def refusal(reply: httpx.Response) -> tuple[str, str, str]:
    """(reason, metadata field, message) of an error reply in the API's one JSON error shape."""
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    (info,) = body["details"]
    assert (info["@type"], info["domain"]) == (ERROR_INFO, "posmesh.dev")
    assert info["metadata"]["request_id"] == reply.headers["x-request-id"]
    return info["reason"], info["metadata"].get("field", ""), body["message"]


async def orders_with_key(edge, party: Party, request_id: str) -> list[dict]:
    listed = await edge.get("/api/v1/orders", headers=party.staff.headers, params={"page_size": 200})
    assert listed.status_code == 200, listed.text
    return [order for order in listed.json()["orders"] if order["request_id"] == request_id]


async def test_a_misspelt_top_level_field_is_refused_and_no_order_is_created(client, party, dish):
    body = {**order_body([line(dish)]), "itemz": [line(dish)]}
    reply = await client.post("/api/v1/orders", headers=party.staff.headers, json=body)

    reason, field, message = refusal(reply)
    assert (reason, field) == ("UNKNOWN_FIELD", "itemz")
    assert 'Unknown name "itemz"' in message
    assert await orders_with_key(client, party, body["request_id"]) == []


async def test_an_unknown_field_inside_a_line_is_named_by_its_path(client, party, dish):
    body = order_body([line(dish), {"menu_item_id": dish["id"], "qty": 2}])
    reply = await client.post("/api/v1/orders", headers=party.staff.headers, json=body)

    reason, field, message = refusal(reply)
    assert (reason, field) == ("UNKNOWN_FIELD", "lines[1].qty")
    assert message.startswith('Unknown name "qty" at \'lines[1]\'')
    assert await orders_with_key(client, party, body["request_id"]) == []


async def test_a_misspelt_menu_item_change_is_refused_and_the_item_is_unchanged(client, party):
    item = await add_menu_item(client, party.manager, name=f"Dish {uuid.uuid4().hex[:6]}")
    path = f"/api/v1/restaurants/{party.restaurant_id}/menu/items/{item['id']}"
    reply = await client.patch(path, headers=party.manager.headers,
                               json={"avaliable": False, "version": item["version"]})

    assert refusal(reply)[:2] == ("UNKNOWN_FIELD", "avaliable")
    menu = (await client.get(f"/api/v1/restaurants/{party.restaurant_id}/menu",
                             headers=party.manager.headers)).json()
    (now,) = [i for i in menu["items"] if i["id"] == item["id"]]
    assert (now["version"], now["available"]) == (item["version"], True)


async def test_an_unknown_field_in_a_nested_message_of_a_named_body_is_refused(client, party):
    path = f"/api/v1/restaurants/{party.restaurant_id}"
    reply = await client.patch(path, headers=party.owner.headers,
                               json={"version": 1, "address": {"city": "Leeds", "zip": "LS1"}})

    assert refusal(reply)[:2] == ("UNKNOWN_FIELD", "address.zip")


@pytest.mark.parametrize("path, params, field", [
    ("/api/v1/orders", {"page_size": "5", "sort": "newest"}, "sort"),
    ("/api/v1/orders/active", {"pagesize": "5"}, "pagesize"),
    ("/api/v1/employees", {"page_size": "5", "role": "manager"}, "role"),
])
async def test_an_unknown_query_parameter_on_a_list_route_is_refused(client, party, path, params, field):
    reply = await client.get(path, headers=party.owner.headers, params=params)

    reason, named, message = refusal(reply)
    assert (reason, named) == ("UNKNOWN_FIELD", field)
    assert f'Unknown name "{field}"' in message


async def test_a_path_bound_field_is_not_a_query_parameter(client, party, dish):
    order = (await client.post("/api/v1/orders", headers=party.staff.headers,
                               json=order_body([line(dish)]))).json()
    reply = await client.get(f"/api/v1/orders/{order['id']}", headers=party.staff.headers,
                             params={"order_id": str(uuid.uuid4())})

    assert refusal(reply)[:2] == ("UNKNOWN_FIELD", "order_id")


async def test_known_fields_in_camel_case_still_work(client, party, dish):
    key = str(uuid.uuid4())
    reply = await client.post("/api/v1/orders", headers=party.staff.headers, json={
        "requestId": key, "orderType": "DINE_IN", "tableNumber": "7",
        "lines": [{"menuItemId": dish["id"], "quantity": 2, "modifiers": ["no salt"]}]})
    listed = await client.get("/api/v1/orders", headers=party.staff.headers, params={"pageSize": 1})

    assert reply.status_code == 200, reply.text
    assert reply.json()["lines"][0]["modifiers"] == ["no salt"]
    assert listed.status_code == 200 and len(listed.json()["orders"]) == 1


async def test_a_valid_request_with_every_kind_of_field_still_works(client, party, dish):
    body = order_body([line(dish, 2, notes="extra hot", modifiers=["bread", "butter"]), line(dish)],
                      order_type="DINE_IN", table_number="12", notes="birthday")
    reply = await client.post("/api/v1/orders", headers=party.staff.headers,
                              content=json.dumps(body, indent=2).encode())  # whitespace too
    active = await client.get("/api/v1/orders/active", headers=party.staff.headers,
                              params={"page_size": 100, "page_token": ""})

    assert reply.status_code == 200, reply.text
    assert [li["quantity"] for li in reply.json()["lines"]] == [2, 1]
    assert active.status_code == 200, active.text


async def test_an_escaped_key_is_decoded_before_it_is_checked(client, party, dish):
    key = str(uuid.uuid4())
    refused = await client.post("/api/v1/orders", headers=party.staff.headers, content=(
        '{"request_id": "%s", "order_type": "TAKEAWAY", "it\\u0065mz": []}' % key).encode())
    accepted = await client.post("/api/v1/orders", headers=party.staff.headers, content=(
        '{"request\\u005fid": "%s", "order_type": "TAKEAWAY", "lines": [{"menu_item_id": "%s", "quantity": 1}]}'
        % (key, dish["id"])).encode())

    assert refusal(refused)[:2] == ("UNKNOWN_FIELD", "itemz")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["request_id"] == key


async def test_an_unknown_field_in_a_body_the_binding_does_not_declare_is_refused(client, party):
    # The transcoder reads a body on a GET too: its keys are checked like any other body's.
    reply = await client.request("GET", "/api/v1/orders", headers=party.staff.headers,
                                 json={"page_size": 1, "pageSise": 2})

    assert refusal(reply)[:2] == ("UNKNOWN_FIELD", "pageSise")


async def test_an_unknown_field_in_another_service_is_refused_too(client):
    reply = await client.post("/api/v1/auth/register", json={
        "email": f"x-{uuid.uuid4().hex[:8]}@example.com", "password": "x" * 16, "fullname": "X"})

    assert refusal(reply)[:2] == ("UNKNOWN_FIELD", "fullname")


async def test_a_retired_field_that_older_apps_still_send_is_accepted_and_ignored(client):
    # SwitchRestaurantRequest once took the refresh token (`reserved "refresh_token"` now).
    owner, _ = await create_restaurant_as_owner(client)
    second = await client.post("/api/v1/restaurants", headers=owner.headers, json={
        "name": f"Second {uuid.uuid4().hex[:6]}", "timezone": "Europe/London", "currency": "GBP"})
    assert second.status_code == 200, second.text
    reply = await client.post("/api/v1/auth/switch-restaurant", headers=owner.headers, json={
        "restaurant_id": second.json()["id"], "refresh_token": owner.refresh_token})

    assert reply.status_code == 200, reply.text
    assert reply.json()["restaurant_id"] == second.json()["id"]


@pytest.mark.parametrize("body", [
    b'{"request_id": "r", "order_type": "TAKEAWAY"',  # cut short
    b"{request_id: 'r', order_type: 'TAKEAWAY', itemz: []}",  # unquoted keys, single quotes
    b'{"request_id": "r", "order_type": "TAKEAWAY",}',  # trailing comma
    b'{"request_id": "r", "notes": "a\\qb"}',  # invalid escape
    b'{"request_id": "r", "notes": "line\nbreak"}',  # raw control character
    b'{"request_id": "r"} {"itemz": 1}',  # a second value
    b"\xff\xfe{}",
    b"   ",
], ids=["cut-short", "unquoted", "trailing-comma", "bad-escape", "control-char", "two-values",
        "not-utf8", "blank"])
async def test_a_body_that_is_not_strict_json_is_a_clean_400(client, party, body):
    reply = await client.post("/api/v1/orders", headers={**party.staff.headers,
                                                         "content-type": "application/json"},
                              content=body)

    reason, field, message = refusal(reply)
    assert reason == "BAD_REQUEST" and field == ""
    assert "invalid JSON" in message


@pytest.mark.parametrize("depth", [40, 5000])
async def test_deeply_nested_garbage_is_refused_without_a_server_error(client, party, depth):
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    reply = await client.post("/api/v1/orders", headers=party.staff.headers,
                              content=b'{"notes": ' + nested + b"}")
    arrays = await client.post("/api/v1/orders", headers=party.staff.headers,
                               content=b'{"lines": ' + b"[" * depth + b"]" * depth + b"}")

    for answer in (reply, arrays):
        reason, _, message = refusal(answer)
        assert reason == "BAD_REQUEST" and "nested deeper than" in message


async def test_garbage_under_a_known_value_field_is_left_to_the_transcoder(client, party):
    # `notes` is a string: its value is not walked, and the transcoder refuses the object.
    reply = await client.post("/api/v1/orders", headers=party.staff.headers,
                              json={"request_id": str(uuid.uuid4()), "notes": {"x": [1, {"y": 2}]}})

    assert refusal(reply)[0] == "BAD_REQUEST"


async def test_an_absurdly_long_unknown_key_is_named_in_short(client, party):
    reply = await client.post("/api/v1/orders", headers=party.staff.headers,
                              content=b'{"' + b"k" * 100_000 + b'": 1}')

    reason, field, _ = refusal(reply)
    assert reason == "UNKNOWN_FIELD"
    assert field.startswith("kkkk") and field.endswith("...") and len(field) < 300


@pytest.mark.parametrize("route", mobile_routes(), ids=lambda r: r.name)
async def test_every_json_route_refuses_an_unknown_body_key_and_query_parameter(edge, party, route: Route):
    path = route.path({name: str(uuid.uuid4()) for name in route.path_params})
    in_body = await edge.request(route.verb, path, headers=party.owner.headers,
                                 json={"zz_not_a_field": 1})
    in_query = await edge.request(route.verb, path, headers=party.owner.headers,
                                  params={"zz_not_a_field.x": "1"})

    assert refusal(in_body)[:2] == ("UNKNOWN_FIELD", "zz_not_a_field")
    assert refusal(in_query)[:2] == ("UNKNOWN_FIELD", "zz_not_a_field.x")
