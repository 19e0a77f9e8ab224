"""The schema of the edge's unknown-field check, derived from descriptor sets: the real one
(build/posmesh.pb) and a small contract with the shapes the real one lacks today (HttpBody,
maps, Struct, wrappers, a custom json_name, a nested path binding, a recursive message)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from grpc_tools import protoc

from stack import codegen, envoy_config, known_fields
from stack.known_fields import VALUE, Lead

pytestmark = pytest.mark.unit

ORDERS = "posmesh.orders.v1"


@pytest.fixture(scope="module")
def schema() -> known_fields.Schema:
    codegen.ensure_generated()
    return known_fields.derive(codegen.DESCRIPTOR_SET, list(envoy_config.EDGE_SERVICES))


def test_create_order_body_accepts_every_field_by_proto_and_json_name(schema):
    create = schema.binding("POST", "/api/v1/orders")

    assert create.rpc == f"/{ORDERS}.OrderService/CreateOrder"
    assert schema.body_keys(create) == {
        "request_id", "requestId", "order_type", "orderType", "table_number", "tableNumber",
        "lines", "notes", "restaurant_id", "restaurantId"}
    assert "itemz" not in schema.body_keys(create)


def test_order_lines_are_checked_element_by_element_against_the_line_message(schema):
    lines = schema.keys(schema.binding("POST", "/api/v1/orders").body_root.node)["lines"]

    assert lines == Lead("message", f"{ORDERS}.OrderLineInput")
    assert set(schema.keys(lines.node)) == {"menu_item_id", "menuItemId", "quantity", "notes",
                                            "modifiers"}
    assert schema.keys(lines.node)["modifiers"] == VALUE  # repeated string: values, not walked


def test_update_menu_item_body_root_is_the_item(schema):
    update = schema.binding("PATCH", "/api/v1/restaurants/{restaurant_id}/menu/items/{item_id}")

    assert update.body == "item"
    assert update.body_root == Lead("message", f"{ORDERS}.MenuItem")
    assert {"available", "version", "price_minor", "priceMinor"} <= schema.body_keys(update)
    assert not {"avaliable", "item", "restaurant_id", "item_id"} & schema.body_keys(update)


def test_a_star_body_leaves_out_the_path_bound_fields(schema):
    status = schema.binding("POST", "/api/v1/orders/{order_id}/status")

    assert status.path_fields == ("order_id",)
    assert schema.body_keys(status) == {"status", "version", "approval"}


def test_additional_bindings_get_the_same_schema(schema):
    post = schema.binding("POST", "/api/v1/orders/{order_id}/status")
    patch = schema.binding("PATCH", "/api/v1/orders/{order_id}/status")

    assert (patch.rpc, patch.body_root, patch.query) == (post.rpc, post.body_root, post.query)
    assert {b.template for b in schema.bindings if b.rpc.endswith("/GetSystemHealth")} == {
        "/api/v1/health", "/health"}


def test_path_bound_fields_are_not_query_parameters(schema):
    menu = schema.binding("GET", "/api/v1/restaurants/{restaurant_id}/menu")
    get_order = schema.binding("GET", "/api/v1/orders/{order_id}")
    remove_line = schema.binding("DELETE", "/api/v1/orders/{order_id}/items/{line_id}")

    assert menu.query == {"include_unavailable", "includeUnavailable"}
    assert get_order.query == frozenset()
    assert remove_line.query == {"version"}


def test_query_parameters_take_camel_case_and_dotted_paths_into_messages(schema):
    orders = schema.binding("GET", "/api/v1/orders")
    update = schema.binding("PATCH", "/api/v1/restaurants/{restaurant_id}")

    assert {"page_size", "pageSize", "statuses", "created_after", "createdAfter",
            "created_after.seconds", "createdAfter.nanos"} <= orders.query
    assert "bogus" not in orders.query
    assert {"update_mask", "updateMask", "restaurant.address.city",
            "restaurant.address.postalCode"} <= update.query
    assert "restaurant_id" not in update.query


def test_well_known_types_whose_json_is_a_string_are_not_walked(schema):
    orders = schema.keys(schema.binding("GET", "/api/v1/orders").body_root.node)
    update = schema.keys(f"{ORDERS}.MenuItem")

    assert orders["created_after"] == VALUE  # Timestamp: "2024-01-01T00:00:00Z"
    assert update["version"] == VALUE


def test_every_routed_binding_of_the_contract_has_a_schema(schema):
    derived = {(b.verb, b.template) for b in schema.bindings}
    routed = {route.template for route in envoy_config.edge_routes(codegen.DESCRIPTOR_SET).http}

    assert {template for _, template in derived} == routed
    assert all(b.body_root is not None for b in schema.bindings)  # no HttpBody request today


# --- shapes the real contract lacks today ----------------------------------------------------------

CONTRACT = """
syntax = "proto3";
package shapes.v1;
import "google/api/annotations.proto";
import "google/api/httpbody.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

service Things {
  rpc Upload(UploadRequest) returns (Thing) {
    option (google.api.http) = {post: "/v1/{parent=shelves/*}/uploads" body: "data"};
  }
  rpc Raw(google.api.HttpBody) returns (Thing) {
    option (google.api.http) = {post: "/v1/raw" body: "*"};
  }
  rpc Update(UpdateRequest) returns (Thing) {
    option (google.api.http) = {patch: "/v1/{thing.name=things/*}" body: "thing"};
  }
  rpc Get(GetRequest) returns (Thing) {
    option (google.api.http) = {
      get: "/v1/things/{name}"
      additional_bindings {get: "/v1/things/{name}:peek"}
    };
  }
  rpc Count(CountRequest) returns (Thing) {
    option (google.api.http) = {get: "/v1/things:count"};
  }
}

