"""The realtime wire protocol: paths, client message parsing, the auth fields the existing React
Native app sends, event frames, auth errors and close codes, revocations, and message limits."""

from __future__ import annotations

import json

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from posmesh.common.settings import Settings
from posmesh.orders.v1 import orders_pb2
from services.realtime import protocol
from services.realtime.connection import ConnectionIndex, bearer_token
from services.realtime.limits import (
    DEV_LOOPBACK_MULTIPLIER,
    MAX_DROPPED_MESSAGES,
    MESSAGE_BURST,
    LimitPolicy,
    MessageBudget,
    PendingHandshakes,
)
from services.realtime.protocol import CloseCode, ProtocolError, Target
from posmesh.common.revocations import parse_message
from services.realtime.revocations import Revocation


@pytest.mark.parametrize("path, expected", [
    ("/ws/pos/r1", Target("pos", "r1")),
    ("/ws/kitchen/abc-123", Target("kitchen", "abc-123")),
    ("/ws/management/r1/", Target("management", "r1")),
    ("/api/v1/websocket/ws/pos/r1", Target("pos", "r1")),
    ("/ws/pos/r1?token=abc&user_id=7", Target("pos", "r1")),
    ("/ws/admin/r1", None),
    ("/ws/pos", None),
    ("/ws/pos/r1/extra", None),
    ("/ws/pos/..%2f", None),
    ("/ws/pos/" + "x" * 65, None),
    ("/other/pos/r1", None),
])
def test_upgrade_paths_name_a_connection_type_and_restaurant_and_ignore_the_query(path, expected):
    assert protocol.parse_path(path) == expected


@pytest.mark.parametrize("raw, code", [
    (b"\x00\x01binary", "BINARY_NOT_SUPPORTED"),
    ("not json", "INVALID_JSON"),
    ("[1, 2]", "INVALID_MESSAGE"),
    ('{"data": {}}', "INVALID_MESSAGE"),
    ('{"type": 5}', "INVALID_MESSAGE"),
    ('{"type": "subscribe_everything"}', "UNKNOWN_TYPE"),
    ('{"type": "ping", "data": [1]}', "INVALID_MESSAGE"),
    ("[" * 100000 + "]" * 100000, "INVALID_JSON"),
])
def test_malformed_client_messages_get_a_machine_readable_code(raw, code):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_client_message(raw)
    assert caught.value.code == code


def test_authenticate_with_fields_at_the_top_level_as_the_existing_app_sends_them():
    message = protocol.parse_client_message(json.dumps({
        "type": "authenticate", "token": "tok", "user_id": "u-1", "restaurant_id": "r-1",
        "timestamp": 1700000000000}))
    request = protocol.auth_request(message)
    assert (request.token, request.user_id, request.restaurant_id) == ("tok", "u-1", "r-1")
    assert request.last_event_id is None


def test_authenticate_with_fields_under_data():
    message = protocol.parse_client_message(json.dumps({
        "type": "authenticate", "data": {"token": "tok", "user_id": "u-1", "last_event_id": "41"}}))
    request = protocol.auth_request(message)
    assert (request.token, request.user_id, request.last_event_id) == ("tok", "u-1", 41)


@pytest.mark.parametrize("user_id", [None, "", "0", 0, "000", "null", "undefined", False, {},
                                     "00000000-0000-0000-0000-000000000000"])
def test_a_zero_or_missing_user_id_reads_as_none(user_id):
    body = {"type": "authenticate", "token": "tok"}
    if user_id is not None:
        body["user_id"] = user_id
    assert protocol.auth_request(protocol.parse_client_message(json.dumps(body))).user_id == ""


@pytest.mark.parametrize("value, expected", [("7", 7), (7, 7), ("", None), (None, None)])
def test_last_event_id_is_a_sequence_number(value, expected):
    assert protocol.parse_event_id(value) == expected


@pytest.mark.parametrize("value", ["abc", "-1", -1, "1.5", 1.5, True, "9" * 30, "٣"])
def test_a_garbled_last_event_id_asks_the_client_to_resync(value):
    with pytest.raises(ProtocolError):
        protocol.parse_event_id(value)
    message = protocol.parse_client_message(json.dumps({
        "type": "authenticate", "token": "t", "user_id": "u", "last_event_id": value}))
    request = protocol.auth_request(message)
    assert request.last_event_id is None and request.last_event_id_invalid


def test_every_server_message_has_the_apps_envelope():
    decoded = json.loads(protocol.encode("pong", {"timestamp": 1}, "r-1"))
    assert set(decoded) == {"id", "type", "data", "restaurant_id", "timestamp"}
    assert decoded["type"] == "pong" and decoded["restaurant_id"] == "r-1"
    assert decoded["timestamp"].endswith("Z")
    assert not decoded["id"].isdigit(), "control ids must never look like event ids"


def test_an_order_event_becomes_the_apps_event_message_with_proto_field_names():
    created = Timestamp()
    created.FromJsonString("2025-01-02T03:04:05.678Z")
    event = orders_pb2.OrderEvent(
        id="42", restaurant_id="r-1", sequence=42, type="order.status_changed",
        previous_status=orders_pb2.OPEN, create_time=created,
        order=orders_pb2.Order(id="o-1", restaurant_id="r-1", status=orders_pb2.PREPARING,
                               total_minor=1250, ticket_number=3,
                               lines=[orders_pb2.OrderLine(menu_item_id="m-1", quantity=2)]))
    decoded = json.loads(protocol.order_event_frame(event))
    assert decoded["id"] == "42"
    assert decoded["type"] == "order.status_changed"
    assert decoded["restaurant_id"] == "r-1"
    assert decoded["timestamp"] == "2025-01-02T03:04:05.678Z"
    order = decoded["data"]["order"]
    assert order["status"] == "PREPARING" and order["total_minor"] == "1250"
    assert order["ticket_number"] == 3 and order["lines"][0]["menu_item_id"] == "m-1"
    assert order["notes"] == "", "zero values are printed for mobile clients"
    assert decoded["data"]["previous_status"] == "OPEN"
    assert decoded["data"]["sequence"] == 42


