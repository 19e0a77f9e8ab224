"""Prometheus' targets: every service process's metrics address (replicas included) and Envoy's,
as `posmesh run` and the e2e test give them to Prometheus."""

from __future__ import annotations

from pathlib import Path

import yaml

from stack import prometheus_config
from stack.supervisor import Stack
from tests.harness import stack_settings


def test_every_process_has_a_metrics_address_of_its_own(tmp_path: Path):
    settings, extra = stack_settings(tmp_path, database_url=None, realtime_replicas=2)
    stack = Stack(settings, extra_realtime_addrs=extra)

    targets = stack.metrics_targets()

    assert targets["realtime"] == settings.realtime_metrics_addrs  # the listed ones, in order
    for service in ("auth", "staff", "orders"):  # the first at its setting, replicas elsewhere
        assert targets[service][0] == settings.metrics_addr(service)
        assert len(targets[service]) == settings.replicas(service)
    assert targets["envoy"] == [settings.envoy_metrics_addr]
    everything = [addr for addrs in targets.values() for addr in addrs]
    assert len(everything) == len(set(everything)) == len(stack.service_names) + 1


def test_a_replica_without_a_listed_address_gets_a_free_port_kept_across_restarts(tmp_path: Path):
    settings, _ = stack_settings(tmp_path, database_url=None, realtime_replicas=1)
    stack = Stack(settings)

    second = stack.metrics_addr("orders-2")

    assert second.startswith("127.0.0.1:") and second != settings.orders_metrics_addr
    assert stack.metrics_addr("orders-2") == second
    assert stack._metrics_override("orders-2") == {"ORDERS_METRICS_ADDR": second}
    assert stack._metrics_override("orders") == {}


def test_metrics_off_stays_off_for_every_replica(tmp_path: Path):
    settings, _ = stack_settings(tmp_path, database_url=None, realtime_replicas=1)
    stack = Stack(settings.model_copy(update={"orders_metrics_addr": ""}))

    assert stack.metrics_addr("orders") == stack.metrics_addr("orders-2") == ""
    assert "orders" not in stack.metrics_targets()


def test_the_rendered_config_scrapes_each_job_and_loads_the_rules(tmp_path: Path):
    settings, _ = stack_settings(tmp_path, database_url=None, realtime_replicas=1)
    targets = {"orders": ["127.0.0.1:1", "127.0.0.1:2"], "envoy": ["127.0.0.1:3"]}

    path = prometheus_config.render(settings, tmp_path / "prometheus", targets=targets)
    config = yaml.safe_load(path.read_text())

    assert {job["job_name"]: job["static_configs"][0]["targets"]
            for job in config["scrape_configs"]} == targets
    assert config["rule_files"] == ["rules.yml"]
    assert (path.parent / "rules.yml").read_text() == prometheus_config.RULES.read_text()


def test_make_run_prints_every_metrics_address_and_writes_a_config_for_them(tmp_path: Path):
    from stack.cli import _metrics_banner

    settings, extra = stack_settings(tmp_path, database_url=None, realtime_replicas=2)
    stack = Stack(settings, extra_realtime_addrs=extra)

    banner = _metrics_banner(stack)

    for addrs in stack.metrics_targets().values():
        for addr in addrs:
            assert f"http://{addr}/metrics" in banner
    config = yaml.safe_load((stack.data_dir / "prometheus" / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == set(stack.metrics_targets())
    assert "--config.file=" in banner
