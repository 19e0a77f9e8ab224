"""Every service process serves its metrics page on an operator-only port: RED per RPC, the
database pool, Redis, admission, auth, the outbox and the sockets; never through the edge, and
never with a label per user or restaurant."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.accounts import PASSWORD, login, register_and_login
from tests.support.orders import add_menu_item, line, open_restaurant, place_order
from tests.support.realtime import direct_client, signed_in

# Label names that would grow with users, sessions or restaurants (unbounded cardinality).
UNBOUNDED_LABELS = {"user_id", "restaurant_id", "session_id", "sid", "sub", "email", "order_id",
                    "ip", "client_ip", "request_id"}


async def scrape(addr: str) -> dict[str, list]:
    """Metric family name -> samples, as Prometheus would parse the page."""
    async with httpx.AsyncClient(timeout=5) as client:
        reply = await client.get(f"http://{addr}/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(reply.text):
        samples.setdefault(family.name, []).extend(family.samples)
    return samples


async def scrape_service(stack, service: str) -> dict[str, list]:
    """Every process of a service (replicas included) as one page: values add up."""
    merged: dict[str, list] = {}
    for addr in stack.metrics_targets()[service]:
        for family, samples in (await scrape(addr)).items():
            merged.setdefault(family, []).extend(samples)
    return merged


def value(samples: dict[str, list], sample_name: str, **labels: str) -> float:
    family = sample_name.removesuffix("_total").removesuffix("_count").removesuffix("_bucket")
    return sum(sample.value for sample in samples.get(family, [])
               if sample.name == sample_name
               and all(sample.labels.get(key) == want for key, want in labels.items()))


def targets(stack) -> dict[str, list[str]]:
    return {job: addrs for job, addrs in stack.metrics_targets().items() if job != "envoy"}


async def test_every_service_process_serves_a_metrics_page_of_its_own(stack):
    found = {}
    for service, addrs in targets(stack).items():
        assert addrs, f"{service} has no metrics address"
        for addr in addrs:
            samples = await scrape(addr)
            info = [sample.labels["service"] for sample in samples["posmesh_process_info"]]
            found[addr] = info
            assert info == [service]
    assert len(found) == len(stack.service_names), "a service process without a metrics page"


async def test_red_metrics_count_each_rpc_by_service_method_and_code(stack, edge):
    before = await scrape_service(stack, "auth")
    account = await register_and_login(edge)
    refused = await login(edge, account.email, "wrong-" + PASSWORD)
    assert refused.status_code == 401

    after = await scrape_service(stack, "auth")
    method = {"grpc_service": "posmesh.auth.v1.AuthService", "grpc_method": "Login"}
    for code in ("OK", "UNAUTHENTICATED"):
        handled = "grpc_server_handled_total"
        assert value(after, handled, grpc_code=code, **method) == \
            value(before, handled, grpc_code=code, **method) + 1, code
        assert value(after, "grpc_server_handling_seconds_count", grpc_code=code, **method) >= 1
    buckets = [sample for sample in after["grpc_server_handling_seconds"]
               if sample.name.endswith("_bucket") and sample.labels["grpc_method"] == "Login"]
    assert {"2.0", "+Inf"} <= {sample.labels["le"] for sample in buckets}, \
        "the p95-above-2s alert needs a 2 s bucket"
    assert value(after, "posmesh_rpc_errors_total", code="UNAUTHENTICATED",
                 reason="INVALID_CREDENTIALS") > value(
        before, "posmesh_rpc_errors_total", code="UNAUTHENTICATED", reason="INVALID_CREDENTIALS")
    assert value(after, "posmesh_auth_logins_total", outcome="INVALID_CREDENTIALS") == value(
        before, "posmesh_auth_logins_total", outcome="INVALID_CREDENTIALS") + 1
    assert value(after, "posmesh_auth_logins_total", outcome="OK") >= 1
    assert value(after, "posmesh_security_events_total", event="LOGIN_FAILED") >= 1


async def test_pool_redis_admission_and_certificates_are_exported_by_each_service(stack, edge):
    await register_and_login(edge)  # auth uses its pool and Redis
    for service in ("auth", "staff", "orders"):
        samples = await scrape(stack.metrics_targets()[service][0])
        states = {sample.labels["state"] for sample in samples["posmesh_db_pool_connections"]}
        assert states == {"in_use", "idle"}, service
        assert value(samples, "posmesh_db_pool_max") > 0, service
        assert "posmesh_db_pool_waiting" in samples and "posmesh_db_pool_overflow" in samples
        assert value(samples, "posmesh_admission_max_in_flight") == \
            stack.settings.admission_max_in_flight
        certificates = {sample.labels["certificate"]: sample.value
                        for sample in samples["posmesh_certificate_expiry_timestamp_seconds"]}
        assert "server.pem" in certificates, f"{service} does not export the edge certificate"
        assert f"mesh/{service}.pem" in certificates, f"{service} does not export its mesh certificate"
    auth = await scrape_service(stack, "auth")
    assert value(auth, "posmesh_redis_call_seconds_count") > 0


async def test_socket_and_outbox_metrics_move_when_an_order_reaches_a_kitchen_screen(stack, edge):
    party = await open_restaurant(edge)
    dish = await add_menu_item(edge, party.manager)
    kitchen = await signed_in(stack, party.manager, "kitchen")
    realtime_before = [await scrape(addr) for addr in stack.metrics_targets()["realtime"]]
    orders_before = await scrape_service(stack, "orders")

    await place_order(edge, party.staff, [line(dish)])
    await kitchen.next("order.created", timeout=10)

    orders_after = await scrape_service(stack, "orders")
    assert value(orders_after, "posmesh_outbox_published_events_total") > \
        value(orders_before, "posmesh_outbox_published_events_total")
    assert "posmesh_outbox_lag_seconds" in orders_after
    realtime_after = [await scrape(addr) for addr in stack.metrics_targets()["realtime"]]
    kitchens = sum(value(samples, "posmesh_realtime_connections", connection_type="kitchen")
                   for samples in realtime_after)
    assert kitchens >= 1
    fanouts = [value(after, "posmesh_realtime_fanout_seconds_count")
               - value(before, "posmesh_realtime_fanout_seconds_count")
               for before, after in zip(realtime_before, realtime_after)]
    assert sum(fanouts) >= 1
    await kitchen.close()


async def test_no_metric_has_a_label_per_user_session_or_restaurant(stack, edge):
    await register_and_login(edge)
    for addrs in targets(stack).values():
        for addr in addrs:
            samples = await scrape(addr)
            labels = {name for family in samples.values() for sample in family
                      for name in sample.labels}
            assert not labels & UNBOUNDED_LABELS, (addr, labels & UNBOUNDED_LABELS)


@pytest.mark.parametrize("path", ["/metrics", "/stats/prometheus", "/stats"])
async def test_metrics_are_not_served_through_the_edge(edge, path):
    reply = await edge.get(path)

    assert reply.status_code in (401, 404), reply.status_code
    assert "grpc_server_handled_total" not in reply.text
    assert "envoy_" not in reply.text


async def test_the_realtime_websocket_listener_no_longer_serves_metrics(stack):
    async with direct_client(stack) as client:  # the edge's identity, as only Envoy reaches it
        reply = await client.get(f"https://{stack.settings.realtime_ws_addr}/metrics")
    assert reply.status_code == 404


async def test_envoy_stats_are_served_on_the_edge_metrics_listener_only(stack, edge):
    await edge.get("/api/v1/health")
    samples = await scrape(stack.settings.envoy_metrics_addr)

    assert value(samples, "envoy_http_downstream_rq_total") > 0
    assert "envoy_server_days_until_first_cert_expiring" in samples
    async with httpx.AsyncClient(timeout=5) as client:
        for path in ("/stats", "/quitquitquit", "/config_dump", "/stats/prometheus"):
            reply = await client.get(f"http://{stack.settings.envoy_metrics_addr}{path}")
            assert reply.status_code == 404, path
        reply = await client.post(f"http://{stack.settings.envoy_metrics_addr}/metrics")
        assert reply.status_code == 404, "only GET reaches the admin's stats"
