"""Bad input for every route, drawn by hypothesis: path values, query strings, JSON bodies and
headers that are oversized, of the wrong type, odd unicode, deeply nested or missing.

Examples are drawn up front with a fixed seed (`derandomize=True`), then sent concurrently, so
the suite is deterministic and fast; a failure names the exact request.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz.routes import Route


def draw(strategy: st.SearchStrategy, count: int) -> list[Any]:
    """`count` examples of `strategy`, the same ones on every run."""
    examples: list[Any] = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example: Any) -> None:
        examples.append(example)

    collect()
    return examples


# --- values -------------------------------------------------------------------------------------

odd_text = st.one_of(
    st.text(max_size=40),  # any unicode, including control characters and lone surrogates
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=5000),
    st.sampled_from(["", " ", "null", "0", "-1", "1e309", "NaN", "true", "\u202e\u0000",
                     "'; DROP TABLE orders; --", "../../etc/passwd", "😀" * 50,
                     "\ud800", "x" * 70_000, "00000000-0000-0000-0000-000000000000"]),
)
huge_numbers = st.one_of(st.integers(min_value=-(2**70), max_value=2**70),
                         st.sampled_from([2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 10**30]))
scalars = st.one_of(st.none(), st.booleans(), huge_numbers,
                    st.floats(allow_nan=False, allow_infinity=False), odd_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=20)


def _field_names(message: Descriptor | None) -> list[str]:
    if message is None:
        return []
    names = []
    for f in message.fields:
        names.append(f.name)
        if f.json_name != f.name:
            names.append(f.json_name)
    return names


def _wrong_value(f: FieldDescriptor) -> st.SearchStrategy:
    if f.message_type is not None:
        inner = st.fixed_dictionaries({}, optional={name: json_values for name in _field_names(f.message_type)})
        shaped = st.lists(inner, max_size=3) if _is_repeated(f) else inner
        return st.one_of(shaped, json_values)
    if f.enum_type is not None:
        names = [v.name for v in f.enum_type.values]
        return st.one_of(st.sampled_from(names), st.integers(-5, 99), json_values)
    return json_values


def _is_repeated(f: FieldDescriptor) -> bool:
    return f.is_repeated


def shaped_body(message: Descriptor) -> st.SearchStrategy:
    """The message's own field names (some missing, some extra) with wrong or odd values."""
    optional = {f.name: _wrong_value(f) for f in message.fields}
    return st.fixed_dictionaries({}, optional={**optional, "unexpected_field": json_values})


# --- requests -----------------------------------------------------------------------------------

@dataclass
class Request:
    route: Route
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    http1: bool = False

    def header_bytes(self) -> int:
        """Roughly what the edge counts against its header limit (the token included)."""
        return len(self.path) + sum(len(k) + len(v) for k, v in self.headers.items()) + \
            sum(len(k) + len(v) for k, v in self.params.items()) * 3 + 1024

    def describe(self) -> str:
        body = self.body[:200] if self.body else b""
        return (f"{self.method} {self.path[:200]} params={str(self.params)[:200]} "
                f"headers={list(self.headers)} body[:200]={body!r} http1={self.http1}")


def path_value(known: list[str]) -> st.SearchStrategy:
    """A path parameter: one of the caller's or another restaurant's real ids, or junk (percent-
    encoded, so it stays one segment), or a raw escape sequence."""
    junk = odd_text.filter(lambda s: len(s.encode("utf-8", "surrogatepass")) < 4000).map(
        lambda s: quote(s.encode("utf-8", "surrogatepass"), safe=""))
    raw = st.sampled_from(["%2F", "%2e%2e", "%00", "a%20b", "%ZZ", "%C0%AF", "%25"])
    return st.one_of(st.sampled_from(known), st.uuids().map(str), junk, raw)


def query_params(route: Route) -> st.SearchStrategy:
    names = st.one_of(st.sampled_from(_field_names(route.input) or ["x"]), st.text(max_size=10))
    values = st.one_of(odd_text, huge_numbers.map(str))
    return st.dictionaries(names, values, max_size=4).map(
        lambda d: {k: v.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for k, v in d.items()})


def body_bytes(route: Route) -> st.SearchStrategy:
    message = route.body_message()
    if message is None:
        return st.one_of(st.none(), st.none(), json_values.map(lambda v: _dumps(v)))
    return st.one_of(shaped_body(message).map(_dumps), shaped_body(message).map(_dumps),
                     json_values.map(_dumps), st.sampled_from(BROKEN_BODIES))


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def deep(depth: int, kind: str = "list") -> bytes:
    return (b"[" * depth + b"]" * depth) if kind == "list" else \
        (b'{"a":' * depth + b"1" + b"}" * depth)


BROKEN_BODIES = [
    b"", b"{", b"}", b"null", b"[]", b"42", b'"text"', b"\xff\xfe\xfd", b'{"a": "\xff"}',
    b'{"request_id": NaN}', b'{"x": 1e999999}', b"\x00" * 64, deep(64), deep(64, "dict"),
    deep(5000), deep(5000, "dict"), b'{"' + b"k" * 100_000 + b'": 1}',
]

HEADER_VALUES = st.one_of(st.uuids().map(str), st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                                                           max_size=60), st.just("x" * 20_000))


def headers(known_restaurants: list[str]) -> st.SearchStrategy:
    restaurant = st.one_of(st.sampled_from(known_restaurants), HEADER_VALUES)
    return st.fixed_dictionaries({}, optional={
        "x-restaurant-id": restaurant,
        "content-type": st.sampled_from(["application/json", "text/plain", "application/grpc",
                                         "application/x-www-form-urlencoded", "", "application/json; charset=latin1"]),
        "x-request-id": HEADER_VALUES,
        "traceparent": HEADER_VALUES,
        "accept": st.sampled_from(["*/*", "application/xml", "text/event-stream"]),
        "x-forwarded-for": st.sampled_from(["1.2.3.4", "::1", "garbage", "127.0.0.1, 10.0.0.1"]),
    })


def requests_for(route: Route, ids: dict[str, list[str]], restaurants: list[str]) -> st.SearchStrategy:
    """Whole requests for `route`: `ids` maps a path parameter name to real ids to mix in."""
    params = {name: path_value(ids.get(name) or [str(uuid.uuid4())]) for name in route.path_params}

    @st.composite
    def build(draw_) -> Request:
        values = {name: draw_(strategy) for name, strategy in params.items()}
        body = draw_(body_bytes(route))
        # Requests with a body go over HTTP/1.1: httpx's HTTP/2 client breaks (or hangs) when
        # Envoy answers before it has sent the whole body, which it rightly may.
        return Request(route, route.verb, route.path(values), draw_(query_params(route)),
                       draw_(headers(restaurants)), body,
                       http1=body is not None or draw_(st.booleans()))
    return build()
