"""The edge's part in observability: it decides trace sampling once, from OTEL_SAMPLE_RATIO, and
its metrics listener serves only GET /metrics from the admin's stats (checked on a live Envoy by
tests/e2e/test_metrics.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from stack import envoy_config
from tests.harness import stack_settings


def _rendered(tmp_path: Path, **updates) -> dict:
    settings, _ = stack_settings(tmp_path, database_url=None, realtime_replicas=1)
    path = envoy_config.render(settings.model_copy(update=updates), tmp_path / "envoy")
    envoy_config.validate(path)
    return yaml.safe_load(path.read_text())


def _edge_manager(config: dict) -> dict:
    (edge,) = [listener for listener in config["static_resources"]["listeners"]
               if listener["name"] == "edge"]
    return edge["filter_chains"][0]["filters"][0]["typed_config"]


def test_the_edge_samples_traces_at_the_configured_ratio(tmp_path: Path):
    config = _rendered(tmp_path, otel_exporter_otlp_endpoint="http://127.0.0.1:4317",
                       otel_sample_ratio=0.1)

    assert _edge_manager(config)["tracing"]["random_sampling"] == {"value": 10.0}


def test_the_metrics_listener_forwards_only_get_metrics_to_the_admin(tmp_path: Path):
    config = _rendered(tmp_path)
    (metrics,) = [listener for listener in config["static_resources"]["listeners"]
                  if listener["name"] == "metrics"]
    routes = (metrics["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
              ["virtual_hosts"][0]["routes"])

    assert routes[0]["match"]["path"] == "/metrics"
    assert routes[0]["route"]["cluster"] == "envoy_admin"
    assert routes[0]["route"]["regex_rewrite"]["substitution"] == "/stats/prometheus"
    assert routes[1]["direct_response"]["status"] == 404
    (admin,) = [cluster for cluster in config["static_resources"]["clusters"]
                if cluster["name"] == "envoy_admin"]
    address = admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"]["address"] == "127.0.0.1"
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_no_metrics_listener_when_its_address_is_empty(tmp_path: Path):
    config = _rendered(tmp_path, envoy_metrics_addr="")

    assert "metrics" not in {listener["name"] for listener in config["static_resources"]["listeners"]}
