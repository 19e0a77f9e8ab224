"""The proto contract as the documents are generated from it: build/posmesh.pb (every import, with
source info), indexed by full name, with each element's leading comment.

    contract = load(codegen.DESCRIPTOR_SET)
    contract.messages["posmesh.orders.v1.Order"], contract.comment("posmesh.orders.v1.Order.id")

Custom options (google.api.http, field_behavior, posmesh.api.v1 errors) are read through their
generated modules, imported here so the descriptor set's options parse with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from google.api import annotations_pb2, field_behavior_pb2  # noqa: F401  (registers extensions)
from google.protobuf import descriptor_pb2

from posmesh.api.v1 import errors_pb2  # noqa: F401  (registers extensions)

# FileDescriptorProto / DescriptorProto / EnumDescriptorProto / ServiceDescriptorProto field
# numbers, as source-info paths use them.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


@dataclass(frozen=True)
class Service:
    full_name: str  # "posmesh.orders.v1.OrderService"
    proto: descriptor_pb2.ServiceDescriptorProto

    @property
    def name(self) -> str:
        return self.proto.name


@dataclass
class Contract:
    messages: dict[str, descriptor_pb2.DescriptorProto] = field(default_factory=dict)
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)

    def comment(self, full_name: str) -> str:
        """The leading comment of a message, field ("Msg.field"), enum, enum value
        ("Enum.VALUE"), service or method ("Svc.Method"); "" when it has none."""
        return self.comments.get(full_name, "")

    def message(self, type_name: str) -> descriptor_pb2.DescriptorProto:
        return self.messages[type_name.lstrip(".")]

    def enum(self, type_name: str) -> descriptor_pb2.EnumDescriptorProto:
        return self.enums[type_name.lstrip(".")]


def _clean(text: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in text.rstrip().split("\n")]
    return "\n".join(lines).strip()


def load(descriptor_set: Path) -> Contract:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    contract = Contract()
    for proto in files:
        prefix = f"{proto.package}." if proto.package else ""
        paths: dict[tuple[int, ...], str] = {}
        for location in proto.source_code_info.location:
            if location.leading_comments:
                paths[tuple(location.path)] = _clean(location.leading_comments)

        def add_enum(enum, full_name: str, path: tuple[int, ...]) -> None:
            contract.enums[full_name] = enum
            contract.comments[full_name] = paths.get(path, "")
            for index, value in enumerate(enum.value):
                contract.comments[f"{full_name}.{value.name}"] = paths.get(
                    (*path, _ENUM_VALUE, index), "")

        def add_message(message, full_name: str, path: tuple[int, ...]) -> None:
            contract.messages[full_name] = message
            contract.comments[full_name] = paths.get(path, "")
            for index, item in enumerate(message.field):
                contract.comments[f"{full_name}.{item.name}"] = paths.get(
                    (*path, _MESSAGE_FIELD, index), "")
            for index, nested in enumerate(message.nested_type):
                add_message(nested, f"{full_name}.{nested.name}", (*path, _MESSAGE_NESTED, index))
            for index, enum in enumerate(message.enum_type):
                add_enum(enum, f"{full_name}.{enum.name}", (*path, _MESSAGE_ENUM, index))

        for index, message in enumerate(proto.message_type):
            add_message(message, prefix + message.name, (_FILE_MESSAGE, index))
        for index, enum in enumerate(proto.enum_type):
            add_enum(enum, prefix + enum.name, (_FILE_ENUM, index))
        for index, service in enumerate(proto.service):
            full_name = prefix + service.name
            contract.services[full_name] = Service(full_name, service)
            contract.comments[full_name] = paths.get((_FILE_SERVICE, index), "")
            for number, method in enumerate(service.method):
                contract.comments[f"{full_name}.{method.name}"] = paths.get(
                    (_FILE_SERVICE, index, _SERVICE_METHOD, number), "")
    return contract
