"""One orders process against all of them (ORDERS_REPLICAS), in one run: the orders mix at a rate
one process cannot serve (goodput: what got through) and at a moderate rate (latency), in
alternating rounds — one replica, all, one, all... — so a machine whose load drifts during the
run (other work on it) weighs on both alike; the report gives the medians and their ratio.

"One replica" is the same stack with the other orders processes stopped: Envoy still lists them,
refuses nothing more (its breakers stay sized for all of them), retries the connect failures on
the live one and ejects the stopped ones; before each round with all replicas, the bench waits
until Envoy sends traffic to every one again. Auth and staff keep their replicas.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class ReplicasSpec:
    rates: tuple[int, ...]  # offered req/s; the highest should be beyond one process
    rounds: int
    seconds: float
    warmup: float


async def run(bench, spec: ReplicasSpec) -> dict:
    """Runs the rounds on `bench` (bench.cli.Bench) and returns the phase's results."""
    stack = bench.system.stack
    names = stack.replicas("orders")
    counts = (1, len(names))
    runs: dict[int, dict[int, list[dict]]] = {rate: {n: [] for n in counts} for rate in spec.rates}
    try:
        for round_number in range(1, spec.rounds + 1):
            for count in counts:
                await _run_orders_processes(bench, names, count)
                for rate in spec.rates:
                    await bench.quiet(limit=5.0)
                    summary, _ = await bench.http("orders_mix", rate=rate, duration=spec.seconds,
                                                  warmup=spec.warmup)
                    summary["orders_processes"] = count
                    summary["round"] = round_number
                    bench.print_summary(f"round {round_number}, {count} orders process(es), "
                                        f"mix at {rate}/s", summary)
                    runs[rate][count].append(summary)
                    await bench.close_orders()
    finally:
        await _run_orders_processes(bench, names, len(names))
    return {"orders_processes": list(counts), "rounds": spec.rounds, "seconds": spec.seconds,
            "rates": {str(rate): _medians(per_count, counts) for rate, per_count in runs.items()}}


def _medians(per_count: dict[int, list[dict]], counts: tuple[int, int]) -> dict:
    def median(count: int, key: str) -> float:
        return round(statistics.median(s[key] for s in per_count[count]), 1)

    medians = {str(count): {key: median(count, key)
                            for key in ("achieved_rps", "p50_ms", "p95_ms", "p99_ms", "errors")}
               for count in counts}
    one, many = medians[str(counts[0])], medians[str(counts[1])]
    medians["goodput_ratio"] = round(many["achieved_rps"] / one["achieved_rps"], 2) \
        if one["achieved_rps"] else None
    medians["runs"] = {str(count): per_count[count] for count in counts}
    return medians


async def _run_orders_processes(bench, names: list[str], count: int, limit: float = 90.0) -> None:
    """The first `count` orders processes running and taking traffic, the others stopped."""
    stack = bench.system.stack
    await asyncio.gather(*(stack.stop_service(name) for name in names[count:]))
    await asyncio.gather(*(stack.start_service(name) for name in names[:count]))
    wanted = {stack.addr(name) for name in names[:count]}
    deadline = time.monotonic() + limit
    while (await _ejected(stack, "orders")) & wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"Envoy still ejects some of {sorted(wanted)}")
        await asyncio.sleep(1.0)


async def _ejected(stack, cluster: str) -> set[str]:
    """Endpoints of `cluster` Envoy does not send traffic to (outlier ejection)."""
    url = f"http://127.0.0.1:{stack.settings.envoy_admin_port}/clusters?format=json"
    async with httpx.AsyncClient(timeout=5) as admin:
        body = (await admin.get(url)).json()
    (status,) = [c for c in body["cluster_statuses"] if c["name"] == cluster]
    return {f"{h['address']['socket_address']['address']}:"
            f"{h['address']['socket_address']['port_value']}"
            for h in status["host_statuses"] if h.get("health_status", {}).get("failed_outlier_check")}
