"""The OpenAPI document is a valid OpenAPI 3.1 description of exactly the routes the edge serves,
generated from the contract: parameters, bodies, JSON types, access, and the error reasons of
each operation with their HTTP statuses."""

from __future__ import annotations

from functools import lru_cache

import pytest
from openapi_spec_validator import validate

from posmesh.common import permissions
from stack import codegen, contract, envoy_config, openapi
from stack.error_reasons import Catalogue

SCHEMAS = "#/components/schemas/"


@lru_cache(maxsize=1)
def document() -> dict:
    return openapi.build(contract.load(codegen.DESCRIPTOR_SET))


def operations() -> list[tuple[str, str, dict]]:
    return [(path, verb, operation) for path, item in document()["paths"].items()
            for verb, operation in item.items()]


def schema(name: str) -> dict:
    return document()["components"]["schemas"][name]


def resolve(node: dict) -> dict:
    while "$ref" in node:
        node = schema(node["$ref"].removeprefix(SCHEMAS))
    return node


def reasons_by_status(operation: dict) -> dict[int, set[str]]:
    found = {}
    for status, response in operation["responses"].items():
        if status != "200":
            (content,) = response["content"].values()
            _, narrowing = content["schema"]["allOf"]
            found[int(status)] = set(
                narrowing["properties"]["details"]["items"]["properties"]["reason"]["enum"])
    return found


def test_the_document_is_valid_openapi_3_1():
    assert document()["openapi"] == "3.1.0"
    validate(document())


def test_the_documented_routes_are_exactly_the_routes_the_edge_serves():
    edge = envoy_config.edge_routes(codegen.DESCRIPTOR_SET)
    documented = {(path, verb) for path, verb, _ in operations()}
    bound = {(binding.template, binding.verb)
             for binding in openapi.bindings(contract.load(codegen.DESCRIPTOR_SET))}

    assert {path for path, _ in documented} == {route.template for route in edge.http}
    assert documented == bound
    assert ("/api/v1/orders/{order_id}/status", "patch") in documented  # additional_bindings
    assert ("/health", "get") in documented


def test_no_internal_rpc_is_documented():
    internal = {method for method, rule in permissions.PERMISSIONS.items()
                if rule.access is permissions.Access.INTERNAL}

    assert not internal & {operation["x-grpc-method"] for _, _, operation in operations()}


