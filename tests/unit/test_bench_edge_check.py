"""The arithmetic of the bench's unknown-field-check phase and its target (no servers)."""

from __future__ import annotations

import os

import pytest

from bench import edge_check, targets
from bench.edge_check import Round

pytestmark = pytest.mark.unit


def round_of(checked_us: float, unchecked_us: float, services_us: float = 3000.0,
             requests: int = 500) -> Round:
    return Round(checked_requests=requests, unchecked_requests=requests,
                 checked_cpu_s=checked_us * requests / 1e6,
                 unchecked_cpu_s=unchecked_us * requests / 1e6,
                 services_cpu_s=services_us * 2 * requests / 1e6, errors=0)


def test_cpu_per_request_is_cpu_time_over_the_requests_answered():
    measured = round_of(720.0, 700.0, services_us=3000.0)

    assert measured.checked_us == pytest.approx(720.0)
    assert measured.unchecked_us == pytest.approx(700.0)
    assert measured.services_us == pytest.approx(3000.0)  # both streams reach the services


def test_the_cost_is_the_median_of_the_per_round_differences():
    summary = edge_check.summarise("till_order", [round_of(720, 700), round_of(790, 700),
                                                  round_of(705, 700)])

    assert summary["delta_us_per_round"] == [20.0, 90.0, 5.0]
    assert summary["delta_us"] == 20.0  # one noisy round does not move it
    assert summary["delta_percent_of_edge"] == pytest.approx(20 / 700 * 100, abs=0.01)
    assert summary["delta_percent_of_request"] == pytest.approx(20 / 3700 * 100, abs=0.01)


def _verdict(results: dict) -> targets.Check:
    (check,) = [c for c in targets.evaluate(results) if c.area == "edge"]
    return check


def test_the_target_is_met_only_when_every_request_kind_is_under_five_percent():
    cheap = edge_check.summarise("order_history", [round_of(702, 700)])
    dear = edge_check.summarise("till_order", [round_of(750, 700)])

    assert _verdict({"edge_check": {"order_history": cheap}}).verdict == "MET"
    assert _verdict({"edge_check": {"order_history": cheap, "till_order": dear}}).verdict == "NOT MET"
    assert _verdict({}).verdict == "NOT RUN"


def test_envoy_cpu_is_read_for_a_live_process():
    assert edge_check.process_cpu_seconds(os.getpid()) > 0
