"""What the edge accepts in each JSON request, derived from the descriptor set: the data of the
unknown-field check (envoy/unknown_fields.lua), rendered as a Lua table into the Envoy config.

For every google.api.http binding of a routed service (additional bindings included):

- the body root: the named field's message for `body: "field"`; the whole request message
  minus its path-bound fields for `body: "*"` and for bindings without a body (the transcoder
  reads a body there too); nothing for google.api.HttpBody (raw bytes, not JSON);
- for every message reachable from there, the JSON keys it accepts: each field's proto name and
  its json_name (the transcoder takes both), and where the key's value leads: a message whose
  keys are checked in turn (for a repeated field, each element), a map (free keys, values
  checked), or a value that is not walked (scalars, enums, and the well-known types whose JSON
  is a string, a scalar or free-form); and its reserved names, retired fields that older clients
  may still send (accepted and dropped, as while they existed);
- the query parameters: every dotted field path the transcoder binds from a query string
  (proto or json names; through non-repeated message fields; path-bound fields excluded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from google.protobuf import descriptor_pb2

FieldProto = descriptor_pb2.FieldDescriptorProto

HTTP_BODY = "google.api.HttpBody"
# Well-known types whose JSON form is not an object of their fields (protobuf's JSON mapping).
# Strings and scalars: a query parameter may name them (and, as for any message, their fields).
JSON_SCALAR_TYPES = frozenset({
    "google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask",
    "google.protobuf.DoubleValue", "google.protobuf.FloatValue", "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value", "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
})
# Free-form JSON: keys the descriptor cannot know.
FREE_FORM_TYPES = frozenset({"google.protobuf.Struct", "google.protobuf.Value",
                             "google.protobuf.ListValue", "google.protobuf.Any"})


@dataclass(frozen=True)
class Lead:
    """Where a JSON key's value leads: `message` (its keys are checked against `node`; for an
    array, each element's), `map` (free keys; each value is checked against `node`) or `value`
    (not walked)."""

    kind: Literal["message", "map", "value"]
    node: str = ""


VALUE = Lead("value")


@dataclass
class Binding:
    verb: str  # GET, POST, ... (a custom binding's kind)
    template: str  # /api/v1/orders/{order_id}
    rpc: str  # /posmesh.orders.v1.OrderService/GetOrder
    request: str  # the request message's full name
    body: str  # "" (none), "*" or a field name
    path_fields: tuple[str, ...]  # field paths bound by the template
    body_root: Lead | None  # None: the body is not JSON (google.api.HttpBody)
    query: frozenset[str]  # accepted query parameter names

    @property
    def literal(self) -> bool:
        return "{" not in self.template


@dataclass
class Schema:
    # Node name -> JSON key -> where its value leads. A node is a message, or a message without
    # some path-bound fields (a body root).
    nodes: dict[str, dict[str, Lead]] = field(default_factory=dict)
    bindings: list[Binding] = field(default_factory=list)

    def binding(self, verb: str, template: str) -> Binding:
        for binding in self.bindings:
            if (binding.verb, binding.template) == (verb, template):
                return binding
        raise KeyError(f"{verb} {template}")

    def body_keys(self, binding: Binding) -> set[str]:
        """The JSON keys accepted at the root of the binding's body."""
        root = binding.body_root
        return set(self.nodes[root.node]) if root is not None and root.kind == "message" else set()

    def keys(self, node: str) -> dict[str, Lead]:
        return self.nodes[node]


def _messages(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, descriptor_pb2.DescriptorProto]:
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def add(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}" if prefix else message.name
        found[name] = message
        for nested in message.nested_type:
            add(name, nested)

    for proto in files:
        for message in proto.message_type:
            add(proto.package, message)
    return found


def path_fields(template: str) -> tuple[str, ...]:
    """The field paths a path template binds: `{restaurant_id}`, `{book.name=shelves/*}`."""
    return tuple(re.findall(r"\{([^}=]+)", template))


def json_name(name: str) -> str:
    """protoc's default json_name: lowerCamelCase of the proto name."""
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)


def _under(name: str, paths: tuple[str, ...]) -> tuple[str, ...]:
    """The rest of each path in `paths` that goes through field `name`."""
    return tuple(p.split(".", 1)[1] for p in paths if p.startswith(name + "."))