def test_exactly_the_public_rows_of_the_permission_table_need_no_token():
    open_operations = {operation["x-grpc-method"] for _, _, operation in operations()
                       if operation.get("security") == []}
    public = {method for method, rule in permissions.PERMISSIONS.items()
              if rule.access is permissions.Access.PUBLIC
              and method.split("/")[1] in envoy_config.EDGE_SERVICES}

    assert open_operations == public
    assert document()["security"] == [{"bearer": []}]
    assert document()["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_path_query_and_body_parameters_follow_the_http_bindings():
    paths = document()["paths"]
    update_restaurant = paths["/api/v1/restaurants/{restaurant_id}"]["patch"]
    list_orders = paths["/api/v1/orders"]["get"]
    update_status = paths["/api/v1/orders/{order_id}/status"]["post"]

    assert [(p["name"], p["in"]) for p in update_restaurant["parameters"]] == [
        ("restaurant_id", "path"), ("update_mask", "query")]
    assert update_restaurant["requestBody"]["content"]["application/json"]["schema"]["$ref"] \
        == SCHEMAS + "posmesh.staff.v1.Restaurant"  # body: "restaurant"
    statuses = next(p for p in list_orders["parameters"] if p["name"] == "statuses")
    assert statuses["schema"]["type"] == "array" and statuses["explode"] is True
    body = update_status["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"status", "version", "approval"}  # body "*" without the path's field
    assert body["required"] == ["status", "version"] and update_status["requestBody"]["required"]


def test_json_types_follow_the_transcoders_mapping():
    order = schema("posmesh.orders.v1.Order")["properties"]
    restaurant_update = document()["paths"]["/api/v1/restaurants/{restaurant_id}"]["patch"]
    mask = next(p for p in restaurant_update["parameters"] if p["name"] == "update_mask")

    assert order["total_minor"]["type"] == "string" and order["total_minor"]["format"] == "int64"
    assert order["create_time"]["type"] == "string" and order["create_time"]["format"] == "date-time"
    assert order["status"]["$ref"] == SCHEMAS + "posmesh.orders.v1.OrderStatus"
    assert "PREPARING" in schema("posmesh.orders.v1.OrderStatus")["enum"]
    assert mask["schema"]["type"] == "string"
    assert schema("posmesh.orders.v1.Order")["additionalProperties"] is False


def test_field_behaviors_become_required_read_only_and_write_only():
    register = schema("posmesh.auth.v1.RegisterRequest")
    employee = schema("posmesh.staff.v1.Employee")["properties"]

    assert register["required"] == ["email", "password", "full_name"]
    assert employee["id"]["readOnly"] is True
    accept = schema("posmesh.staff.v1.AcceptInvitationRequest")["properties"]
    assert accept["password"]["writeOnly"] is True


def test_comments_of_the_protos_are_the_descriptions():
    order = schema("posmesh.orders.v1.Order")
    create = document()["paths"]["/api/v1/orders"]["post"]

    assert order["description"] == "An order."
    assert "idempotency" in order["properties"]["request_id"]["description"]
    assert create["description"].startswith("Creates an order; a retry with the same request_id")


def test_the_jwks_route_answers_raw_json_and_the_watch_route_a_json_lines_stream():
    paths = document()["paths"]
    jwks = paths["/.well-known/jwks.json"]["get"]["responses"]["200"]["content"]
    watch = paths["/api/v1/restaurants/{restaurant_id}/orders:watch"]["get"]["responses"]

    assert jwks["application/json"]["schema"]["type"] == "object"
    assert watch["200"]["content"]["application/x-ndjson"]["schema"]["$ref"] \
        == SCHEMAS + "posmesh.orders.v1.WatchOrdersResponse"
    assert "504" not in watch  # a stream has no deadline at the edge


def test_every_error_is_the_one_status_schema_with_an_error_info_reason():
    status = schema("google.rpc.Status")
    info = schema("google.rpc.ErrorInfo")

    assert status["properties"]["details"]["items"]["$ref"] == SCHEMAS + "google.rpc.ErrorInfo"
    assert info["properties"]["reason"]["$ref"] == SCHEMAS + "posmesh.api.v1.ErrorReason"
    for _, _, operation in operations():
        for code, response in operation["responses"].items():
            if code != "200":
                (content,) = response["content"].values()
                assert content["schema"]["allOf"][0]["$ref"] == SCHEMAS + "google.rpc.Status"


@pytest.mark.parametrize("path, verb, operation", operations(),
                         ids=[f"{verb.upper()} {path}" for path, verb, _ in operations()])
def test_every_operation_lists_its_reasons_under_the_http_status_each_is_sent_with(
        path, verb, operation):
    catalogue = Catalogue(contract.load(codegen.DESCRIPTOR_SET)).reasons
    found = reasons_by_status(operation)
    has_input = "requestBody" in operation or any(
        parameter["in"] == "query" for parameter in operation.get("parameters", []))

    for status, names in found.items():
        assert names, status
        assert all(status in catalogue[name].http_statuses for name in names), (status, names)
    assert "INTERNAL" in found[500] and "SERVICE_UNAVAILABLE" in found[503]
    assert ("UNKNOWN_FIELD" in found.get(400, set())) == has_input
    assert ({"TOKEN_INVALID", "TOKEN_EXPIRED"} <= found.get(401, set())) == \
        (operation.get("security") != [])


def test_operations_carry_their_rpcs_own_reasons():
    paths = document()["paths"]
    create_order = reasons_by_status(paths["/api/v1/orders"]["post"])
    login = reasons_by_status(paths["/api/v1/auth/login"]["post"])

    assert {"ITEM_UNAVAILABLE", "IDEMPOTENCY_MISMATCH"} <= create_order[409]
    assert {"ROLE_FORBIDDEN", "TENANT_MISMATCH"} <= create_order[403]
    assert "PAYLOAD_TOO_LARGE" in create_order[413]
    assert login[401] == {"INVALID_CREDENTIALS"}
    assert login[429] == {"TOO_MANY_ATTEMPTS", "RATE_LIMITED"}


def test_the_reason_catalogue_is_one_schema_with_every_reason():
    reasons = schema("posmesh.api.v1.ErrorReason")
    catalogue = Catalogue(contract.load(codegen.DESCRIPTOR_SET)).reasons

    assert reasons["enum"] == list(catalogue)
    assert "| `VERSION_CONFLICT` | ABORTED | 409 |" in reasons["description"]
