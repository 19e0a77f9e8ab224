"""The WebSocket protocol the POS apps speak: paths, the message envelope, parsing and validation of
client messages, the auth error vocabulary and the close codes (all documented in docs/realtime.md).

Every message, both ways, is one JSON text frame with the envelope
`{"id", "type", "data", "restaurant_id", "timestamp"}`. Nothing here does I/O.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from google.protobuf import json_format
from websockets.frames import Frame, Opcode

from posmesh.common import user_events

# Connection types and the paths they are served on (the query string is never read).
POS, KITCHEN, MANAGEMENT = "pos", "kitchen", "management"
CONNECTION_TYPES = (POS, KITCHEN, MANAGEMENT)
# A paired device's own token (no person) opens only the connections its type is for: a kitchen
# screen its restaurant's kitchen feed, a till the floor's; management data needs a person with a
# manager's role (a staff session on the device, or their own sign-in).
DEVICE_CONNECTION_TYPES = {"KITCHEN_SCREEN": frozenset({KITCHEN}), "TILL": frozenset({POS}),
                           "MANAGER_TABLET": frozenset({POS})}


def socket_identity(claims) -> str:
    """Whom a socket counts against (per-user limits, presence): the user, or `device:<id>` for
    a device's own token."""
    return claims.sub or f"device:{claims.device_id}"
PATH_PREFIXES = ("/ws/", "/api/v1/websocket/ws/")
# /ws/{type}/onboarding: a user without a restaurant yet (user-scoped: the user's own events).
ONBOARDING = "onboarding"
# What a socket is about: one restaurant's orders, or only the signed-in user's own events.
RESTAURANT_SCOPE, USER_SCOPE = "restaurant", "user"
_RESTAURANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

# Client → server message types.
AUTHENTICATE, REAUTH, PING, PONG = "authenticate", "reauth", "ping", "pong"
CLIENT_TYPES = frozenset({AUTHENTICATE, REAUTH, PING, PONG})

# Server → client message types.
AUTH_SUCCESS, AUTH_ERROR, TOKEN_EXPIRED = "auth_success", "auth_error", "token_expired"
ERROR, RESYNC_REQUIRED, REPLACED = "error", "resync_required", "replaced"
EVENT_TYPES = ("order.created", "order.updated", "order.status_changed", "menu.updated")
# Events about the signed-in user, on user-scoped (onboarding) sockets.
USER_EVENT_TYPES = ("invitation.received", "membership.granted", "membership.revoked",
                    "restaurant.created")

# What a client may declare in `authenticate.capabilities`: it refreshes in place with `reauth`
# (so it is sent the token_expired warning; see WS_TOKEN_WARNING_TO).
REAUTH_CAPABILITY = "reauth"


class CloseCode:
    """WebSocket close codes this service uses; docs/realtime.md explains each."""

    NORMAL = 1000  # also: REPLACED by a newer socket of the same session (do not reconnect)
    GOING_AWAY = 1001  # the process is shutting down: reconnect (to another process)
    POLICY_VIOLATION = 1008  # message flood or too many invalid messages
    MESSAGE_TOO_BIG = 1009  # a frame over WS_MAX_MESSAGE_BYTES (sent by the websockets library)
    UNAUTHENTICATED = 4001  # auth timeout, invalid/expired/revoked token, user id mismatch
    HEARTBEAT_TIMEOUT = 4002  # nothing heard from the client for 3 ping intervals
    FORBIDDEN = 4003  # wrong restaurant, revoked membership, role not allowed for the connection type
    SLOW_CONSUMER = 4008  # the client did not read fast enough; resume with last_event_id
    RATE_LIMITED = 4029  # too many connections (per IP, user or restaurant); see retry_after_ms


# Client actions an auth_error asks for.
REFRESH_TOKEN, LOGIN, SWITCH_RESTAURANT, RETRY, NONE = (
    "REFRESH_TOKEN", "LOGIN", "SWITCH_RESTAURANT", "RETRY", "NONE")

