"""The overload workload: the orders mix at 2× and 4× the highest rate that met its percentiles
(the mix phase's step search), to show that past saturation the system refuses what it cannot
do in time instead of collapsing.

For each factor: goodput (successful requests per second) against capacity, the p99 of the
admitted requests (from their scheduled send), how fast refusals (503 OVERLOADED) come back,
requests over 2 s, timeouts, and answers without a reason a client can act on."""

from __future__ import annotations

from dataclasses import dataclass

FACTORS = (2, 4)


@dataclass(frozen=True)
class OverloadSpec:
    seconds: float
    warmup: float
    capacity_if_unknown: float  # a quick run has no step search


def goodput_ratio(summary: dict, capacity: float) -> float:
    return round(summary["achieved_rps"] / capacity, 3) if capacity else 0.0


async def run(bench, spec: OverloadSpec) -> dict:
    """Runs each factor on `bench` (bench.cli.Bench); returns the phase's results."""
    best = bench.results["workloads"].get("orders_mix_max_rate") or {}
    capacity = float(best.get("rate") or spec.capacity_if_unknown)
    runs = {}
    for factor in FACTORS:
        await bench.quiet()
        summary, _ = await bench.http("orders_mix", rate=capacity * factor, duration=spec.seconds,
                                      warmup=spec.warmup, processes=min(4, factor))
        summary["factor"] = factor
        summary["goodput_ratio"] = goodput_ratio(summary, capacity)
        bench.print_summary(f"orders mix at {factor}× capacity ({capacity * factor:g}/s)", summary)
        runs[f"{factor}x"] = summary
        await bench.close_orders()
    return {"capacity_rps": capacity, "capacity_measured": bool(best.get("rate")),
            "runs": runs}
