"""The JSON API as an OpenAPI 3.1 document, generated from the contract (build/posmesh.pb): every
google.api.http binding of the services the edge routes (stack.envoy_config.EDGE_SERVICES), with
its parameters, bodies, comments, who may call it (posmesh/common/permissions.py) and, per HTTP
status, the error reasons it can answer with (stack.error_reasons). Served at
GET /api/v1/openapi.json; nothing in it is written by hand.

    document = build(contract.load(codegen.DESCRIPTOR_SET))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Iterator

from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf import descriptor_pb2

from posmesh.common import permissions
from posmesh.common.permissions import Access
from stack.api_docs import ASYNCAPI
from stack.contract import Contract, Service
from stack.envoy_config import EDGE_SERVICES
from stack.error_reasons import Catalogue, Reason, RouteTraits
from stack.json_schema import FieldProto, Schemas, behaviors, ref

OPENAPI_VERSION = "3.1.0"
BEARER = "bearer"
STATUS = "google.rpc.Status"
ERROR_INFO = "google.rpc.ErrorInfo"
ERROR_REASON = "posmesh.api.v1.ErrorReason"
HTTP_BODY = "google.api.HttpBody"
NDJSON = "application/x-ndjson"
_VARIABLE = re.compile(r"\{([^}=]+)(=[^}]*)?\}")
_STATUS_TITLES = {400: "Bad request", 401: "Not authenticated", 403: "Forbidden", 404: "Not found",
                  408: "Request timeout", 409: "Conflict with the current state",
                  413: "Payload too large", 429: "Too many requests",
                  431: "Request headers too large", 500: "Internal error", 502: "Bad gateway",
                  503: "Unavailable: retry shortly", 504: "Gateway timeout"}


@dataclass(frozen=True)
class Binding:
    """One google.api.http binding of an RPC: what the edge routes and the document describes."""

    service: Service
    method: descriptor_pb2.MethodDescriptorProto
    verb: str  # "get", "post", ...
    template: str  # "/api/v1/orders/{order_id}"
    body: str  # "" (none), "*" (the whole request) or a request field
    index: int  # 0 for the main binding, then the additional_bindings

    @property
    def grpc_path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def path_fields(self) -> list[str]:
        return [match.group(1) for match in _VARIABLE.finditer(self.template)]

    @property
    def operation_id(self) -> str:
        base = f"{self.service.name}_{self.method.name}"
        return base if self.index == 0 else f"{base}_{self.index + 1}"


def bindings(contract: Contract) -> Iterator[Binding]:
    for full_name in EDGE_SERVICES:
        service = contract.services[full_name]
        for method in service.proto.method:
            if not method.options.HasExtension(annotations_pb2.http):
                continue
            http = method.options.Extensions[annotations_pb2.http]
            for index, rule in enumerate([http, *http.additional_bindings]):
                verb = rule.WhichOneof("pattern")
                if verb == "custom":
                    verb, template = rule.custom.kind.lower(), rule.custom.path
                else:
                    template = getattr(rule, verb)
                if any(match.group(2) for match in _VARIABLE.finditer(template)):
                    raise ValueError(f"{template}: path variables with patterns have no OpenAPI form")
                yield Binding(service, method, verb, template, rule.body, index)


class _Document:
    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.catalogue = Catalogue(contract)
        self.schemas = Schemas(contract)
        self.schemas.overrides[STATUS] = self._status_schema
        self.schemas.overrides[ERROR_INFO] = self._error_info_schema
        self.paths: dict[str, dict[str, Any]] = {}

    # -- operations ----------------------------------------------------------------------------

    def add(self, binding: Binding) -> None:
        rule = permissions.rule_for(binding.grpc_path)
        assert rule is not None  # envoy_config refuses to route an RPC without a row
        request = binding.method.input_type.lstrip(".")
        operation: dict[str, Any] = {
            "operationId": binding.operation_id,
            "summary": f"{binding.service.name}.{binding.method.name}",
            "description": self._operation_description(binding, rule),
            "tags": [binding.service.name],
            "x-grpc-method": binding.grpc_path,
            "x-permission": _permission(rule),
        }
        if rule.access is Access.PUBLIC:
            operation["security"] = []
        parameters = [*self._path_parameters(binding, request),
                      *self._query_parameters(binding, request)]
        if parameters:
            operation["parameters"] = parameters
        if binding.body:
            operation["requestBody"] = self._request_body(binding, request)
        traits = RouteTraits(public=rule.access is Access.PUBLIC,
                             streaming=binding.method.server_streaming,
                             has_body=bool(binding.body),
                             has_query=any(p["in"] == "query" for p in parameters),
                             has_path_parameters=bool(binding.path_fields))
        operation["responses"] = {
            "200": self._success(binding),
            **self._errors(self.catalogue.route_reasons(binding.service.full_name,
                                                        binding.method.name, traits)),
        }
        self.paths.setdefault(binding.template, {})[binding.verb] = operation

    def _operation_description(self, binding: Binding, rule: permissions.Rule) -> str:
        who = {Access.PUBLIC: "No token needed.",
               Access.SIGNED_IN: "Any signed-in user.",
               Access.RESTAURANT: f"Roles in the token's restaurant: {', '.join(sorted(rule.roles))}."
                                  + (f" Devices' own tokens: {', '.join(sorted(rule.devices))}."
                                     if rule.devices else ""),
               Access.DEVICE: "A paired device's own token (no person): "
                              f"{', '.join(sorted(rule.devices))}."}
        parts = [self.contract.comment(f"{binding.service.full_name}.{binding.method.name}"),
                 f"**Access:** {who[rule.access]}" + (f" {rule.note[0].upper()}{rule.note[1:]}."
                                                      if rule.note else ""),
                 f"gRPC: `{binding.grpc_path}`."]
        return "\n\n".join(part for part in parts if part)

    def _field(self, message: str, dotted: str) -> tuple[str, FieldProto]:
        """(the message holding it, the field) for a possibly dotted field path."""
        *parents, last = dotted.split(".")
        for name in parents:
            field = self._lookup(message, name)
            message = field.type_name.lstrip(".")
        return message, self._lookup(message, last)

    def _lookup(self, message: str, name: str) -> FieldProto:
        for field in self.contract.message(message).field:
            if field.name == name:
                return field
        raise ValueError(f"{message} has no field {name!r}")

    def _path_parameters(self, binding: Binding, request: str) -> list[dict[str, Any]]:
        parameters = []
        for name in binding.path_fields:
            owner, field = self._field(request, name)
            schema = self.schemas.of_field(owner, field)
            description = schema.pop("description", "")
            parameters.append({"name": name, "in": "path", "required": True,
                               "description": description, "schema": schema})
        return parameters

    def _query_parameters(self, binding: Binding, request: str) -> list[dict[str, Any]]:
        """Every request field neither in the path nor in the body: the transcoder reads them from
        the query string (nested message fields as `a.b`)."""
        if binding.body == "*":
            return []
        taken = set(binding.path_fields) | {binding.body}
        return list(self._flatten(request, "", taken, set()))

    def _flatten(self, message: str, prefix: str, taken: set[str], seen: set[str]):
        for field in self.contract.message(message).field:
            name = prefix + field.name
            if name in taken:
                continue
            nested = field.type_name.lstrip(".")
            if (field.type == FieldProto.TYPE_MESSAGE and nested in self.contract.messages
                    and not nested.startswith("google.protobuf.")
                    and field.label != FieldProto.LABEL_REPEATED):
                if nested not in seen:
                    yield from self._flatten(nested, name + ".", taken, seen | {nested})
                continue
            schema = self.schemas.of_field(message, field)
            description = schema.pop("description", "")
            parameter = {"name": name, "in": "query", "description": description, "schema": schema}
            if schema.get("type") == "array":
                parameter.update(style="form", explode=True)
            yield parameter

    def _request_body(self, binding: Binding, request: str) -> dict[str, Any]:
        if binding.body == "*":
            path_fields = frozenset(binding.path_fields)
            inline = self.schemas.object(request, exclude=path_fields)
            schema = inline if path_fields else self.schemas.of_message(request)
            required = bool(inline.get("required"))
        else:
            owner, field = self._field(request, binding.body)
            schema = self.schemas.of_field(owner, field)
            required = field_behavior_pb2.REQUIRED in behaviors(field)
        return {"required": required, "content": {"application/json": {"schema": schema}}}

    def _success(self, binding: Binding) -> dict[str, Any]:
        output = binding.method.output_type.lstrip(".")
        if output == HTTP_BODY:
            # The RPC writes its body itself (GetJwks: a JSON Web Key Set).
            content = {"application/json": {"schema": {
                "type": "object", "description": "The raw JSON body the RPC returns."}}}
            return {"description": "OK", "content": content}
        schema = self.schemas.of_message(output)
        if binding.method.server_streaming:
            return {"description": "A stream of newline-delimited JSON: one object per line, each "
                                   f"a `{output}`, until the server ends the stream.",
                    "content": {NDJSON: {"schema": schema}}}
        return {"description": "OK", "content": {"application/json": {"schema": schema}}}

    def _errors(self, reasons: list[Reason]) -> dict[str, Any]:
        by_status: dict[int, list[Reason]] = {}
        for reason in reasons:
            for status in reason.http_statuses:
                by_status.setdefault(status, []).append(reason)
        self.schemas.of_message(STATUS)
        responses = {}
        for status in sorted(by_status):
            found = by_status[status]
            lines = [f"- `{reason.name}`: {reason.description}" for reason in found]
            schema = {"allOf": [ref(STATUS), {"properties": {"details": {"items": {"properties": {
                "reason": {"enum": [reason.name for reason in found]}}}}}}]}
            responses[str(status)] = {
                "description": "\n".join([f"{_STATUS_TITLES.get(status, 'Error')}. The "
                                          "`ErrorInfo` reason is one of:", *lines]),
                "content": {"application/json": {"schema": schema}}}
        return responses

    # -- the error body: google.rpc.Status with an ErrorInfo -------------------------------------

    def _status_schema(self) -> dict[str, Any]:
        schema = self.schemas.object(STATUS)
        schema["properties"]["details"]["items"] = self.schemas.of_message(ERROR_INFO)
        schema["required"] = ["code", "message", "details"]
        schema["description"] = ("Every error, from a service or from the edge: the gRPC `code`, "
                                 "a `message` for people and one `google.rpc.ErrorInfo` in "
                                 "`details` whose `reason` clients branch on.")
        return schema

    def _error_info_schema(self) -> dict[str, Any]:
        schema = self.schemas.object(ERROR_INFO)
        schema["properties"] = {
            "@type": {"const": "type.googleapis.com/google.rpc.ErrorInfo"},
            **schema["properties"],
            "reason": self._reason_enum(),
        }
        schema["required"] = ["@type", "reason", "domain"]
        return schema

    def _reason_enum(self) -> dict[str, Any]:
        reasons = self.catalogue.reasons.values()
        lines = [f"| `{r.name}` | {r.code} | {', '.join(map(str, r.http_statuses))} | "
                 f"{r.description.replace(chr(10), ' ')} |" for r in reasons]
        self.schemas.components[ERROR_REASON] = {
            "type": "string", "enum": [r.name for r in reasons],
            "description": "\n".join([self.contract.comment(ERROR_REASON).split("\n\n")[0], "",
                                      "| reason | gRPC code | HTTP | meaning |", "|---|---|---|---|",
                                      *lines])}
        return ref(ERROR_REASON)

    # -- the whole document ----------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        return {
            "openapi": OPENAPI_VERSION,
            "info": {
                "title": "posmesh API",
                "version": metadata.version("posmesh"),
                "summary": "Restaurant point of sale: accounts, staff, menus, orders, live screens.",
                "description": _INTRODUCTION,
            },
            "servers": [{"url": "/"}],
            "security": [{BEARER: []}],
            "tags": [{"name": self.contract.services[name].name,
                      "description": self.contract.comment(name)} for name in EDGE_SERVICES],
            "paths": self.paths,
            "components": {
                "securitySchemes": {BEARER: {
                    "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "The access token from POST /api/v1/auth/login (or refresh, or "
                                   "switch-restaurant), as `Authorization: Bearer <token>`."}},
                "schemas": dict(sorted(self.schemas.components.items())),
            },
        }


def _permission(rule: permissions.Rule) -> str:
    devices = f"; devices: {', '.join(sorted(rule.devices))}" if rule.devices else ""
    if rule.access is Access.RESTAURANT:
        return ("restaurant: " + ", ".join(role for role in permissions.ROLES if role in rule.roles)
                + devices)
    if rule.access is Access.DEVICE:
        return "device: " + ", ".join(sorted(rule.devices))
    return rule.access.value


_INTRODUCTION = f"""\
The JSON API of posmesh, generated from its protos: every route here is one gRPC method, transcoded
by the edge (its name is in each operation's `x-grpc-method`; native gRPC reaches it too).

- **Authentication**: `Authorization: Bearer <access token>` from `POST /api/v1/auth/login`;
  operations marked with no security need none. A token carries one restaurant context.
- **Field names** are the proto names (snake_case). 64-bit integers (money in minor units) are JSON
  strings; times are RFC 3339 strings; enums are their names. Unknown fields are refused.
- **Errors** are a `google.rpc.Status` with one `google.rpc.ErrorInfo` in `details`: branch on its
  `reason` (each operation lists the reasons it can answer with, per HTTP status; the whole
  catalogue is `posmesh.api.v1.ErrorReason`), show the `message` to people.
- **Live screens** use a WebSocket protocol, described as AsyncAPI at
  [{ASYNCAPI}]({ASYNCAPI}).
"""


def build(contract: Contract) -> dict[str, Any]:
    document = _Document(contract)
    for binding in bindings(contract):
        document.add(binding)
    return document.document()
