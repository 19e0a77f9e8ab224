"""Every route the mobile apps can call, read from the contract (the protos' google.api.http
bindings of the services the edge publishes), so a route added later is fuzzed too."""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.api import annotations_pb2
from google.protobuf.descriptor import Descriptor, MethodDescriptor

from posmesh.auth.v1 import auth_pb2
from posmesh.common import permissions
from posmesh.health.v1 import health_pb2
from posmesh.orders.v1 import orders_pb2
from posmesh.realtime.v1 import realtime_pb2
from posmesh.staff.v1 import staff_pb2
from stack.envoy_config import EDGE_SERVICES

_MODULES = (auth_pb2, staff_pb2, orders_pb2, realtime_pb2, health_pb2)


@dataclass(frozen=True)
class Route:
    rpc: str  # "/posmesh.orders.v1.OrderService/CreateOrder"
    verb: str  # "GET", "POST", ...
    template: str  # "/api/v1/orders/{order_id}"
    body: str  # "" (no body), "*" (the whole request) or a field name
    input: Descriptor
    streaming: bool

    @property
    def name(self) -> str:
        return f"{self.verb} {self.template}"

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{([^}=]+)", self.template)

    @property
    def access(self) -> permissions.Access:
        rule = permissions.rule_for(self.rpc)
        return rule.access if rule else permissions.Access.INTERNAL

    @property
    def method_name(self) -> str:
        return self.rpc.rsplit("/", 1)[1]

    def path(self, values: dict[str, str]) -> str:
        return re.sub(r"\{([^}=]+)[^}]*\}", lambda m: values[m.group(1)], self.template)

    def body_message(self) -> Descriptor | None:
        if not self.body:
            return None
        if self.body == "*":
            return self.input
        return self.input.fields_by_name[self.body].message_type


def _bindings(method: MethodDescriptor):
    http = method.GetOptions().Extensions[annotations_pb2.http]
    for binding in [http, *http.additional_bindings]:
        verb = binding.WhichOneof("pattern")
        if verb is None:
            continue
        template = binding.custom.path if verb == "custom" else getattr(binding, verb)
        yield (binding.custom.kind.upper() if verb == "custom" else verb.upper()), template, binding.body


def mobile_routes() -> list[Route]:
    routes = []
    for module in _MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name not in EDGE_SERVICES:
                continue
            for method in service.methods:
                for verb, template, body in _bindings(method):
                    routes.append(Route(f"/{service.full_name}/{method.name}", verb, template, body,
                                        method.input_type,
                                        bool(getattr(method, "server_streaming", False))))
    return routes