# reason → (action, close code). Unknown reasons are treated as an invalid token.
AUTH_FAILURES: dict[str, tuple[str, int]] = {
    "AUTH_TIMEOUT": (RETRY, CloseCode.UNAUTHENTICATED),
    "TOKEN_INVALID": (REFRESH_TOKEN, CloseCode.UNAUTHENTICATED),
    "TOKEN_EXPIRED": (REFRESH_TOKEN, CloseCode.UNAUTHENTICATED),
    "SESSION_REVOKED": (LOGIN, CloseCode.UNAUTHENTICATED),
    "USER_ID_MISMATCH": (LOGIN, CloseCode.UNAUTHENTICATED),
    "TENANT_MISMATCH": (SWITCH_RESTAURANT, CloseCode.FORBIDDEN),
    "NO_RESTAURANT_CONTEXT": (SWITCH_RESTAURANT, CloseCode.FORBIDDEN),
    "MEMBERSHIP_REVOKED": (LOGIN, CloseCode.FORBIDDEN),
    "ROLE_FORBIDDEN": (NONE, CloseCode.FORBIDDEN),
    "DEVICE_FORBIDDEN": (NONE, CloseCode.FORBIDDEN),
    "RATE_LIMITED": (RETRY, CloseCode.RATE_LIMITED),
    "TOO_MANY_CONNECTIONS": (RETRY, CloseCode.RATE_LIMITED),
}


def auth_failure(reason: str) -> tuple[str, int]:
    return AUTH_FAILURES.get(reason, (REFRESH_TOKEN, CloseCode.UNAUTHENTICATED))


class ProtocolError(Exception):
    """A client message that cannot be handled; answered with an `error` message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Target:
    """What an upgrade path asks for: /ws/{connection_type}/{restaurant_id}, or
    /ws/{connection_type}/onboarding (restaurant_id "": the user's own events only)."""

    connection_type: str
    restaurant_id: str

    @property
    def onboarding(self) -> bool:
        return not self.restaurant_id


def parse_path(raw_path: str) -> Target | None:
    """The connection type and restaurant of an upgrade path, or None; the query is dropped."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    for prefix in PATH_PREFIXES:
        if path.startswith(prefix):
            parts = path[len(prefix):].rstrip("/").split("/")
            if len(parts) == 2 and parts[0] in CONNECTION_TYPES and parts[1] == ONBOARDING:
                return Target(parts[0], "")
            if (len(parts) == 2 and parts[0] in CONNECTION_TYPES
                    and _RESTAURANT_ID.match(parts[1])):
                return Target(parts[0], parts[1])
            return None
    return None


@dataclass(frozen=True, slots=True)
class ClientMessage:
    type: str
    data: dict[str, Any]
    top: dict[str, Any]  # the whole decoded object (the app puts auth fields at the top level)

    def field(self, name: str) -> Any:
        """A field from `data`, else from the top level (the existing app sends both ways)."""
        value = self.data.get(name)
        return value if value is not None else self.top.get(name)


def parse_client_message(raw: str | bytes) -> ClientMessage:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raise ProtocolError("BINARY_NOT_SUPPORTED", "send JSON text frames; binary frames are not accepted")
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("INVALID_JSON", "the message is not valid JSON") from None
    if not isinstance(decoded, dict):
        raise ProtocolError("INVALID_MESSAGE", "a message must be a JSON object with a 'type'")
    kind = decoded.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("INVALID_MESSAGE", "the message has no 'type'")
    if kind not in CLIENT_TYPES:
        raise ProtocolError("UNKNOWN_TYPE",
                            f"unknown message type {kind[:40]!r}; one of {', '.join(sorted(CLIENT_TYPES))}")
    data = decoded.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError("INVALID_MESSAGE", "'data' must be a JSON object")
    return ClientMessage(kind, data, decoded)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    token: str
    user_id: str  # "" when missing or zero
    restaurant_id: str  # "" when not sent
    last_event_id: int | None  # None: resume where the session's previous socket got to
    last_event_id_invalid: bool = False  # a garbled one: the client is told to resync
    capabilities: frozenset[str] = frozenset()  # e.g. {"reauth"}


_ZERO_IDS = frozenset({"", "0", "null", "undefined", "none", "00000000-0000-0000-0000-000000000000"})


def _id_text(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return "" if value == 0 else str(value)
    if isinstance(value, float):
        return "" if value == 0 or not value.is_integer() else str(int(value))
    if isinstance(value, str):
        text = value.strip()
        return "" if text.lower() in _ZERO_IDS or set(text) == {"0"} else text[:128]
    return ""


def parse_event_id(value: Any) -> int | None:
    """A last_event_id as a sequence number; None when absent. Raises ProtocolError when garbled."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ProtocolError("INVALID_LAST_EVENT_ID", "last_event_id must be an event id such as \"42\"")
    if isinstance(value, int):
        sequence = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() \
            and len(value.strip()) <= 19:
        sequence = int(value.strip())
    else:
        raise ProtocolError("INVALID_LAST_EVENT_ID", "last_event_id must be an event id such as \"42\"")
    if sequence < 0 or sequence >= 2**63:
        raise ProtocolError("INVALID_LAST_EVENT_ID", "last_event_id is out of range")
    return sequence


