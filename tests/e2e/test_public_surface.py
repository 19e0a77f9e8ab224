"""What anyone on the internet sees of the edge: /ping, the public health status, the response
headers a security review expects (OWASP Secure Headers Project, for an API), no gRPC or Envoy
internals on JSON responses, and TLS 1.2+ with AEAD ciphers only."""

from __future__ import annotations

import asyncio
import socket
import ssl

import grpc
import pytest

from posmesh.health.v1 import health_pb2 as system_pb2
from posmesh.health.v1 import health_pb2_grpc as system_pb2_grpc
from posmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from tests.support.orders import open_restaurant
from tests.support.restaurants import error_reason

# OWASP Secure Headers Project, the headers it recommends for every response of an API.
OWASP_API_HEADERS = {
    "strict-transport-security": "max-age=31536000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "x-permitted-cross-domain-policies": "none",
    "cache-control": "no-store",
}
# What a JSON client must never see: gRPC plumbing, Envoy timings, the server's make.
INTERNAL_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin",
                    "grpc-accept-encoding", "grpc-encoding", "x-envoy-upstream-service-time",
                    "server")


@pytest.fixture(scope="module")
async def party(edge):
    return await open_restaurant(edge)


def _assert_secure_headers(response) -> None:
    for name, value in OWASP_API_HEADERS.items():
        assert response.headers.get(name) == value, (response.request.url, name, response.headers)
    leaked = [name for name in INTERNAL_HEADERS if name in response.headers]
    assert not leaked, (response.request.url, leaked)


# --- /ping --------------------------------------------------------------------------------------

async def test_ping_answers_200_json_without_a_token(edge, edge_http1):
    for client in (edge, edge_http1):
        reply = await client.get("/ping")
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "application/json"
        assert reply.json() == {"status": "ok"}


async def test_ping_ignores_a_bad_token(edge):
    reply = await edge.get("/ping", headers={"authorization": "Bearer not-a-token"})

    assert reply.status_code == 200


# --- health: a status for everyone, details for owners and managers -----------------------------

async def test_public_health_says_only_the_status(edge):
    body = (await edge.get("/api/v1/health")).json()

    assert body["status"] == "SERVING"
    assert body["services"] == [] and body["dependencies"] == []
    assert body["answered_by"] == "" and body["version"] == ""


async def test_health_details_are_for_owners_and_managers_only(edge, party):
    for member in (party.owner, party.manager):
        body = (await edge.get("/api/v1/health", headers=member.headers)).json()
        assert {s["name"] for s in body["services"]} == {"auth", "staff", "orders", "realtime"}
        assert body["dependencies"] and body["version"]
    staff_view = (await edge.get("/api/v1/health", headers=party.staff.headers)).json()
    assert staff_view["services"] == [] and staff_view["dependencies"] == []


async def test_health_with_an_invalid_token_is_still_answered_with_the_status(edge):
    reply = await edge.get("/api/v1/health", headers={"authorization": "Bearer garbage"})

    assert reply.status_code == 200
    assert reply.json()["status"] == "SERVING" and reply.json()["services"] == []


async def test_health_details_are_served_inside_the_mesh(stack):
    async with stack.channel("orders", as_identity="auth") as channel:
        reply = await system_pb2_grpc.SystemHealthServiceStub(channel).GetSystemHealth(
            system_pb2.GetSystemHealthRequest(), timeout=5)

    assert reply.answered_by == "orders" and len(reply.services) == 4


async def test_a_burst_of_health_calls_is_answered_from_one_check(stack, edge, party):
    first = (await edge.get("/api/v1/health", headers=party.manager.headers)).json()
    burst = await asyncio.gather(*(edge.get("/api/v1/health", headers=party.manager.headers)
                                   for _ in range(30)))

    # Within HEALTH_CACHE_SECONDS every caller of a process gets the same report: the same
    # measured latencies, not 30 fresh fan-outs to every service. Each replica of a service
    # that answered keeps its own report.
    latencies = {tuple(s["latency_ms"] for s in reply.json()["services"]) for reply in burst}
    answerers = {reply.json()["answered_by"] for reply in burst}
    processes = sum(len(stack.replicas(service)) for service in answerers)
    assert len(latencies) <= processes + 1, latencies
    assert first["status"] == "SERVING"


