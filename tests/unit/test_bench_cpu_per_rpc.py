"""The arithmetic of the bench's CPU-per-RPC phase and its target (no servers)."""

from __future__ import annotations

import pytest

from bench import cpu_per_rpc, targets

pytestmark = pytest.mark.unit


def result(us: dict[str, float], trivial: float) -> dict:
    return {"rpcs": {rpc: {"us": value} for rpc, value in us.items()},
            "trivial_grpc": {"us": trivial, "us_per_round": [trivial]}}


BEFORE = result({rpc: 1000.0 for rpc in cpu_per_rpc.RPCS}, trivial=200.0)


def test_each_rpc_is_set_against_before_raw_and_in_trivial_rpcs_of_its_own_run():
    after = result({rpc: 500.0 for rpc in cpu_per_rpc.RPCS}, trivial=250.0)

    row = cpu_per_rpc.compare(after, BEFORE)["GetOrder"]

    assert row["ratio"] == 2.0
    assert (row["before_x_trivial"], row["after_x_trivial"]) == (5.0, 2.0)
    assert row["ratio_x_trivial"] == 2.5  # the after run's machine was busier


def test_the_target_is_met_only_when_every_hot_rpc_halves_in_raw_cpu():
    def verdict(get_order_us: float) -> str:
        after = result({**{rpc: 500.0 for rpc in cpu_per_rpc.RPCS}, "GetOrder": get_order_us},
                       trivial=100.0)
        [check] = [c for c in targets.evaluate({"cpu_per_rpc": {
            "compared": cpu_per_rpc.compare(after, BEFORE)}}) if c.area == "orders"
            and "CPU per request" in c.target]
        return check.verdict

    assert verdict(500.0) == "MET"
    assert verdict(510.0) == "NOT MET"


def test_the_table_names_the_hot_rpcs_and_the_floor():
    after = result({rpc: 500.0 for rpc in cpu_per_rpc.RPCS}, trivial=200.0)
    after["compared"] = cpu_per_rpc.compare(after, BEFORE)

    lines = cpu_per_rpc.table(after)

    assert any(line.startswith("| ListActiveOrders (hot) | 1000 | 500 | 2× |") for line in lines)
    assert lines[-1].startswith("| trivial grpc.aio RPC (direct, no interceptor) | 200 | 200 |")
