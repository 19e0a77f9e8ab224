"""The observability bench compares like with like: only metrics and tracing differ between
its modes, and its report says how each mode compares with metrics and tracing off."""

from __future__ import annotations

from pathlib import Path

from bench.observability import MODES, mode_settings, report


def test_off_has_no_metrics_page_and_records_no_span(tmp_path: Path):
    off = mode_settings(tmp_path, "off", "http://127.0.0.1:4317")

    assert not any(off[key] for key in ("auth_metrics_addr", "staff_metrics_addr",
                                        "orders_metrics_addr", "realtime_metrics_addr",
                                        "envoy_metrics_addr"))
    assert off["otel_sample_ratio"] == 0.0 and off["otel_exporter_otlp_endpoint"] is None


def test_metrics_mode_turns_on_every_page_but_not_tracing(tmp_path: Path):
    metrics = mode_settings(tmp_path, "metrics", "http://127.0.0.1:4317")

    addrs = [metrics[key] for key in ("auth_metrics_addr", "staff_metrics_addr",
                                      "orders_metrics_addr", "realtime_metrics_addr",
                                      "envoy_metrics_addr")]
    assert all(addr.startswith("127.0.0.1:") for addr in addrs) and len(set(addrs)) == 5
    assert metrics["otel_exporter_otlp_endpoint"] is None


def test_tracing_mode_samples_and_exports_everything(tmp_path: Path):
    traced = mode_settings(tmp_path, "metrics+tracing", "http://127.0.0.1:4317")

    assert traced["otel_sample_ratio"] == 1.0
    assert traced["otel_exporter_otlp_endpoint"] == "http://127.0.0.1:4317"


def test_the_report_states_each_modes_cost_against_off():
    results = {mode: {scenario: {"services_us_per_request": base * factor,
                                 "envoy_us_per_request": 100.0}
                      for scenario, base in (("till_order", 1000.0), ("order_history", 500.0))}
               for mode, factor in zip(MODES, (1.0, 1.02, 1.5))}
    text = report(results, ".venv/bin/python -m bench.observability", "2 cores")

    assert "| till_order | metrics | 1020 | 100 | +2.0 % |" in text
    assert "| order_history | metrics+tracing | 750 | 100 | +50.0 % |" in text
    assert ".venv/bin/python -m bench.observability" in text
