"""The AsyncAPI document describes the WebSocket protocol the realtime service speaks: it is built
from services/realtime/protocol.py, whose tables must agree with the constants and encoders the
server uses, and the frames those encoders write conform to it."""

from __future__ import annotations

import ast
import json
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from posmesh.orders.v1 import orders_pb2
from services.realtime import protocol
from services.realtime.protocol import CloseCode
from stack import asyncapi, codegen, contract

REALTIME = Path(protocol.__file__).parent


@lru_cache(maxsize=1)
def document() -> dict:
    return asyncapi.build(contract.load(codegen.DESCRIPTOR_SET))


def resolve(reference: str) -> dict:
    node = document()
    for part in reference.removeprefix("#/").split("/"):
        node = node[part]
    return node


def payload_validator(message: str) -> jsonschema.Draft7Validator:
    """The message's payload schema, with the document's components to resolve references."""
    payload = document()["components"]["messages"][message]["payload"]
    root = {**payload, "components": document()["components"]}
    return jsonschema.Draft7Validator(root)


def frame(raw: bytes) -> dict:
    return json.loads(raw)


def test_it_is_asyncapi_3_with_every_reference_resolving():
    def references(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from references(value)
        elif isinstance(node, list):
            for item in node:
                yield from references(item)

    assert document()["asyncapi"] == "3.1.0"
    found = list(references(document()))
    assert len(found) > 30
    for reference in found:
        assert resolve(reference) is not None, reference


def test_the_channels_are_the_paths_the_server_accepts():
    addresses = [channel["address"] for channel in document()["channels"].values()]

    assert addresses == [f"{prefix}{{connection_type}}/{{restaurant_id}}"
                         for prefix in protocol.PATH_PREFIXES]
    for address in addresses:
        for kind in protocol.CONNECTION_TYPES:
            path = address.replace("{connection_type}", kind)
            assert protocol.parse_path(path.replace("{restaurant_id}", "r-1")) == \
                protocol.Target(kind, "r-1")
            assert protocol.parse_path(path.replace("{restaurant_id}", protocol.ONBOARDING)) == \
                protocol.Target(kind, "")


def test_every_message_type_of_the_server_is_described_once_per_direction():
    client = {t for spec in protocol.CLIENT_MESSAGES for t in spec.types}
    server = {t for spec in protocol.SERVER_MESSAGES for t in spec.types}
    described = [message["name"] for message in document()["components"]["messages"].values()]

    assert client == protocol.CLIENT_TYPES
    assert server == {protocol.AUTH_SUCCESS, protocol.AUTH_ERROR, protocol.TOKEN_EXPIRED,
                      protocol.ERROR, protocol.RESYNC_REQUIRED, protocol.REPLACED, protocol.PING,
                      protocol.PONG, *protocol.EVENT_TYPES, *protocol.USER_EVENT_TYPES}
    assert sorted(described) == sorted([*client, *server])


def test_clients_send_what_the_server_receives_and_authenticate_is_answered():
    operations = document()["operations"]
    receive = {op["messages"][0]["$ref"].rsplit("/", 1)[1] for op in operations.values()
               if op["action"] == "receive"}
    authenticate = operations["receive_authenticate"]

    assert receive == {"authenticate", "reauth", "clientPing", "clientPong"}
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in authenticate["reply"]["messages"]] == [
        "auth_success", "auth_error"]


def test_payload_schemas_are_valid_json_schemas():
    for message in document()["components"]["messages"].values():
        jsonschema.Draft7Validator.check_schema(message["payload"])


