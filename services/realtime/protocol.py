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

# Connection types and the paths they are served on (the query string is never read).
POS, KITCHEN, MANAGEMENT = "pos", "kitchen", "management"
CONNECTION_TYPES = (POS, KITCHEN, MANAGEMENT)
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
