"""The error catalogue (posmesh.api.v1.ErrorReason) and the reasons each RPC and each edge route
can answer with.

An RPC's reasons are its `method_errors`, its service's `service_errors`, and what its row in
posmesh/common/permissions.py implies (the shared interceptor authenticates, checks the tenant and
the role, and turns a failing database or Redis into UNAVAILABLE for every RPC alike). Through the
edge a route adds what Envoy itself answers (malformed requests, oversized bodies, the JWT check,
a service that is down or slow).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from google.rpc import code_pb2

from posmesh.api.v1 import errors_pb2
from posmesh.common import permissions
from posmesh.common.permissions import Access
from stack.contract import Contract

ERROR_REASON = "posmesh.api.v1.ErrorReason"

# The HTTP status of each gRPC code through the edge: grpc_json_transcoder's mapping
# (convert_grpc_status), except FAILED_PRECONDITION, which the edge's Lua filter makes 409.
HTTP_STATUS_OF_CODE: dict[str, int] = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 409, "ABORTED": 409, "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

# What the shared interceptor (posmesh/common/interceptors.py) can answer for any RPC: a request
# it cannot decode, a bug, a failing, slow or colliding database, or Redis.
EVERY_RPC = ("INVALID_ENCODING", "INTERNAL", "DATABASE_UNAVAILABLE", "DATABASE_BUSY",
             "DATABASE_TIMEOUT", "DATABASE_CONFLICT", "REDIS_UNAVAILABLE", "DEPENDENCY_UNAVAILABLE")
# What admission control and deadlines (posmesh/common/admission.py) add to every unary RPC that
# has a priority: a refusal at capacity, a deadline that passed, a request the service abandoned.
ADMITTED_UNARY = ("OVERLOADED", "DEADLINE_EXCEEDED", "SERVICE_UNAVAILABLE")
_TOKEN = ("TOKEN_INVALID", "TOKEN_EXPIRED", "SESSION_REVOKED", "SESSION_LOCKED")
BY_ACCESS: dict[Access, tuple[str, ...]] = {
    Access.PUBLIC: (),
    Access.SIGNED_IN: (*_TOKEN, "DEVICE_FORBIDDEN"),
    Access.RESTAURANT: (*_TOKEN, "NO_RESTAURANT_CONTEXT", "ROLE_FORBIDDEN", "DEVICE_FORBIDDEN"),
    Access.INTERNAL: ("INTERNAL_ONLY", "CALLER_FORBIDDEN"),
    Access.DEVICE: (*_TOKEN, "DEVICE_REQUIRED", "DEVICE_FORBIDDEN"),
}
# A restaurant named in the path, body or X-Restaurant-Id that is not the token's.
TENANT_CHECKED = ("TENANT_MISMATCH", "NO_RESTAURANT_CONTEXT")

# What the edge (envoy/envoy.yaml.j2) answers itself on a route, by what the route has.
EDGE_EVERY_ROUTE = ("BAD_REQUEST", "HEADERS_TOO_LARGE", "REQUEST_TIMEOUT", "SERVICE_UNAVAILABLE",
                    "INTERNAL")
# Streaming routes have no timeout; unary ones pass the edge's circuit breakers.
EDGE_UNARY = ("UPSTREAM_TIMEOUT", "OVERLOADED")
EDGE_WITH_BODY = ("PAYLOAD_TOO_LARGE", "UNKNOWN_FIELD")
EDGE_WITH_QUERY = ("UNKNOWN_FIELD",)
# A path whose parameter is empty or a dot segment resolves to no route at all.
EDGE_WITH_PATH_PARAMETERS = ("NOT_FOUND",)
EDGE_PROTECTED = ("TOKEN_INVALID", "TOKEN_EXPIRED")  # the JWT check, before any service


@dataclass(frozen=True)
class Reason:
    name: str
    number: int
    code: str  # google.rpc.Code name
    http_statuses: tuple[int, ...]
    description: str


@dataclass(frozen=True)
class RouteTraits:
    """What of a route changes the edge's own answers."""

    public: bool
    streaming: bool
    has_body: bool
    has_query: bool
    has_path_parameters: bool


class Catalogue:
    def __init__(self, contract: Contract) -> None:
        self._contract = contract

    @cached_property
    def reasons(self) -> dict[str, Reason]:
        """Every reason but the zero value, in the enum's order."""
        enum = self._contract.enum(ERROR_REASON)
        found = {}
        for value in enum.value:
            if value.number == 0:
                continue
            if not value.options.HasExtension(errors_pb2.reason):
                raise ValueError(f"{ERROR_REASON}.{value.name} has no (posmesh.api.v1.reason)")
            details = value.options.Extensions[errors_pb2.reason]
            code = code_pb2.Code.Name(details.code)
            statuses = tuple(details.http_statuses) or (HTTP_STATUS_OF_CODE[code],)
            found[value.name] = Reason(value.name, value.number, code, statuses,
                                       self._contract.comment(f"{ERROR_REASON}.{value.name}"))
        return found

    def rpc_reasons(self, service: str, method: str) -> list[Reason]:
        """What the RPC `service`/`method` can answer with (full service name, method name)."""
        found = self._contract.services[service]
        (rpc,) = [item for item in found.proto.method if item.name == method]
        if not rpc.options.HasExtension(errors_pb2.method_errors):
            raise ValueError(f"{service}.{method} has no (posmesh.api.v1.method_errors)")
        names = [*implied_by_access(f"/{service}/{method}", streaming=rpc.server_streaming)]
        names += self._names(found.proto.options.Extensions[errors_pb2.service_errors].reasons)
        names += self._names(rpc.options.Extensions[errors_pb2.method_errors].reasons)
        return self._ordered(names)

    def route_reasons(self, service: str, method: str, traits: RouteTraits) -> list[Reason]:
        """The RPC's reasons plus the edge's own answers on a route to it."""
        names = [reason.name for reason in self.rpc_reasons(service, method)]
        names += implied_by_edge(traits)
        return self._ordered(names)

    def reasons_by_number(self) -> dict[int, str]:
        return {reason.number: reason.name for reason in self.reasons.values()}

    def _names(self, numbers) -> list[str]:
        by_number = self.reasons_by_number()
        return [by_number[number] for number in numbers]

    def _ordered(self, names: list[str]) -> list[Reason]:
        unknown = set(names) - set(self.reasons)
        if unknown:
            raise ValueError(f"not in {ERROR_REASON}: {', '.join(sorted(unknown))}")
        return [reason for name, reason in self.reasons.items() if name in names]


def implied_by_access(grpc_path: str, *, streaming: bool = False) -> tuple[str, ...]:
    rule = permissions.rule_for(grpc_path)
    if rule is None:
        raise ValueError(f"{grpc_path} has no row in posmesh/common/permissions.py")
    tenant = TENANT_CHECKED if rule.tenant_checked and rule.access is not Access.PUBLIC else ()
    admitted = ADMITTED_UNARY if rule.priority is not None and not streaming else ()
    return (*EVERY_RPC, *BY_ACCESS[rule.access], *tenant, *admitted)


def implied_by_edge(traits: RouteTraits) -> tuple[str, ...]:
    return (*EDGE_EVERY_ROUTE,
            *(() if traits.streaming else EDGE_UNARY),
            *(EDGE_WITH_BODY if traits.has_body else ()),
            *(EDGE_WITH_QUERY if traits.has_query else ()),
            *(EDGE_WITH_PATH_PARAMETERS if traits.has_path_parameters else ()),
            *(() if traits.public else EDGE_PROTECTED))