message Thing {
  string name = 1;
  map<string, Part> parts = 2;
  map<string, string> labels = 3;
  google.protobuf.Struct extra = 4;
  google.protobuf.Int32Value count = 5;
  Thing parent = 6;
  repeated Part part_list = 7;
  string display_name = 8 [json_name = "title"];
  reserved 9;
  reserved "old_name";
}
message Part { int32 size = 1; }
message UploadRequest { string parent = 1; google.api.HttpBody data = 2; }
message UpdateRequest { Thing thing = 1; Filter filter = 2; }
message Filter { string state = 1; google.protobuf.Timestamp after = 2; repeated Part parts = 3; }
message GetRequest { string name = 1; Filter filter = 2; }
message CountRequest { Filter filter = 1; }
"""


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> known_fields.Schema:
    folder = tmp_path_factory.mktemp("shapes")
    (folder / "shapes.proto").write_text(CONTRACT)
    descriptor = folder / "shapes.pb"
    code = protoc.main(["protoc", f"-I{folder}", f"-I{codegen.googleapis_root()}",
                        f"-I{codegen.grpc_tools_include()}", "--include_imports",
                        f"--descriptor_set_out={descriptor}", "shapes.proto"])
    assert code == 0
    return known_fields.derive(descriptor)


def test_http_body_bodies_are_not_json_and_not_checked(shapes):
    assert shapes.binding("POST", "/v1/{parent=shelves/*}/uploads").body_root is None
    assert shapes.binding("POST", "/v1/raw").body_root is None


def test_maps_have_free_keys_and_map_values_that_are_messages_are_checked(shapes):
    thing = shapes.keys("shapes.v1.Thing")

    assert thing["parts"] == Lead("map", "shapes.v1.Part")
    assert thing["labels"] == VALUE


def test_struct_and_wrappers_are_not_walked(shapes):
    thing = shapes.keys("shapes.v1.Thing")

    assert thing["extra"] == VALUE and thing["count"] == VALUE


def test_a_custom_json_name_is_accepted_beside_the_proto_name(shapes):
    assert {"display_name", "title"} <= set(shapes.keys("shapes.v1.Thing"))
    assert "displayName" not in shapes.keys("shapes.v1.Thing")


def test_a_nested_path_binding_is_left_out_of_the_named_body_only_at_its_path(shapes):
    update = shapes.binding("PATCH", "/v1/{thing.name=things/*}")
    root = shapes.keys(update.body_root.node)

    assert "name" not in root and {"parts", "parent"} <= set(root)
    assert shapes.keys(root["parent"].node)["name"] == VALUE  # the parent keeps its name
    assert "thing.name" not in update.query and "thing.title" in update.query


def test_a_retired_field_is_accepted_by_proto_and_json_name_and_not_walked(shapes):
    thing = shapes.keys("shapes.v1.Thing")

    assert thing["old_name"] == VALUE and thing["oldName"] == VALUE
    assert "old_name" not in shapes.binding("GET", "/v1/things/{name}").query


def test_a_recursive_message_refers_back_to_its_own_node(shapes):
    assert shapes.keys("shapes.v1.Thing")["parent"] == Lead("message", "shapes.v1.Thing")


def test_query_paths_go_through_singular_messages_only(shapes):
    count = shapes.binding("GET", "/v1/things:count")

    assert {"filter.state", "filter.after", "filter.after.seconds"} <= count.query
    assert not {f for f in count.query if f.startswith("filter.parts")}
    assert "filter" not in count.query  # a message: only its fields are parameters


def test_a_custom_verb_template_is_matched_before_the_plain_one(shapes):
    lua = known_fields.to_lua(shapes)

    peek = lua.index(known_fields.lua_pattern("/v1/things/{name}:peek"))
    plain = lua.index(known_fields.lua_pattern("/v1/things/{name}"))
    assert peek < plain


def test_lua_patterns_match_one_segment_per_variable():
    pattern = known_fields.lua_pattern("/api/v1/employees/{employee_id}:undelete")

    assert pattern == "^/api/v1/employees/[^/]+:undelete$"
    assert known_fields.lua_pattern("/v1/{name=shelves/*}/books") == "^/v1/shelves/[^/]+/books$"
    assert known_fields.lua_pattern("/files/{path=**}") == "^/files/.+$"


def test_a_literal_path_is_preferred_to_a_variable_in_the_same_place():
    templates = ["/api/v1/orders/{order_id}", "/api/v1/orders/active",
                 "/api/v1/employees/{employee_id}", "/api/v1/employees/{employee_id}:undelete"]

    ordered = sorted(templates, key=known_fields.precedence)
    assert ordered.index("/api/v1/orders/active") < ordered.index("/api/v1/orders/{order_id}")
    assert ordered.index("/api/v1/employees/{employee_id}:undelete") < \
        ordered.index("/api/v1/employees/{employee_id}")


def test_the_lua_table_names_every_node_and_binding(schema):
    lua = known_fields.to_lua(schema)

    assert all(f": {name}\n" in lua for name in schema.nodes)  # one line per node, named
    assert re.search(r'\["/api/v1/orders"\] = \{rpc = "/posmesh\.orders\.v1\.OrderService/CreateOrder", '
                     r"body = \d+, query = \{", lua)
