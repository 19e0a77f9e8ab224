"""A real Prometheus (Debian's package) scrapes the running stack with the repo's rules: every
service process and Envoy are up as targets, the series exist and move when traffic flows, the
recording rules evaluate, and every metric the rules and the dashboard query is exposed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from typing import AsyncIterator

import httpx
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stack import prometheus_config
from tests.harness import free_ports
from tests.support.orders import add_menu_item, line, open_restaurant, place_order
from tests.support.prometheus import (DASHBOARD, RULES, base_name, ensure_prometheus_tools,
                                      metric_names)
from tests.support.realtime import signed_in

SCRAPE_INTERVAL = "1s"


class Prometheus:
    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self.url = url
        self.client = client

    async def query(self, promql: str) -> list[dict]:
        reply = await self.client.get(f"{self.url}/api/v1/query", params={"query": promql})
        body = reply.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    async def scalar(self, promql: str) -> float:
        result = await self.query(promql)
        return sum(float(item["value"][1]) for item in result)

    async def eventually(self, promql: str, check, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            result = await self.query(promql)
            if check(result):
                return result
            assert time.monotonic() < deadline, f"{promql} never satisfied the check: {result}"
            await asyncio.sleep(0.5)


@pytest_asyncio.fixture(scope="module")
async def prometheus(stack) -> AsyncIterator[Prometheus]:
    _, server = ensure_prometheus_tools()
    folder = stack.data_dir / "prometheus-e2e"
    config = prometheus_config.render(stack.settings, folder, scrape_interval=SCRAPE_INTERVAL,
                                      targets=stack.metrics_targets())
    port = free_ports(1)[0]
    process = subprocess.Popen(
        [server, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=(folder / "prometheus.log").open("wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, (folder / "prometheus.log").read_text()
                try:
                    if (await client.get(f"{url}/-/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "Prometheus did not become ready"
                await asyncio.sleep(0.2)
            yield Prometheus(url, client)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


async def test_prometheus_scrapes_every_service_process_and_envoy(stack, prometheus):
    jobs = stack.metrics_targets()
    up = await prometheus.eventually(
        "up", lambda result: len(result) == sum(map(len, jobs.values()))
        and all(item["value"][1] == "1" for item in result))

    by_job: dict[str, int] = {}
    for item in up:
        by_job[item["metric"]["job"]] = by_job.get(item["metric"]["job"], 0) + 1
    assert by_job == {job: len(addrs) for job, addrs in jobs.items()}
    assert set(by_job) == {"auth", "staff", "orders", "realtime", "envoy"}
    assert by_job["realtime"] == 2 and by_job["orders"] == stack.settings.replicas("orders")


async def test_series_exist_and_move_when_an_order_reaches_a_kitchen_screen(
        stack, edge, prometheus):
    await prometheus.eventually('up{job="realtime"}', lambda result: len(result) == 2)
    handled = 'sum(grpc_server_handled_total{job="orders",grpc_method="CreateOrder",grpc_code="OK"})'
    published = "sum(posmesh_outbox_published_events_total)"
    edge_requests = 'sum(envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="edge"})'
    before = {q: await prometheus.scalar(q) for q in (handled, published, edge_requests)}

    party = await open_restaurant(edge)
    dish = await add_menu_item(edge, party.manager)
    kitchen = await signed_in(stack, party.manager, "kitchen")
    for _ in range(3):
        await place_order(edge, party.staff, [line(dish)])
        await kitchen.next("order.created", timeout=10)

    for promql in (handled, published, edge_requests):
        await prometheus.eventually(
            promql, lambda result, q=promql: sum(float(i["value"][1]) for i in result)
            >= before[q] + 3)
    await prometheus.eventually('sum(posmesh_realtime_connections{connection_type="kitchen"})',
                                lambda result: result and float(result[0]["value"][1]) >= 1)
    for series in ("posmesh_db_pool_connections", "posmesh_db_pool_max",
                   "posmesh_redis_call_seconds_bucket", "posmesh_outbox_lag_seconds",
                   "posmesh_admission_refused_total", "posmesh_auth_logins_total",
                   "posmesh_realtime_fanout_seconds_bucket",
                   "posmesh_certificate_expiry_timestamp_seconds",
                   "envoy_server_days_until_first_cert_expiring"):
        assert await prometheus.query(series), f"no {series} series in Prometheus"
    await kitchen.close()


async def test_the_recording_rules_evaluate_on_the_scraped_series(prometheus):
    for record in ("posmesh:grpc_requests:rate5m", "posmesh:db_pool_usage:ratio",
                   "posmesh:auth_failures:increase1m", "posmesh:outbox_lag_seconds:max"):
        await prometheus.eventually(record, bool)
    rules = (await prometheus.client.get(f"{prometheus.url}/api/v1/rules")).json()
    health = {rule["name"]: rule["health"] for group in rules["data"]["groups"]
              for rule in group["rules"]}
    assert health and set(health.values()) <= {"ok", "unknown"}, health


async def exposed_families(stack) -> set[str]:
    """Every metric family the stack's metrics pages declare (with or without samples yet)."""
    names: set[str] = set()
    async with httpx.AsyncClient(timeout=5) as client:
        for targets in stack.metrics_targets().values():
            for target in targets:
                text = (await client.get(f"http://{target}/metrics")).text
                for family in text_string_to_metric_families(text):
                    names.add(family.name)
                    names.update(base_name(sample.name) for sample in family.samples)
    return names


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"]
               for target in panel.get("targets", [])]
    queries += [variable["query"]["query"] for variable in dashboard["templating"]["list"]]
    return queries


def _rule_queries() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


@pytest.mark.parametrize("source", ["dashboard", "rules"])
async def test_every_metric_the_dashboard_and_rules_query_is_exposed(stack, source):
    queries = _dashboard_queries() if source == "dashboard" else _rule_queries()
    assert queries
    exposed = await exposed_families(stack)
    named = {base_name(name) for query in queries for name in metric_names(query)}

    assert named, "no metric names found in the queries"
    assert sorted(named - exposed) == []


def test_the_dashboard_covers_red_pool_sockets_auth_outbox_and_admission():
    queries = " ".join(_dashboard_queries())
    for metric in ("grpc_server_handled_total", "grpc_server_handling_seconds_bucket",
                   "posmesh_db_pool_connections", "posmesh_realtime_connections",
                   "posmesh_rpc_errors_total", "posmesh_outbox_lag_seconds",
                   "posmesh_admission_refused_total"):
        assert metric in queries, metric
