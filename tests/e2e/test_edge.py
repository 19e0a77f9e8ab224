"""The Envoy edge over real TLS: routing, authentication, CORS, errors, WebSocket, native gRPC,
hardening. The first tests check the rendered config itself and need no running stack."""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.request
from pathlib import Path
from typing import AsyncIterator

import grpc
import httpx
import jwt
import psutil
import pytest
import pytest_asyncio
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.client import connect as ws_connect

from posmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from posmesh.common import errors, permissions
from posmesh.common.interceptors import to_status
from posmesh.common.settings import Settings
from posmesh.health.v1 import health_pb2 as system_pb2
from posmesh.health.v1 import health_pb2_grpc as system_pb2_grpc
from stack import api_docs, codegen, envoy_config
from tests.conftest import tls_context
from tests.support.standin_edge import standin_edge as standin

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
ALLOWED_ORIGIN = "capacitor://localhost"


# --- the rendered config ------------------------------------------------------------------------

def _render(tmp_path: Path, **env: object) -> dict:
    settings = Settings(POSMESH_DATA_DIR=str(tmp_path), **env)
    path = envoy_config.render(settings, tmp_path / "envoy")
    envoy_config.validate(path)
    return yaml.safe_load(path.read_text())


def _edge(config: dict) -> tuple[list[dict], list[dict]]:
    """(routes, jwt rules) of the TLS listener."""
    (listener,) = [item for item in config["static_resources"]["listeners"] if item["name"] == "edge"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (host,) = manager["route_config"]["virtual_hosts"]
    (jwt_filter,) = [f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.jwt_authn"]
    return host["routes"], jwt_filter["typed_config"]["rules"]


def _matches(match: dict, path: str, grpc_request: bool = False) -> bool:
    if "grpc" in match and not grpc_request:
        return False
    if grpc_request and any(h["name"] == "content-type" and h.get("invert_match")
                            for h in match.get("headers", [])):
        return False  # JSON routes refuse application/grpc
    if "path" in match:
        return path == match["path"]
    if "prefix" in match:
        return path.startswith(match["prefix"])
    return re.fullmatch(match["safe_regex"]["regex"], path) is not None


def test_config_validates_with_local_defaults(tmp_path):
    config = _render(tmp_path)

    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_config_validates_for_containers_with_tracing(tmp_path):
    config = _render(tmp_path, AUTH_ADDR="auth:50051", STAFF_ADDR="staff:50052",
                     ORDERS_ADDR="orders:50053", REALTIME_ADDR="realtime:50054",
                     REALTIME_WS_ADDRS="realtime:8081,realtime-2:8081",
                     OTEL_EXPORTER_OTLP_ENDPOINT="http://otel-collector:4317")

    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert clusters["auth"]["type"] == "STRICT_DNS"
    assert len(clusters["realtime_ws"]["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2
    assert "otel_collector" in clusters


def test_every_replica_is_an_endpoint_and_the_breakers_admit_the_limit_per_replica(tmp_path):
    orders = ["127.0.0.1:50053", "127.0.0.1:50063", "127.0.0.1:50073"]
    config = _render(tmp_path, ORDERS_REPLICAS=3, ORDERS_ADDRS=",".join(orders),
                     STAFF_REPLICAS=1, ADMISSION_MAX_IN_FLIGHT=32)

    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    for name in ("orders", "orders_streams"):
        endpoints = [e["endpoint"]["address"]["socket_address"]
                     for e in clusters[name]["load_assignment"]["endpoints"][0]["lb_endpoints"]]
        assert [f"{a['address']}:{a['port_value']}" for a in endpoints] == orders
        assert clusters[name]["lb_policy"] == "LEAST_REQUEST"
    breakers = clusters["orders"]["circuit_breakers"]["thresholds"]
    assert {(b["priority"], b["max_requests"], b["max_pending_requests"]) for b in breakers} == {
        ("DEFAULT", 96, 96), ("HIGH", 96, 96)}
    assert {b["max_requests"] for b in clusters["staff"]["circuit_breakers"]["thresholds"]} == {32}
    health = clusters["health"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert len(health) == 1 + 1 + 3  # auth (AUTH_ADDRS unset: AUTH_ADDR alone), staff, orders


def test_every_http_binding_routes_to_its_own_service(tmp_path):
    routes, _ = _edge(_render(tmp_path))
    derived = envoy_config.edge_routes(codegen.DESCRIPTOR_SET)

    for http in derived.http:
        sample = re.sub(r"\{[^}]*\}", "id-1", http.template)
        first = next(route for route in routes if _matches(route["match"], sample))
        assert first["route"]["cluster"] == http.cluster, http.template


def _unrouted_services() -> list[str]:
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet.FromString(codegen.DESCRIPTOR_SET.read_bytes()).file
    return [f"{proto.package}.{service.name}" for proto in files if proto.package.startswith("posmesh.")
            for service in proto.service
            if f"{proto.package}.{service.name}" not in envoy_config.EDGE_SERVICES]


def test_internal_rpcs_have_no_route_at_the_edge(tmp_path):
    routes, _ = _edge(_render(tmp_path))
    internal = [method for method, rule in permissions.PERMISSIONS.items()
                if rule.access is permissions.Access.INTERNAL]

    assert "/posmesh.auth.v1.AuthAdminService/ClaimAccount" in internal
    assert {"posmesh.auth.v1.AuthAdminService"} <= set(_unrouted_services())
    for path in [*internal, *(f"/{service}/Any" for service in _unrouted_services()),
                 "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"]:
        assert not [r for r in routes if _matches(r["match"], path, grpc_request=True)], path


def test_only_public_rpcs_skip_the_jwt_and_everything_else_is_denied_by_default(tmp_path):
    _, rules = _edge(_render(tmp_path))
    *open_rules, default = rules

    assert default == {"match": {"prefix": "/"}, "requires": {"provider_name": "posmesh"}}
    assert all("requires" not in rule for rule in open_rules)
    open_grpc = {rule["match"]["path"] for rule in open_rules if "path" in rule["match"]}
    public = {method for method, rule in permissions.PERMISSIONS.items()
              if rule.access is permissions.Access.PUBLIC
              and method.split("/")[1] in envoy_config.EDGE_SERVICES}
    documents = {item.path for item in api_docs.PUBLISHED}
    assert open_grpc == public | {"/grpc.health.v1.Health/Check", envoy_config.PING_PATH} | documents
    for protected in ("/api/v1/orders", "/api/v1/auth/me", "/api/v1/restaurants/r-1/menu",
                      "/posmesh.orders.v1.OrderService/CreateOrder"):
        first = next(rule for rule in rules if _matches(rule["match"], protected))
        assert first is default, protected


def test_path_templates_become_anchored_segment_regexes():
    regex = envoy_config.template_regex("/api/v1/employees/{employee_id}:undelete")

    assert re.fullmatch(regex, "/api/v1/employees/e-1:undelete")
    assert not re.fullmatch(regex, "/api/v1/employees/a/b:undelete")
    assert envoy_config.template_regex("/v1/{name=shelves/*}/books") == r"/v1/shelves/[^/]+/books"


# --- the error mapping, against a stand-in auth service -----------------------------------------

class _FailingAuth(auth_pb2_grpc.AuthServiceServicer):
    """GetJwks (a public route) fails with the gRPC code named in the `x-code` header."""

    async def GetJwks(self, request, context):
        code = grpc.StatusCode[dict(context.invocation_metadata())["x-code"]]
        error = next(cls for cls in vars(errors).values()
                     if isinstance(cls, type) and issubclass(cls, errors.ApiError) and cls.code == code)
        status = to_status(error("SOME_REASON", "it failed"))
        await context.abort(status.code, status.details, status.trailing_metadata)


LOGIN_LIMIT = 3
HEALTH_LIMIT = 4
SIGNUP_LIMIT = 2


@pytest_asyncio.fixture(scope="module")
async def standin_edge() -> AsyncIterator[httpx.AsyncClient]:
    """A real Envoy from the real template, in front of a stand-in auth service only."""
    async with standin(lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(
            _FailingAuth(), server),
            EDGE_LOGIN_RATE_LIMIT_PER_MINUTE=LOGIN_LIMIT,
            EDGE_HEALTH_RATE_LIMIT_PER_MINUTE=HEALTH_LIMIT,
            EDGE_SIGNUP_RATE_LIMIT_PER_MINUTE=SIGNUP_LIMIT) as client:
        yield client


async def test_grpc_codes_become_the_documented_http_statuses(standin_edge):
    expected = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403,
                "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "ABORTED": 409, "FAILED_PRECONDITION": 409,
                "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
    statuses = {}
    for name in expected:
        reply = await standin_edge.get("/.well-known/jwks.json", headers={"x-code": name})
        assert _error_info(reply)["reason"] == "SOME_REASON"
        assert reply.json()["code"] == grpc.StatusCode[name].value[0]
        statuses[name] = reply.status_code

    assert statuses == expected


async def test_login_attempts_over_the_limit_get_429_json_at_the_edge(standin_edge):
    body = {"email": "a@example.com", "password": "x" * 12}
    replies = [await standin_edge.post("/api/v1/auth/login", json=body) for _ in range(LOGIN_LIMIT + 1)]

    assert [r.status_code for r in replies[:LOGIN_LIMIT]] == [501] * LOGIN_LIMIT  # reached auth
    assert replies[-1].status_code == 429
    assert _error_info(replies[-1])["reason"] == "RATE_LIMITED"


async def test_public_health_over_the_per_address_limit_gets_429_json_at_the_edge(standin_edge):
    replies = [await standin_edge.get("/api/v1/health") for _ in range(HEALTH_LIMIT + 1)]

    # The stand-in auth service does not implement health (501): the limit is the edge's own.
    assert [r.status_code for r in replies[:HEALTH_LIMIT]] == [501] * HEALTH_LIMIT
    assert replies[-1].status_code == 429
    assert _error_info(replies[-1])["reason"] == "RATE_LIMITED"
    assert (await standin_edge.get("/ping")).status_code == 200  # the edge's own answer is free


@pytest.mark.parametrize("path, body", [
    ("/api/v1/auth/register", {"email": "a@example.com", "password": "x" * 12, "full_name": "A"}),
    ("/api/v1/auth/password:requestReset", {"email": "a@example.com"}),
    ("/api/v1/invitations:accept", {"token": "pmiv_x", "password": "x" * 12}),
])
async def test_calls_that_cost_a_hash_or_a_mail_are_limited_per_address_at_the_edge(
        standin_edge, path, body):
    """ASVS 5.0 V2.4 (anti-automation): registrations, password resets and invitation
    acceptances spend a per-address budget (EDGE_SIGNUP_RATE_LIMIT_PER_MINUTE) each."""
    replies = [await standin_edge.post(path, json=body) for _ in range(SIGNUP_LIMIT + 1)]

    # Nothing behind the stand-in edge answers them (501, 503): the 429 is the edge's own.
    assert all(r.status_code in (501, 503) for r in replies[:SIGNUP_LIMIT]), replies
    assert replies[-1].status_code == 429
    assert _error_info(replies[-1])["reason"] == "RATE_LIMITED"


# --- the running edge ---------------------------------------------------------------------------

def _error_info(reply) -> dict:
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    (info,) = [d for d in body["details"] if d["@type"] == ERROR_INFO]
    assert info["domain"] == "posmesh.dev"
    assert isinstance(body["code"], int) and body["message"]
    return info


def _admin_stat(stack, name: str) -> int:
    url = f"http://127.0.0.1:{stack.settings.envoy_admin_port}/stats?filter=^{re.escape(name)}$"
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    return int(text.split(":")[1]) if text.strip() else 0


def _token(stack, *, expires_in: int, audience: str | None = None) -> str:
    """A token from a key the edge does not know: enough to test time and audience checks,
    which Envoy makes before it looks the key up."""
    now = int(time.time())
    claims = {"iss": stack.settings.jwt_issuer, "aud": audience or stack.settings.jwt_audience,
              "sub": "u-1", "sid": "s-1", "jti": "t-1", "iat": now - 60, "exp": now + expires_in}
    return jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                      headers={"kid": "unknown-kid"})


async def _signed_in(edge) -> str:
    """A real access token from the auth service, for a fresh account."""
    email = f"edge-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(16)
    registered = await edge.post("/api/v1/auth/register",
                                 json={"email": email, "password": password, "full_name": "Edge Test"})
    assert registered.status_code == 200, registered.text
    login = await edge.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200, login.text
    return login.json()["access_token"]


async def test_preflight_from_an_allowed_origin_gets_cors_headers(edge):
    reply = await edge.options("/api/v1/orders", headers={
        "Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-restaurant-id"})

    assert reply.status_code == 200
    assert reply.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in reply.headers["access-control-allow-headers"]
    assert "POST" in reply.headers["access-control-allow-methods"]
    assert "Origin" in reply.headers.get_list("vary")


async def test_preflight_from_another_origin_gets_no_cors_headers_and_stays_at_the_edge(stack, edge):
    before = _admin_stat(stack, "cluster.staff.upstream_rq_total")
    reply = await edge.options("/api/v1/employees", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "DELETE"})

    assert "access-control-allow-origin" not in reply.headers
    assert "Origin" in reply.headers.get_list("vary")
    assert _admin_stat(stack, "cluster.staff.upstream_rq_total") == before


async def test_api_responses_vary_by_origin(edge):
    reply = await edge.get("/api/v1/health", headers={"Origin": ALLOWED_ORIGIN})

    assert reply.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "Origin" in reply.headers.get_list("vary")


async def test_protected_route_without_a_token_is_401_json(edge):
    reply = await edge.get("/api/v1/orders")

    assert reply.status_code == 401
    assert _error_info(reply)["reason"] == "TOKEN_INVALID"
    assert reply.json()["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]


async def test_expired_token_is_told_apart_so_apps_refresh(stack, edge):
    reply = await edge.get("/api/v1/orders",
                           headers={"Authorization": f"Bearer {_token(stack, expires_in=-3600)}"})

    assert reply.status_code == 401
    info = _error_info(reply)
    assert info["reason"] == "TOKEN_EXPIRED"
    assert info["metadata"]["action"] == "REFRESH_TOKEN"


async def test_token_for_another_audience_is_401_token_invalid(stack, edge):
    token = _token(stack, expires_in=600, audience="someone-else")
    reply = await edge.get("/api/v1/orders", headers={"Authorization": f"Bearer {token}"})

    assert reply.status_code == 401
    assert _error_info(reply)["reason"] == "TOKEN_INVALID"


async def test_token_in_the_query_string_is_ignored(stack, edge):
    token = _token(stack, expires_in=-3600)
    reply = await edge.get(f"/api/v1/orders?access_token={token}")

    assert reply.status_code == 401
    assert _error_info(reply)["reason"] == "TOKEN_INVALID"  # not read, so not "expired"


async def test_unknown_api_route_is_404_json(edge):
    token = await _signed_in(edge)
    reply = await edge.get("/api/v1/no-such-thing", headers={"Authorization": f"Bearer {token}"})

    assert reply.status_code == 404
    assert _error_info(reply)["reason"] == "NOT_FOUND"


async def test_unbound_method_on_an_open_path_is_404_json(edge):
    reply = await edge.get("/api/v1/auth/login")

    assert reply.status_code == 404
    assert _error_info(reply)["reason"] == "NOT_FOUND"


async def test_service_error_is_transcoded_with_status_and_reason(edge):
    reply = await edge.post("/api/v1/auth/login",
                            json={"email": "nobody@example.com", "password": "not-the-password"})

    assert reply.status_code == 401
    info = _error_info(reply)
    assert re.fullmatch(r"[A-Z][A-Z_]+", info["reason"])
    assert reply.json()["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]


async def test_malformed_json_is_400_json(edge):
    reply = await edge.post("/api/v1/auth/login", content=b"{not json",
                            headers={"content-type": "application/json"})

    assert reply.status_code == 400
    assert _error_info(reply)["reason"] == "BAD_REQUEST"


async def test_login_carries_the_rate_limit_headers(stack, edge):
    reply = await edge.post("/api/v1/auth/login", json={"email": "a@example.com", "password": "x" * 12})

    assert reply.headers["x-ratelimit-limit"] == str(stack.settings.login_rate_limit_per_minute)


async def test_traceparent_and_client_address_reach_the_service(stack, edge):
    trace_id = secrets.token_hex(16)
    await edge.post("/api/v1/auth/login", json={"email": "trace@example.com", "password": "x" * 12},
                    headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})

    auth_logs = stack.logs_since(dict.fromkeys(stack.replicas("auth"), 0))
    lines = [json.loads(line) for line in auth_logs.splitlines() if trace_id in line]
    assert lines, "no auth log line carries the trace id sent through the edge"
    assert any(line.get("ip") == "127.0.0.1" for line in lines)


async def test_every_response_has_a_request_id_the_edge_made(edge):
    reply = await edge.get("/api/v1/health", headers={"x-request-id": "client-chosen"})

    assert reply.headers["x-request-id"] not in ("", "client-chosen")


@pytest.mark.parametrize("path", ["/ws/pos/r-1", "/ws/kitchen/r-1", "/api/v1/websocket/ws/pos/r-1"])
async def test_websocket_upgrade_reaches_realtime_over_wss(stack, path):
    url = stack.edge_url.replace("https://", "wss://") + path
    async with ws_connect(url, ssl=tls_context(stack, http2=False), open_timeout=5) as socket:
        assert socket.response.status_code == 101
        assert socket.response.headers["upgrade"].lower() == "websocket"


async def test_native_grpc_health_check_through_the_edge(stack):
    credentials = grpc.ssl_channel_credentials(stack.ca_file.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{stack.settings.edge_port}", credentials) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        system = await system_pb2_grpc.SystemHealthServiceStub(channel).GetSystemHealth(
            system_pb2.GetSystemHealthRequest(), timeout=5)

    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert system.status == "SERVING"


async def test_internal_admin_rpc_is_refused_through_the_edge(stack, edge):
    token = await _signed_in(edge)
    credentials = grpc.ssl_channel_credentials(stack.ca_file.read_bytes())
    request = auth_pb2.FindUserByEmailRequest(email=f"x-{secrets.token_hex(3)}@example.com")
    async with grpc.aio.secure_channel(f"localhost:{stack.settings.edge_port}", credentials) as channel:
        stub = auth_pb2_grpc.AuthAdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.FindUserByEmail(request, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as signed_in:
            await stub.FindUserByEmail(request, timeout=5,
                                       metadata=[("authorization", f"Bearer {token}")])

    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A valid token gets no further: there is no route (HTTP 404 -> UNIMPLEMENTED).
    assert signed_in.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_headers_with_underscores_are_rejected(edge, edge_http1):
    reply = await edge_http1.get("/api/v1/health", headers={"x_restaurant_id": "r-1"})

    assert reply.status_code == 400
    assert _error_info(reply)["reason"] == "BAD_REQUEST"
    # Over HTTP/2 the codec resets the stream before any routing.
    try:
        response = await edge.get("/api/v1/health", headers={"x_restaurant_id": "r-1"})
    except httpx.RemoteProtocolError:
        return
    assert response.status_code == 400


async def test_oversized_body_is_413_json(stack, edge_http1):
    reply = await edge_http1.post("/api/v1/auth/register",
                                  content=b"x" * (stack.settings.edge_max_request_bytes + 1))

    assert reply.status_code == 413
    assert _error_info(reply)["reason"] == "PAYLOAD_TOO_LARGE"


async def test_envoy_admin_listens_on_loopback_only(stack):
    envoy = psutil.Process(stack.pids()["envoy"][0])
    admin = [c for c in envoy.net_connections(kind="inet")
             if c.status == psutil.CONN_LISTEN and c.laddr.port == stack.settings.envoy_admin_port]

    assert admin and all(c.laddr.ip == "127.0.0.1" for c in admin)