# --- response headers ---------------------------------------------------------------------------

async def test_json_api_responses_carry_the_owasp_headers_and_no_internals(edge, edge_http1,
                                                                          party):
    responses = [
        await edge.get("/api/v1/health"),
        await edge.get("/api/v1/auth/me", headers=party.staff.headers),
        await edge_http1.get("/api/v1/auth/me", headers=party.staff.headers),
        await edge.get("/api/v1/orders/00000000-0000-4000-8000-000000000000", headers=party.staff.headers),  # 404
        await edge.get("/api/v1/auth/me"),  # 401 made by the edge itself
        await edge.get("/api/v1/no/such/route", headers=party.staff.headers),  # edge 404
        await edge.get("/ping"),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 404, 401, 404, 200]
    for response in responses:
        _assert_secure_headers(response)


async def test_token_responses_are_never_cached(edge, party):
    reply = await edge.post("/api/v1/auth/login", json={
        "email": party.staff.email, "password": party.staff.password,
        "restaurant_id": party.restaurant_id})

    assert reply.status_code == 200 and reply.json()["access_token"]
    assert reply.headers["cache-control"] == "no-store"  # RFC 6749 §5.1
    _assert_secure_headers(reply)


async def test_a_transcoded_error_keeps_its_reason_in_the_body_not_in_grpc_headers(edge, party):
    reply = await edge.get("/api/v1/orders/00000000-0000-4000-8000-000000000000", headers=party.staff.headers)

    assert reply.status_code == 404
    assert error_reason(reply) == "ORDER_NOT_FOUND"
    assert "grpc-message" not in reply.headers


async def test_native_grpc_clients_still_get_their_status_through_the_edge(stack):
    credentials = grpc.ssl_channel_credentials(root_certificates=stack.ca_file.read_bytes())
    target = f"localhost:{stack.settings.edge_port}"
    async with grpc.aio.secure_channel(target, credentials) as channel:
        stub = system_pb2_grpc.SystemHealthServiceStub(channel)
        reply = await stub.GetSystemHealth(system_pb2.GetSystemHealthRequest(), timeout=5)
        assert reply.status == "SERVING"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await orders_pb2_grpc.OrderServiceStub(channel).GetOrder(
                orders_pb2.GetOrderRequest(order_id="o-1"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- TLS ----------------------------------------------------------------------------------------

def _handshake(stack, *, version: ssl.TLSVersion, ciphers: str | None = None) -> str:
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    context.minimum_version = context.maximum_version = version
    if ciphers:
        context.set_ciphers(ciphers)
    with socket.create_connection(("localhost", stack.settings.edge_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.cipher()[0]


async def test_tls_1_3_and_1_2_with_aead_ciphers_are_accepted(stack):
    assert await asyncio.to_thread(_handshake, stack, version=ssl.TLSVersion.TLSv1_3)
    cipher = await asyncio.to_thread(_handshake, stack, version=ssl.TLSVersion.TLSv1_2)
    assert "GCM" in cipher or "CHACHA20" in cipher


@pytest.mark.parametrize("version, ciphers", [
    (ssl.TLSVersion.TLSv1_1, "DEFAULT:@SECLEVEL=0"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:AES128-SHA:AES256-SHA"),
])
async def test_old_protocols_and_cbc_ciphers_are_refused(stack, version, ciphers):
    with pytest.raises(ssl.SSLError) as refused:
        await asyncio.to_thread(_handshake, stack, version=version, ciphers=ciphers)
    # Refused by the edge (a TLS alert), not by this client's own OpenSSL policy.
    assert "ALERT" in str(refused.value).upper(), refused.value