class _Deriver:
    def __init__(self, messages: dict[str, descriptor_pb2.DescriptorProto]) -> None:
        self.messages = messages
        self.schema = Schema()

    @staticmethod
    def _type_name(f: FieldProto) -> str:
        return f.type_name.lstrip(".")

    def _is_map(self, f: FieldProto) -> bool:
        return f.type == FieldProto.TYPE_MESSAGE and \
            self.messages[self._type_name(f)].options.map_entry

    def _map_value(self, f: FieldProto) -> FieldProto:
        (value,) = [v for v in self.messages[self._type_name(f)].field if v.name == "value"]
        return value

    def lead(self, f: FieldProto) -> Lead:
        """Where a field's JSON value leads (a repeated field: each element)."""
        if f.type != FieldProto.TYPE_MESSAGE:
            return VALUE
        if self._is_map(f):
            value = self.lead(self._map_value(f))
            return Lead("map", value.node) if value.kind == "message" else VALUE
        name = self._type_name(f)
        if name in JSON_SCALAR_TYPES or name in FREE_FORM_TYPES:
            return VALUE
        return Lead("message", self.node(name))

    def node(self, message: str, without: tuple[str, ...] = ()) -> str:
        """The node of `message` minus the field paths in `without`; built once (recursive
        types refer back to the node being built)."""
        name = message if not without else f"{message} without {', '.join(sorted(without))}"
        if name in self.schema.nodes:
            return name
        keys: dict[str, Lead] = {}
        self.schema.nodes[name] = keys
        for f in self.messages[message].field:
            if f.name in without:
                continue
            inner = _under(f.name, without)
            if inner and f.type == FieldProto.TYPE_MESSAGE and not self._is_map(f):
                lead = Lead("message", self.node(self._type_name(f), inner))
            else:
                lead = self.lead(f)
            keys[f.name] = lead
            keys[f.json_name or f.name] = lead
        # A retired field (`reserved "name"`): clients built before it was removed still send
        # it; it is accepted and dropped, as it was while it existed, not refused as a typo.
        for retired in self.messages[message].reserved_name:
            keys.setdefault(retired, VALUE)
            keys.setdefault(json_name(retired), VALUE)
        return name

    def query_names(self, message: str, excluded: tuple[str, ...],
                    seen: tuple[str, ...] = ()) -> Iterator[str]:
        """Dotted field paths of `message` a query string may bind, minus `excluded` (and what
        lies under them). A message type met again within one path is not expanded again."""
        for f in self.messages[message].field:
            repeated = f.label == FieldProto.LABEL_REPEATED
            is_message = f.type == FieldProto.TYPE_MESSAGE
            names = {f.name, f.json_name or f.name}
            if f.name in excluded:
                continue
            if not is_message or (not repeated and self._type_name(f) in JSON_SCALAR_TYPES):
                yield from names  # a scalar, an enum (repeated: one parameter per value)
            if is_message and not repeated:
                inner_type = self._type_name(f)
                if inner_type in seen:
                    continue
                for inner in self.query_names(inner_type, _under(f.name, excluded), (*seen, message)):
                    yield from (f"{name}.{inner}" for name in names)

    def body_root(self, request: str, body: str, bound: tuple[str, ...]) -> Lead | None:
        if request == HTTP_BODY:
            return None
        if body in ("", "*"):
            return Lead("message", self.node(request, bound))
        (f,) = [f for f in self.messages[request].field if f.name == body]
        if self._type_name(f) == HTTP_BODY:
            return None
        inner = _under(body, bound)
        if inner:
            return Lead("message", self.node(self._type_name(f), inner))
        return self.lead(f)


def derive(descriptor_set: Path, services: list[str] | None = None) -> Schema:
    """The schema of every HTTP binding of `services` (every service when None)."""
    from google.api import annotations_pb2

    files = list(descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file)
    deriver = _Deriver(_messages(files))
    for proto in files:
        for service in proto.service:
            full_name = f"{proto.package}.{service.name}"
            if services is not None and full_name not in services:
                continue
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                http = method.options.Extensions[annotations_pb2.http]
                request = method.input_type.lstrip(".")
                for rule in [http, *http.additional_bindings]:
                    pattern = rule.WhichOneof("pattern")
                    if pattern is None:
                        continue
                    verb, template = ((rule.custom.kind.upper(), rule.custom.path) if pattern == "custom"
                                      else (pattern.upper(), getattr(rule, pattern)))
                    bound = path_fields(template)
                    deriver.schema.bindings.append(Binding(
                        verb=verb, template=template, rpc=f"/{full_name}/{method.name}",
                        request=request, body=rule.body, path_fields=bound,
                        body_root=deriver.body_root(request, rule.body, bound),
                        query=frozenset(deriver.query_names(request, bound))))
    return deriver.schema