@pytest.mark.parametrize("reason, action, close_code", [
    ("AUTH_TIMEOUT", "RETRY", CloseCode.UNAUTHENTICATED),
    ("TOKEN_INVALID", "REFRESH_TOKEN", 4001),
    ("TOKEN_EXPIRED", "REFRESH_TOKEN", 4001),
    ("SESSION_REVOKED", "LOGIN", 4001),
    ("USER_ID_MISMATCH", "LOGIN", 4001),
    ("TENANT_MISMATCH", "SWITCH_RESTAURANT", 4003),
    ("ROLE_FORBIDDEN", "NONE", 4003),
    ("MEMBERSHIP_REVOKED", "LOGIN", 4003),
    ("RATE_LIMITED", "RETRY", 4029),
    ("TOO_MANY_CONNECTIONS", "RETRY", 4029),
    ("SOMETHING_NEW", "REFRESH_TOKEN", 4001),
])
def test_auth_errors_carry_code_action_retry_and_the_close_code_that_follows(reason, action,
                                                                             close_code):
    decoded = json.loads(protocol.auth_error_frame(reason, "why", "r-1", retry_after_ms=1500))
    assert decoded["type"] == "auth_error"
    assert decoded["data"] == {"code": reason, "message": "why", "action": action,
                               "retry_after_ms": 1500, "close_code": close_code}


def test_bearer_header_parsing():
    assert bearer_token("Bearer abc.def") == "abc.def"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic xyz") == ""
    assert bearer_token("") == ""


@pytest.mark.parametrize("reason, code", [
    # The reasons the auth service publishes (services/auth/rules.py).
    ("LOGOUT", 4001), ("LOGOUT_ALL", 4001), ("REFRESH_REUSED", 4001),
    ("RESTAURANT_SWITCHED", 4001), ("ADMIN_REVOKED", 4001), ("SESSION_ENDED", 4001),
    ("OTHER_SESSIONS_ENDED", 4001), ("PASSWORD_CHANGED", 4001), ("PASSWORD_RESET", 4001),
    ("ACCOUNT_CLAIMED", 4001),
    ("MEMBERSHIP_REVOKED", 4003), ("ROLE_CHANGED", 4003), ("EMPLOYEE_DEACTIVATED", 4003),
    ("user_deactivated", 4003), ("", 4001),
])
def test_revocations_close_with_4001_for_sessions_and_4003_for_memberships(reason, code):
    message = parse_message(json.dumps({"sid": "s", "user_id": "u", "restaurant_id": "r",
                                        "reason": reason}))
    assert message is not None
    revocation = Revocation.of(message)
    assert revocation.close_code == code
    assert revocation.close_reason == (reason.upper() or "REVOKED")


class _Conn:
    def __init__(self, sid: str, user: str, restaurant: str) -> None:
        self.session_id, self.user_id = sid, user
        self.target = Target("pos", restaurant)

    @property
    def restaurant_id(self) -> str:
        return self.target.restaurant_id


def test_a_revocation_matches_its_session_or_else_the_users_sockets_in_its_restaurant():
    index = ConnectionIndex()
    a, b, c = _Conn("s1", "u1", "r1"), _Conn("s2", "u1", "r2"), _Conn("s3", "u2", "r1")
    for conn in (a, b, c):
        index.add(conn)
    assert index.matching("s1", "u1", "r1") == [a]
    assert set(index.matching("", "u1", "")) == {a, b}
    assert index.matching("", "u1", "r2") == [b]
    index.rekey(a, "s9")
    assert index.matching("s1", "", "") == [] and index.matching("s9", "", "") == [a]
    index.remove(a)
    assert index.matching("s9", "", "") == [] and index.by_user["u1"] == {b}


def test_loopback_clients_get_the_development_profile_only_in_development():
    dev = Settings(POSMESH_ENV="development")
    prod = Settings(POSMESH_ENV="production")
    per_minute = dev.ws_max_connections_per_ip_per_minute
    assert LimitPolicy.for_client(dev, "127.0.0.1").attempts_per_ip_per_minute == \
        per_minute * DEV_LOOPBACK_MULTIPLIER
    assert LimitPolicy.for_client(dev, "203.0.113.9").attempts_per_ip_per_minute == per_minute
    assert LimitPolicy.for_client(prod, "127.0.0.1").attempts_per_ip_per_minute == per_minute
    assert LimitPolicy.for_client(prod, "::1").connections_per_user == prod.ws_max_connections_per_user


def test_message_budget_allows_a_burst_then_counts_drops_until_exhausted():
    budget = MessageBudget()
    assert all(budget.take() for _ in range(int(MESSAGE_BURST)))
    assert not budget.take()
    for _ in range(MAX_DROPPED_MESSAGES):
        budget.take()
    assert budget.exhausted


def test_pending_handshakes_are_capped_per_ip_and_released():
    pending = PendingHandshakes()
    assert pending.try_add("1.2.3.4", 2) and pending.try_add("1.2.3.4", 2)
    assert not pending.try_add("1.2.3.4", 2)
    assert pending.try_add("5.6.7.8", 2)
    pending.remove("1.2.3.4")
    assert pending.try_add("1.2.3.4", 2)
    assert pending.total == 3