def auth_request_user(message: ClientMessage) -> str:
    return _id_text(message.field("user_id"))


def auth_request(message: ClientMessage) -> AuthRequest:
    token = message.field("token")
    try:
        last_event_id, invalid = parse_event_id(message.field("last_event_id")), False
    except ProtocolError:
        last_event_id, invalid = None, True
    return AuthRequest(
        token=token.strip() if isinstance(token, str) else "",
        user_id=auth_request_user(message),
        restaurant_id=_id_text(message.field("restaurant_id")),
        last_event_id=last_event_id,
        last_event_id_invalid=invalid,
        capabilities=parse_capabilities(message.field("capabilities")),
    )


def parse_capabilities(value: Any) -> frozenset[str]:
    """Known capability names from a JSON list; anything else is ignored."""
    if not isinstance(value, list):
        return frozenset()
    return frozenset(item for item in value[:16] if item == REAUTH_CAPABILITY)


# Ids of server messages that are not events: unique per process, never a sequence number.
_PROCESS_TAG = os.urandom(3).hex()
_counter = itertools.count(1)


def control_id() -> str:
    return f"m-{_PROCESS_TAG}-{next(_counter)}"


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(kind: str, data: dict[str, Any], restaurant_id: str = "", *,
           message_id: str | None = None) -> bytes:
    """One server message, UTF-8 JSON, ready for a text frame."""
    envelope = {
        "id": message_id or control_id(),
        "type": kind,
        "data": data,
        "restaurant_id": restaurant_id or None,
        "timestamp": now_rfc3339(),
    }
    # backslashreplace: a lone surrogate echoed from a client's JSON ("\ud800") goes back out as
    # the same JSON escape instead of failing to encode.
    text = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace")


def error_frame(code: str, message: str, restaurant_id: str = "") -> bytes:
    return encode(ERROR, {"code": code, "message": message}, restaurant_id)


def auth_error_frame(reason: str, message: str, restaurant_id: str = "", *,
                     retry_after_ms: int = 0, action: str | None = None) -> bytes:
    default_action, close_code = auth_failure(reason)
    return encode(AUTH_ERROR, {
        "code": reason,
        "message": message,
        "action": action or default_action,
        "retry_after_ms": max(0, int(retry_after_ms)),
        "close_code": close_code,
    }, restaurant_id)


def replaced_frame(restaurant_id: str) -> bytes:
    return encode(REPLACED, {
        "code": "REPLACED",
        "message": "a newer connection of this session took over; this one is closed normally "
                   "and must not reconnect",
        "action": NONE,
        "close_code": CloseCode.NORMAL,
    }, restaurant_id)


def user_event_frame(event_id: str, kind: str, data: dict[str, Any]) -> bytes:
    """An event about the signed-in user (user-scoped sockets). Its id is not a sequence number
    and never a valid last_event_id."""
    return encode(kind, data, message_id=event_id)


def pong_frame(client_timestamp: Any, restaurant_id: str) -> bytes:
    return encode(PONG, {"timestamp": client_timestamp, "server_time": int(time.time() * 1000)},
                  restaurant_id)


def ping_frame() -> bytes:
    return encode(PING, {"timestamp": int(time.time() * 1000)})


