"""Proto messages and enums as JSON Schema (OpenAPI 3.1), the way the edge's transcoder writes and
reads them: proto field names (snake_case), enums as their names, 64-bit integers as strings,
Timestamp as an RFC 3339 string, FieldMask as a comma-separated string.

    schemas = Schemas(contract)
    schemas.of_message("posmesh.orders.v1.Order")   # {"$ref": "#/components/schemas/posmesh.orders.v1.Order"}
    schemas.components                               # every schema referenced so far, by full name

Comments become descriptions; google.api.field_behavior REQUIRED fields are `required`,
OUTPUT_ONLY ones `readOnly`, INPUT_ONLY ones `writeOnly`. Objects refuse unknown properties (the
edge refuses unknown JSON fields too).
"""

from __future__ import annotations

from typing import Any, Callable

from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2

from stack.contract import Contract

FieldProto = descriptor_pb2.FieldDescriptorProto
REF_PREFIX = "#/components/schemas/"
_INT32 = {"type": "integer", "format": "int32", "minimum": -2**31, "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
_INT64 = {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$",
          "description": "64-bit integer, as a decimal string"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$",
           "description": "unsigned 64-bit integer, as a decimal string"}
SCALARS: dict[int, dict[str, Any]] = {
    FieldProto.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldProto.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldProto.TYPE_INT64: _INT64, FieldProto.TYPE_SINT64: _INT64, FieldProto.TYPE_SFIXED64: _INT64,
    FieldProto.TYPE_UINT64: _UINT64, FieldProto.TYPE_FIXED64: _UINT64,
    FieldProto.TYPE_INT32: _INT32, FieldProto.TYPE_SINT32: _INT32, FieldProto.TYPE_SFIXED32: _INT32,
    FieldProto.TYPE_UINT32: _UINT32, FieldProto.TYPE_FIXED32: _UINT32,
    FieldProto.TYPE_BOOL: {"type": "boolean"},
    FieldProto.TYPE_STRING: {"type": "string"},
    FieldProto.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
# Well-known types have a JSON form of their own (the proto3 JSON mapping).
WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time",
                                  "description": "RFC 3339 time, e.g. 2025-01-31T12:00:00Z"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
                                 "description": "seconds with an `s` suffix, e.g. 1.5s"},
    "google.protobuf.FieldMask": {"type": "string",
                                  "description": "comma-separated field paths, e.g. name,address.city"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "contentEncoding": "base64"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.Int32Value": _INT32,
    "google.protobuf.UInt32Value": _UINT32,
    "google.protobuf.Int64Value": _INT64,
    "google.protobuf.UInt64Value": _UINT64,
    "google.protobuf.FloatValue": {"type": "number", "format": "float"},
    "google.protobuf.DoubleValue": {"type": "number", "format": "double"},
    "google.protobuf.Any": {"type": "object", "required": ["@type"],
                            "properties": {"@type": {"type": "string"}}},
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF_PREFIX + name}


def behaviors(field: FieldProto) -> set[int]:
    return set(field.options.Extensions[field_behavior_pb2.field_behavior])


class Schemas:
    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.components: dict[str, dict[str, Any]] = {}
        # A message whose schema is written by hand elsewhere (the error body), by full name.
        self.overrides: dict[str, Callable[[], dict[str, Any]]] = {}

    def of_message(self, full_name: str) -> dict[str, Any]:
        """A reference to the message's schema (or its well-known JSON form)."""
        full_name = full_name.lstrip(".")
        if full_name in WELL_KNOWN:
            return dict(WELL_KNOWN[full_name])
        if full_name not in self.components:
            self.components[full_name] = {}  # reserved first: messages may refer to themselves
            build = self.overrides.get(full_name)
            self.components[full_name] = build() if build else self.object(full_name)
        return ref(full_name)

    def of_enum(self, full_name: str) -> dict[str, Any]:
        full_name = full_name.lstrip(".")
        if full_name not in self.components:
            enum = self.contract.enum(full_name)
            lines = [f"- `{value.name}`: {self.contract.comment(f'{full_name}.{value.name}')}"
                     for value in enum.value]
            self.components[full_name] = {
                "type": "string", "enum": [value.name for value in enum.value],
                "description": "\n".join([self.contract.comment(full_name), "", *lines]).strip()}
        return ref(full_name)

    def object(self, full_name: str, *, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The message as an object schema, without the fields in `exclude` (those a path binds)."""
        message = self.contract.message(full_name)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in message.field:
            if field.name in exclude:
                continue
            properties[field.name] = self.of_field(full_name, field)
            if field_behavior_pb2.REQUIRED in behaviors(field):
                required.append(field.name)
        schema: dict[str, Any] = {"type": "object"}
        if description := self.contract.comment(full_name):
            schema["description"] = description
        schema["properties"] = properties
        if required:
            schema["required"] = required
        schema["additionalProperties"] = False
        return schema

    def of_field(self, message_name: str, field: FieldProto) -> dict[str, Any]:
        schema = self._value(field)
        if field.label == FieldProto.LABEL_REPEATED and not self._is_map(field):
            schema = {"type": "array", "items": schema}
        marks = behaviors(field)
        if field_behavior_pb2.OUTPUT_ONLY in marks:
            schema["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in marks:
            schema["writeOnly"] = True
        if description := self.contract.comment(f"{message_name}.{field.name}"):
            schema["description"] = description
        return schema

    def _is_map(self, field: FieldProto) -> bool:
        return (field.type == FieldProto.TYPE_MESSAGE
                and self.contract.message(field.type_name).options.map_entry)

    def _value(self, field: FieldProto) -> dict[str, Any]:
        if field.type == FieldProto.TYPE_ENUM:
            return self.of_enum(field.type_name)
        if field.type == FieldProto.TYPE_MESSAGE:
            if self._is_map(field):
                entry = self.contract.message(field.type_name)
                value = next(item for item in entry.field if item.name == "value")
                return {"type": "object", "additionalProperties": self._value(value)}
            return self.of_message(field.type_name)
        return dict(SCALARS[field.type])