def _auth_codes_sent() -> set[str]:
    """Every literal auth error code the realtime service writes: AuthFailed(...),
    auth_error_frame(...), _reauth_failed(...), and the token reasons it passes on."""
    sent = set()
    for path in REALTIME.glob("*.py"):
        for call in ast.walk(ast.parse(path.read_text())):
            name = getattr(call, "func", None)
            name = getattr(name, "attr", getattr(name, "id", None))
            if isinstance(call, ast.Call) and call.args and name in (
                    "AuthFailed", "auth_error_frame", "_reauth_failed"):
                sent |= {node.value for node in ast.walk(call.args[0])
                         if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return sent | {"TOKEN_INVALID", "TOKEN_EXPIRED", "SESSION_REVOKED"}  # posmesh.common.tokens


def test_the_documented_auth_errors_are_the_servers_with_their_actions_and_close_codes():
    channel = document()["channels"][asyncapi.CHANNEL]["description"]
    auth_error = document()["components"]["messages"]["auth_error"]["payload"]
    codes = auth_error["properties"]["data"]["properties"]["code"]["enum"]

    assert set(codes) <= set(protocol.AUTH_FAILURES)
    assert {"AUTH_TIMEOUT", "MEMBERSHIP_REVOKED"} <= _auth_codes_sent()
    assert _auth_codes_sent() == set(codes)
    assert "USER_ID_MISSING" not in codes  # a missing user_id is taken from the token
    assert set(protocol.AUTH_ACTIONS) >= {action for action, _ in protocol.AUTH_FAILURES.values()}
    for code in codes:
        action, close = protocol.auth_failure(code)
        assert f"| `{code}` | {protocol.AUTH_ERROR_MEANINGS[code]} | `{action}` | {close} |" in channel


def test_every_close_code_the_server_uses_is_documented():
    documented = {entry["code"] for entry in
                  document()["channels"][asyncapi.CHANNEL]["x-close-codes"]}
    constants = {value for name, value in vars(CloseCode).items() if name.isupper()}

    assert constants <= documented
    assert {close for _, close in protocol.AUTH_FAILURES.values()} <= documented


def _literal_codes(path: Path, function: str, *, first_argument_of: str) -> set[str]:
    tree = ast.parse(path.read_text())
    scope = tree if function == "*" else next(
        node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == function)
    return {call.args[0].value for call in ast.walk(scope)
            if isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Constant)
            and getattr(call.func, "attr", getattr(call.func, "id", None)) == first_argument_of}


def test_every_protocol_error_code_the_server_sends_is_documented():
    sent = (_literal_codes(REALTIME / "protocol.py", "parse_client_message",
                           first_argument_of="ProtocolError")
            | _literal_codes(REALTIME / "connection.py", "*", first_argument_of="send_error"))
    documented = document()["components"]["messages"]["error"]["payload"]["properties"]["data"][
        "properties"]["code"]["enum"]

    assert {"INVALID_JSON", "NOT_AUTHENTICATED"} <= sent
    assert sent <= set(documented)


@pytest.mark.parametrize("message, raw", [
    ("serverPing", protocol.ping_frame()),
    ("serverPong", protocol.pong_frame(1700000000000, "r-1")),
    ("error", protocol.error_frame("UNKNOWN_TYPE", "unknown message type", "r-1")),
    ("auth_error", protocol.auth_error_frame("TOKEN_EXPIRED", "expired", "r-1")),
    ("auth_error", protocol.auth_error_frame("TOO_MANY_CONNECTIONS", "full", retry_after_ms=5000)),
    ("resync_required", protocol.encode(protocol.RESYNC_REQUIRED, {"reason": "gone"}, "r-1")),
    ("replaced", protocol.replaced_frame("r-1")),
    ("membership.granted", protocol.user_event_frame("u-1", "membership.granted", {
        "restaurant_id": "r-1", "restaurant_name": "Bistro", "role": "staff",
        "previous_role": ""})),
    ("restaurant.created", protocol.user_event_frame("u-2", "restaurant.created", {
        "restaurant_id": "r-1", "restaurant_name": "Bistro", "role": "owner"})),
])
def test_frames_the_server_encodes_conform_to_their_message(message, raw):
    payload_validator(message).validate(frame(raw))


def test_an_order_event_frame_conforms_with_the_order_as_proto_json():
    stamp = Timestamp()
    stamp.FromJsonString("2025-01-31T12:00:00Z")
    order = orders_pb2.Order(id="o-1", restaurant_id="r-1", status=orders_pb2.PREPARING,
                             order_type=orders_pb2.TAKEAWAY, total_minor=1250, version=3,
                             create_time=stamp, update_time=stamp,
                             lines=[orders_pb2.OrderLine(id="l-1", quantity=2, unit_price_minor=625)])
    event = orders_pb2.OrderEvent(id="7", restaurant_id="r-1", sequence=7,
                                  type="order.status_changed", order=order,
                                  previous_status=orders_pb2.READY, create_time=stamp)
    menu = orders_pb2.OrderEvent(id="8", restaurant_id="r-1", sequence=8, type="menu.updated",
                                 create_time=stamp)

    payload_validator("order.status_changed").validate(frame(protocol.order_event_frame(event)))
    payload_validator("menu.updated").validate(frame(protocol.order_event_frame(menu)))
    with pytest.raises(jsonschema.ValidationError):
        payload_validator("order.created").validate(frame(protocol.order_event_frame(event)))