def wire_text_frame(payload: bytes) -> bytes:
    """A complete, unmasked WebSocket text frame carrying `payload`. A server writes the same bytes
    to every socket (no compression is negotiated), so an event is framed once, not per socket."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


def order_event_frame(event) -> bytes:
    """An orders.v1.OrderEvent as the app's event message (JSON); built once per event."""
    data: dict[str, Any] = {"sequence": event.sequence}
    if event.HasField("order"):
        data["order"] = json_format.MessageToDict(
            event.order, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if event.previous_status:
        value = event.DESCRIPTOR.fields_by_name["previous_status"].enum_type.values_by_number.get(
            event.previous_status)
        data["previous_status"] = value.name if value is not None else event.previous_status
    envelope = {
        "id": event.id or str(event.sequence),
        "type": event.type,
        "data": data,
        "restaurant_id": event.restaurant_id,
        "timestamp": (event.create_time.ToJsonString() if event.HasField("create_time")
                      else now_rfc3339()),
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


# --- The protocol as data -----------------------------------------------------------------------
# What each message carries and what each code means. The AsyncAPI document
# (GET /api/v1/asyncapi.json, generated by stack/asyncapi.py) is built from these tables, and the
# unit tests hold them to the constants and encoders above.


@dataclass(frozen=True, slots=True)
class DataField:
    """One field of a message's `data`: a JSON Schema, or the proto message it is the JSON of."""

    name: str
    meaning: str
    schema: dict[str, Any] | None = None
    message: str = ""  # e.g. "posmesh.orders.v1.Order" (proto field names, int64 as strings)
    required: bool = True


@dataclass(frozen=True, slots=True)
class MessageSpec:
    type: str | tuple[str, ...]  # several types when they share one shape (the order events)
    summary: str
    data: tuple[DataField, ...] = ()

    @property
    def types(self) -> tuple[str, ...]:
        return self.type if isinstance(self.type, tuple) else (self.type,)


_TEXT = {"type": "string"}
_MILLISECONDS = {"type": "integer", "description": "milliseconds since the epoch"}
_TOKEN = DataField("token", "an access token (POST /api/v1/auth/login or /refresh)", _TEXT)
_USER = DataField("user_id", "optional: a missing or zero one is taken from the token; another "
                  "user's is refused", _TEXT, required=False)
_RESTAURANT_NAME = DataField("restaurant_name", "the restaurant's name", _TEXT)
_ROLE = DataField("role", "the user's role there", _TEXT)

# What each auth_error code means; its action and close code are AUTH_FAILURES'.
AUTH_ERROR_MEANINGS: dict[str, str] = {
    "AUTH_TIMEOUT": "no authenticate message within WS_AUTH_TIMEOUT_SECONDS of opening",
    "TOKEN_INVALID": "not a valid access token",
    "TOKEN_EXPIRED": "the token has expired (at connect, or on a live socket without a reauth)",
    "SESSION_REVOKED": "the session was signed out or revoked",
    "USER_ID_MISMATCH": "a user_id was sent and it is not the token's user",
    "TENANT_MISMATCH": "the token or the message is for another restaurant than the path's",
    "ROLE_FORBIDDEN": "the role may not open this connection type (management: owners, managers)",
    "MEMBERSHIP_REVOKED": "the membership was revoked, the role changed or the user was deactivated",
    "DEVICE_FORBIDDEN": "a device's own token opens only its type's connections (kitchen screen: "
                        "kitchen; till, manager tablet: pos)",
    "RATE_LIMITED": "too many connection attempts from this address: wait retry_after_ms",
    "TOO_MANY_CONNECTIONS": "the user or the restaurant is at its socket cap: wait retry_after_ms",
}
AUTH_ACTIONS: dict[str, str] = {
    REFRESH_TOKEN: "refresh the access token, then reconnect (or send reauth)",
    LOGIN: "sign in again",
    SWITCH_RESTAURANT: "switch to the path's restaurant (POST /api/v1/auth/switch-restaurant)",
    RETRY: "reconnect, after retry_after_ms",
    NONE: "nothing will help with this token",
}
# The `code` of an `error` message.
PROTOCOL_ERRORS: dict[str, str] = {
    "INVALID_JSON": "the message is not valid JSON",
    "INVALID_MESSAGE": "not a JSON object with a string `type` and an object `data`",
    "UNKNOWN_TYPE": "a `type` clients do not send",
    "BINARY_NOT_SUPPORTED": "a binary frame; send JSON text frames",
    "NOT_AUTHENTICATED": "anything but authenticate, ping or pong before authenticating",
    "RATE_LIMITED": "messages over the budget (20/s, bursts of 40) are dropped; slow down",
}
# Close code -> (the close frame's reason, what happened and what the client does).
CLOSE_CODES: dict[int, tuple[str, str]] = {
    CloseCode.NORMAL: ("REPLACED", "a newer socket of this session and connection type took over "
                       "(after a `replaced` message): do not reconnect"),
    CloseCode.GOING_AWAY: ("none, or CATCH_UP_FAILED", "the process is shutting down (or could "
                           "not replay): reconnect (Envoy picks another process); the session "
                           "resumes where it was"),
    1007: ("none", "a text frame that is not UTF-8 (closed by the WebSocket library)"),
    CloseCode.POLICY_VIOLATION: ("MESSAGE_FLOOD, TOO_MANY_INVALID_MESSAGES, BAD_PATH",
                                 "over 100 messages beyond the budget, or over 20 invalid ones"),
    CloseCode.MESSAGE_TOO_BIG: ("none", "a frame over WS_MAX_MESSAGE_BYTES"),
    1011: ("INTERNAL_ERROR", "a bug on the server's side: reconnect"),
    CloseCode.UNAUTHENTICATED: ("the auth error code, or the revocation's reason",
                                "unauthenticated (after an auth_error): see its action"),
    CloseCode.HEARTBEAT_TIMEOUT: ("HEARTBEAT_TIMEOUT", "nothing heard from the client for 3 "
                                  "ping intervals"),
    CloseCode.FORBIDDEN: ("the auth error code, or the revocation's reason",
                          "forbidden (after an auth_error): see its action"),
    CloseCode.SLOW_CONSUMER: ("SLOW_CONSUMER", "the client did not read fast enough: reconnect "
                              "with last_event_id"),
    CloseCode.RATE_LIMITED: ("RATE_LIMITED, TOO_MANY_CONNECTIONS",
                             "wait retry_after_ms from the auth_error, then reconnect"),
}
# HTTP answers to an upgrade that is refused before any WebSocket exists: status -> (code, when).
UPGRADE_REFUSALS: dict[int, tuple[str, str]] = {
    403: ("ORIGIN_NOT_ALLOWED", "an Origin header not in CORS_ALLOWED_ORIGINS (browsers on other "
          "sites; native apps send none)"),
    404: ("NOT_FOUND", "not /ws/{pos|kitchen|management}/{restaurant_id}"),
    503: ("SHUTTING_DOWN", "the process is draining: connect again"),
}

CLIENT_MESSAGES: tuple[MessageSpec, ...] = (
    MessageSpec(AUTHENTICATE, "The first message: who is connecting, and where to resume. The "
                "fields may also be at the top level of the message.", (
        _TOKEN, _USER,
        DataField("restaurant_id", "must be the path's restaurant when sent", _TEXT, required=False),
        DataField("last_event_id", "the id of the last event processed: every later event is sent "
                  "first, once each, in order. Without it the socket resumes where the session's "
                  "previous socket of this type was confirmed to have delivered",
                  {"type": ["string", "integer"]}, required=False),
        DataField("capabilities", f"what the client can do: `{REAUTH_CAPABILITY}` (it refreshes "
                  "its token in place with reauth)",
                  {"type": "array", "items": {"type": "string"}}, required=False),
    )),
    MessageSpec(REAUTH, "A fresh access token of the same user and restaurant, before the current "
                "one expires; the socket stays open.", (_TOKEN, _USER)),
    MessageSpec(PING, "Asks for a pong.", (
        DataField("timestamp", "echoed in the pong", {}, required=False),)),
    MessageSpec(PONG, "The answer to a server ping; it confirms every event sent before that "
                "ping (where a later socket of the session resumes)."),
)
SERVER_MESSAGES: tuple[MessageSpec, ...] = (
    MessageSpec(AUTH_SUCCESS, "The socket is authenticated (also the answer to a reauth).", (
        DataField("user_id", "the token's user", _TEXT),
        DataField("restaurant_id", "the restaurant (null on a user-scoped socket)",
                  {"type": ["string", "null"]}),
        DataField("role", "the role in the restaurant", _TEXT),
        DataField("connection_id", "this socket's id", _TEXT),
        DataField("connection_type", "pos, kitchen or management",
                  {"type": "string", "enum": list(CONNECTION_TYPES)}),
        DataField("scope", "`restaurant`: the restaurant's events; `user`: only the user's own "
                  "(onboarding: a token without a restaurant)",
                  {"type": "string", "enum": [RESTAURANT_SCOPE, USER_SCOPE]}),
        DataField("expires_in", "seconds until the token expires", {"type": "integer"}),
    )),
    MessageSpec(AUTH_ERROR, "Authentication failed; unless it answers a reauth, the socket is "
                "closed next with `close_code`.", (
        DataField("code", "why", {"type": "string", "enum": list(AUTH_ERROR_MEANINGS)}),
        DataField("message", "for people", _TEXT),
        DataField("action", "what the client should do",
                  {"type": "string", "enum": list(AUTH_ACTIONS)}),
        DataField("retry_after_ms", "how long to wait before reconnecting (0: no wait)",
                  {"type": "integer", "minimum": 0}),
        DataField("close_code", "the WebSocket close code that follows",
                  {"type": "integer",
                   "enum": sorted({close for _, close in AUTH_FAILURES.values()})}),
    )),
    MessageSpec(PING, "A heartbeat, every WS_PING_INTERVAL_SECONDS and within a quarter second of "
                "events no answered ping covers yet; answer with a pong.", (
        DataField("timestamp", "server time", _MILLISECONDS),)),
    MessageSpec(PONG, "The answer to a client ping.", (
        DataField("timestamp", "the ping's timestamp, echoed", {}, required=False),
        DataField("server_time", "server time", _MILLISECONDS),
    )),
    MessageSpec(TOKEN_EXPIRED, "The token expires soon: refresh it and send a reauth (or "
                "reconnect); without one the socket closes with 4001 at the expiry. Sent to every "
                "socket, or only to reauth clients (WS_TOKEN_WARNING_TO).", (
        DataField("seconds_until_expiry", "seconds left", {"type": "integer", "minimum": 0}),
        DataField("expires_at", "the token's expiry, seconds since the epoch", {"type": "integer"}),
        DataField("message", "for people", _TEXT),
    )),
    MessageSpec(EVENT_TYPES, "A change in the restaurant; the message id is the event's sequence "
                "number. Events arrive in order, once each per socket.", (
        DataField("sequence", "the per-restaurant sequence number (also the message id)",
                  {"type": "integer", "minimum": 1}),
        DataField("order", "the order after the change (order events only)",
                  message="posmesh.orders.v1.Order", required=False),
        DataField("previous_status", "the status before the change (order.status_changed only)",
                  _TEXT, required=False),
    )),
    MessageSpec(user_events.MEMBERSHIP_REVOKED, "User-scoped sockets: the user's membership in "
                "a restaurant ended. Its id starts with `u-` and is not resumable.", (
        DataField("restaurant_id", "the restaurant", _TEXT),)),
    MessageSpec(user_events.MEMBERSHIP_GRANTED, "User-scoped sockets: the user was added to a "
                "restaurant, or their role there changed: switch restaurant to it. Its id starts "
                "with `u-`.", (
        DataField("restaurant_id", "the restaurant", _TEXT), _RESTAURANT_NAME, _ROLE,
        DataField("previous_role", "the role before (empty when new)", _TEXT, required=False),
    )),
    MessageSpec(user_events.RESTAURANT_CREATED, "User-scoped sockets: the user created a "
                "restaurant and owns it. Its id starts with `u-`.", (
        DataField("restaurant_id", "the restaurant", _TEXT), _RESTAURANT_NAME, _ROLE)),
    MessageSpec(user_events.INVITATION_RECEIVED, "User-scoped sockets: the user was invited to a "
                "restaurant. Its id starts with `u-`.", (
        DataField("restaurant_id", "the restaurant", _TEXT, required=False),
        DataField("restaurant_name", "the restaurant's name", _TEXT, required=False),
        DataField("role", "the role offered", _TEXT, required=False),
    )),
    MessageSpec(REPLACED, "A newer socket of this session and connection type took over; this one "
                "is closed next with 1000 REPLACED and must not reconnect.", (
        DataField("code", "always REPLACED", {"const": "REPLACED"}),
        DataField("message", "for people", _TEXT),
        DataField("action", "always NONE", {"const": NONE}),
        DataField("close_code", "always 1000", {"const": CloseCode.NORMAL}),
    )),
    MessageSpec(RESYNC_REQUIRED, "The missed events are no longer available: reload "
                "(GET /api/v1/orders/active) and keep listening; live events follow.", (
        DataField("reason", "for people", _TEXT),)),
    MessageSpec(ERROR, "A message the server could not handle; the socket stays open.", (
        DataField("code", "why", {"type": "string", "enum": list(PROTOCOL_ERRORS)}),
        DataField("message", "for people", _TEXT),
    )),
)