# --- the Lua table of envoy/unknown_fields.lua -------------------------------------------------

def template_pieces(template: str) -> Iterator[tuple[str, str]]:
    """A google.api.http path template as ("literal", text), ("segment", "") or ("rest", "")
    pieces: `{var}` / `{var=*}` is one path segment, `{var=**}` any rest; literals (a `:verb`
    suffix included) are matched as they are."""
    for piece in re.split(r"(\{[^}]*\})", template):
        match = re.fullmatch(r"\{([^=}]+)(?:=([^}]*))?\}", piece)
        if match is None:
            if piece:
                yield "literal", piece
            continue
        for part in re.split(r"(\*\*|\*)", match.group(2) or "*"):
            if part:
                yield ("rest", "") if part == "**" else ("segment", "") if part == "*" \
                    else ("literal", part)


def lua_pattern(template: str) -> str:
    """Anchored Lua pattern for a path template (the same pieces as the edge's route regexes)."""
    wildcard = {"segment": "[^/]+", "rest": ".+"}
    return "^" + "".join(re.sub(r"([\^$()%.\[\]*+\-?])", r"%\1", text) if kind == "literal"
                         else wildcard[kind] for kind, text in template_pieces(template)) + "$"


def precedence(template: str) -> tuple:
    """Sort key: the order in which the transcoder's path matcher prefers templates that match
    the same path: segment by segment, a literal before `*` before `**`; with a custom verb
    before without (only a path ending in that verb matches it)."""
    expanded = re.sub(r"\{[^}=]+=([^}]*)\}", r"\1", re.sub(r"\{[^}=]+\}", "*", template))
    path, _, verb = expanded.rpartition(":") if ":" in expanded.rsplit("/", 1)[-1] \
        else (expanded, "", "")
    ranks = tuple(2 if "**" in segment else 1 if "*" in segment else 0
                  for segment in path.strip("/").split("/"))
    return ranks, 0 if verb else 1


def _lua_string(text: str) -> str:
    """A Lua string literal: printable ASCII as it is, anything else as a decimal escape."""
    return '"' + "".join(c if " " <= c <= "~" and c not in '"\\' else
                         "".join(f"\\{b}" for b in c.encode()) for c in text) + '"'


def to_lua(schema: Schema) -> str:
    """`local NODES, BINDINGS = ...`: what envoy/unknown_fields.lua reads. A lead is 0 (a value,
    not walked), n (node n: a message, keys checked) or -n (a map of node n)."""
    index = {name: number for number, name in enumerate(schema.nodes, start=1)}

    def lead(value: Lead) -> str:
        return "0" if value.kind == "value" else \
            str(index[value.node]) if value.kind == "message" else str(-index[value.node])

    lines = ["-- Generated by stack/known_fields.py from the descriptor set.", "local NODES = {"]
    for name, keys in schema.nodes.items():
        entries = ", ".join(f"[{_lua_string(key)}] = {lead(value)}" for key, value in keys.items())
        lines.append(f"  {{{entries}}}, -- {index[name]}: {name}")
    lines += ["}", "local BINDINGS = {"]
    verbs = sorted({b.verb for b in schema.bindings})
    for verb in verbs:
        bindings = sorted((b for b in schema.bindings if b.verb == verb),
                          key=lambda b: precedence(b.template))
        lines += [f"  [{_lua_string(verb)}] = {{", "    exact = {"]
        lines += [f"      [{_lua_string(b.template)}] = {_lua_binding(b, lead)},"
                  for b in bindings if b.literal]
        lines += ["    },", "    patterns = {"]
        lines += [f"      {_lua_binding(b, lead, pattern=lua_pattern(b.template))},"
                  for b in bindings if not b.literal]
        lines += ["    },", "  },"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _lua_binding(binding: Binding, lead, pattern: str | None = None) -> str:
    parts = [f"pattern = {_lua_string(pattern)}"] if pattern else []
    parts.append(f"rpc = {_lua_string(binding.rpc)}")
    if binding.body_root is not None:
        parts.append(f"body = {lead(binding.body_root)}")
    query = ", ".join(f"[{_lua_string(name)}] = true" for name in sorted(binding.query))
    parts.append(f"query = {{{query}}}")
    return "{" + ", ".join(parts) + "}"
