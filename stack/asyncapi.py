"""The WebSocket protocol of live screens as an AsyncAPI 3 document, generated from the tables the
realtime service itself uses (services/realtime/protocol.py: paths, message types, auth error
codes with their actions and close codes, protocol error codes, close codes) and from the contract
(the order inside events is the proto's JSON). Served at GET /api/v1/asyncapi.json.

The document describes the server: it `receive`s what clients send and `send`s the rest.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from services.realtime import protocol
from services.realtime.protocol import DataField, MessageSpec
from stack.contract import Contract
from stack.json_schema import Schemas

ASYNCAPI_VERSION = "3.1.0"
CHANNEL = "screens"
LEGACY_CHANNEL = "screensLegacy"


def _message_name(kind: str, client: bool) -> str:
    shared = {protocol.PING, protocol.PONG}  # both sides send these
    return (("client" if client else "server") + kind.capitalize()) if kind in shared else kind


def _field_schema(field: DataField, schemas: Schemas) -> dict[str, Any]:
    schema = schemas.of_message(field.message) if field.message else dict(field.schema or {})
    return {**schema, "description": field.meaning}


def _payload(spec: MessageSpec, kind: str, client: bool, schemas: Schemas) -> dict[str, Any]:
    data = {
        "type": "object",
        "properties": {field.name: _field_schema(field, schemas) for field in spec.data},
    }
    required = [field.name for field in spec.data if field.required]
    if required:
        data["required"] = required
    envelope: dict[str, Any] = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": (
                "any id the client chooses" if client else
                "the event's sequence number for restaurant events; `u-...` for user events and "
                "`m-...` for other messages (neither is a valid last_event_id)")},
            "type": {"const": kind},
            "data": data,
            "restaurant_id": {"type": ["string", "null"], "description": "the restaurant"},
            "timestamp": ({"description": "any value; not read"} if client else
                          {"type": "string", "format": "date-time",
                           "description": "RFC 3339, UTC"}),
        },
        "required": ["type"] if client else ["id", "type", "data", "restaurant_id", "timestamp"],
    }
    return envelope


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _auth_errors_table() -> str:
    rows = []
    for code, meaning in protocol.AUTH_ERROR_MEANINGS.items():
        action, close = protocol.auth_failure(code)
        rows.append((f"`{code}`", meaning, f"`{action}`", close))
    return _table(("code", "when", "action", "close"), rows)


def _channel_description() -> str:
    actions = _table(("action", "what the client does"),
                     [(f"`{action}`", meaning) for action, meaning in protocol.AUTH_ACTIONS.items()])
    closes = _table(("close code", "reason", "meaning"),
                    [(code, reason, meaning) for code, (reason, meaning)
                     in sorted(protocol.CLOSE_CODES.items())])
    refusals = _table(("HTTP", "code", "when"),
                      [(status, f"`{code}`", when) for status, (code, when)
                       in sorted(protocol.UPGRADE_REFUSALS.items())])
    errors = _table(("code", "meaning"),
                    [(f"`{code}`", meaning) for code, meaning in protocol.PROTOCOL_ERRORS.items()])
    return "\n\n".join([
        "One socket per screen: `pos` and `kitchen` for any member of the restaurant, "
        "`management` for owners and managers; `/ws/{connection_type}/onboarding` for a user "
        "with no restaurant yet. Every message, both ways, is one JSON text frame with the "
        "envelope `{\"id\", \"type\", \"data\", \"restaurant_id\", \"timestamp\"}`; the query "
        "string is ignored.",
        "**Authentication.** Within WS_AUTH_TIMEOUT_SECONDS of opening, send `authenticate` "
        "(or open the socket with `Authorization: Bearer <token>`, and optionally "
        "`Last-Event-ID`, to be authenticated at once). The user is always the token's subject; "
        "the token's restaurant must be the path's. On `onboarding`, or with a token without a "
        "restaurant, the socket is user-scoped (`scope: user`): it gets only the user's own "
        "events (`membership.granted`...). The answer is `auth_success`, or `auth_error` "
        "followed by a close with its `close_code`:",
        _auth_errors_table(), actions,
        "**One live socket per session** and connection type (WS_MAX_SOCKETS_PER_SESSION): a "
        "newer socket replaces the older, which gets `replaced` and a normal close, 1000 "
        "`REPLACED`; do not reconnect it.",
        "**Resuming.** Send the id of the last event processed as `last_event_id`: every later "
        "event follows exactly once, in order, then live events, with no gap. Without it, a "
        "socket resumes where its session's previous socket of the same type was confirmed to "
        "have delivered (a `pong` confirms the events sent before its `ping`), so across "
        "reconnects every event arrives at least once, with its id. When the events are no "
        "longer available (or the id is beyond the newest or garbled), `resync_required` comes "
        "first, then live events.",
        "**Tokens on a live socket.** WS_TOKEN_WARNING_SECONDS before the token expires the server "
        "sends `token_expired`; answer with `reauth` carrying a fresh token (or reconnect). "
        "Logout, revocation or a role change close the affected sockets within a second.",
        "**Close codes.**", closes,
        "**Upgrade refusals** (plain HTTP answers, JSON `{\"code\", \"message\"}`):", refusals,
        "**Protocol errors** (`error` messages; the socket stays open):", errors,
    ])


def build(contract: Contract) -> dict[str, Any]:
    schemas = Schemas(contract)
    messages: dict[str, Any] = {}
    receives: list[tuple[str, MessageSpec]] = []
    sends: list[tuple[str, MessageSpec]] = []
    for client, specs in ((True, protocol.CLIENT_MESSAGES), (False, protocol.SERVER_MESSAGES)):
        for spec in specs:
            for kind in spec.types:
                name = _message_name(kind, client)
                messages[name] = {
                    "name": kind, "title": f"{kind} ({'client' if client else 'server'})",
                    "summary": spec.summary, "contentType": "application/json",
                    "payload": _payload(spec, kind, client, schemas)}
                (receives if client else sends).append((name, spec))
    channel_messages = {name: {"$ref": f"#/components/messages/{name}"} for name in messages}
    address_parameters = {
        "connection_type": {"enum": list(protocol.CONNECTION_TYPES),
                            "description": "pos, kitchen (any member) or management (owners "
                                           "and managers)"},
        "restaurant_id": {"description": "the restaurant (the token's restaurant must be it), or "
                                         "`onboarding` for a user-scoped socket"},
    }
    prefix, legacy_prefix = protocol.PATH_PREFIXES
    channels = {
        CHANNEL: {
            "address": f"{prefix}{{connection_type}}/{{restaurant_id}}",
            "title": "A live screen",
            "description": _channel_description(),
            "parameters": address_parameters,
            "messages": channel_messages,
            "x-close-codes": [{"code": code, "reason": reason, "meaning": meaning}
                              for code, (reason, meaning) in sorted(protocol.CLOSE_CODES.items())],
            "x-upgrade-refusals": [{"status": status, "code": code, "when": when} for status,
                                   (code, when) in sorted(protocol.UPGRADE_REFUSALS.items())],
        },
        LEGACY_CHANNEL: {
            "address": f"{legacy_prefix}{{connection_type}}/{{restaurant_id}}",
            "title": "A live screen (older app builds)",
            "description": f"The same protocol as `{prefix}...`, for older app builds.",
            "parameters": address_parameters,
            "messages": channel_messages,
        },
    }

    def message_ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/channels/{CHANNEL}/messages/{name}"}

    operations: dict[str, Any] = {}
    channel_ref = {"$ref": f"#/channels/{CHANNEL}"}
    replies = {protocol.AUTHENTICATE: ["auth_success", "auth_error"],
               protocol.REAUTH: ["auth_success", "auth_error"], protocol.PING: ["serverPong"]}
    for name, spec in receives:
        kind = messages[name]["name"]
        operation: dict[str, Any] = {"action": "receive", "channel": channel_ref,
                                     "summary": spec.summary, "messages": [message_ref(name)]}
        if kind in replies:
            operation["reply"] = {"channel": channel_ref,
                                  "messages": [message_ref(reply) for reply in replies[kind]]}
        operations[f"receive_{name}"] = operation
    for name, spec in sends:
        operations[f"send_{name}"] = {"action": "send", "channel": channel_ref,
                                      "summary": spec.summary, "messages": [message_ref(name)]}
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "posmesh live screens",
            "version": metadata.version("posmesh"),
            "description": "The WebSocket protocol of tills, kitchen screens and managers' phones: "
                           "authentication by first message, order events in order and exactly "
                           "once, resuming after a reconnect. The JSON API is at "
                           "/api/v1/openapi.json.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "edge": {
                "host": "{host}", "protocol": "wss",
                "description": "The edge, the same host as the JSON API.",
                "variables": {"host": {"default": "localhost:8443",
                                       "description": "host and port of the edge"}},
                "security": [{"$ref": "#/components/securitySchemes/accessToken"}],
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            # The same JSON Schemas as the OpenAPI document's (the proto JSON of an order).
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {"accessToken": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "An access token, in the first `authenticate` message or as "
                               "`Authorization: Bearer` on the upgrade."}},
        },
    }

