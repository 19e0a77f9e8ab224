"""CPU per request of the orders service, per RPC: what one call costs the orders process.

Each RPC is driven through the edge (HTTP/2 + JSON over TLS, transcoded by Envoy: what clients
pay) as a batch of exactly N requests, CONCURRENCY in flight, from a generator process. The
orders process's CPU time (every thread, from /proc/<pid>/task/*/schedstat in nanoseconds) is read
before and after the batch; the difference, less what the idle process burns in the same time
(its background tasks: the outbox relay, the revocation follower, health checks), divided by the
successful requests, is the RPC's CPU per request. Only the orders process counts: Envoy, Postgres,
Redis and the generator are left out.

A round runs every RPC once: the reads on the seeded orders, then the writes on orders of their
own (CreateOrder makes N orders, AddOrderItems adds a line to each, UpdateOrderStatus cancels
each, so a round leaves the world as it found it). The result per RPC is the median over the
rounds (the machine is shared and noisy).

For reference, the same is measured for a trivial grpc.aio unary RPC (bench/trivial_grpc.py: an
empty message in, an empty message out, no interceptor) called directly with gRPC: the floor any
Python gRPC handler pays on this machine.

The report sets the figures against the committed measurement of the code before the CPU work
(BEFORE_FILE) with the ratio before / after.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.edge_check import process_cpu_seconds
from bench.loadgen import HttpLoad, run_http
from bench.trivial_grpc import TrivialLoad, drive, start_server

BEFORE_FILE = Path(__file__).resolve().parent / "results" / "2026-11-29-cpu_per_rpc-before.json"

# RPC -> the bench scenario (bench/scenarios.py) that sends it through the edge.
READS = {"ListActiveOrders": "list_active", "GetOrder": "get_order", "GetMenu": "get_menu",
         "ListOrders": "order_history"}
WRITES = {"CreateOrder": "create_order", "AddOrderItems": "add_items",
          "UpdateOrderStatus": "cancel"}
RPCS = (*READS, *WRITES)
# The orders mix's RPCs (70 % list active, 20 % get, 10 % create): the "hot RPCs".
HOT_RPCS = ("ListActiveOrders", "GetOrder", "CreateOrder")
# Writes answer at once; the outbox relay publishes their events just after: counted too.
SETTLE_SECONDS = 0.5


@dataclass(frozen=True)
class CpuSpec:
    requests: int  # per RPC per round
    rounds: int
    concurrency: int = 8


def orders_pids(bench) -> list[int]:
    """Every orders process of the stack (one per replica)."""
    return [pid for name, pids in bench.system.stack.pids().items()
            if name == "orders" or name.startswith("orders-") for pid in pids]


def cpu_of(pids: list[int]) -> float:
    return sum(process_cpu_seconds(pid) for pid in pids)


async def idle_rate(pids: list[int], seconds: float = 3.0) -> float:
    """CPU seconds per second the orders processes use with no request."""
    before, began = cpu_of(pids), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_of(pids) - before) / (time.monotonic() - began)


async def _batch(bench, pids: list[int], idle: float, spec: CpuSpec, rpc: str, scenario: str,
                 round_number: int, orders: list | None = None):
    """Exactly spec.requests requests (or one per order of `orders`)."""
    load = HttpLoad(scenario, bench.edge, concurrency=spec.concurrency, connections=2,
                    world=bench.world, seed=round_number * 31 + len(rpc),
                    count=len(orders) if orders is not None else spec.requests,
                    extra={"orders": orders} if orders is not None else {})
    before, began = cpu_of(pids), time.monotonic()
    [outcome] = await bench._pool(run_http, load)
    await asyncio.sleep(SETTLE_SECONDS)
    used = cpu_of(pids) - before - idle * (time.monotonic() - began)
    ok = len(outcome.recorder.ok_latencies)
    errors = dict(outcome.recorder.errors)
    return {"us": round(used / max(1, ok) * 1e6, 1), "ok": ok, "errors": errors,
            "rps": round(len(outcome.recorder.latencies) / max(outcome.duration, 1e-9))}, outcome


async def _round(bench, pids: list[int], idle: float, spec: CpuSpec, number: int) -> dict:
    measured = {}
    for rpc, scenario in READS.items():
        measured[rpc], _ = await _batch(bench, pids, idle, spec, rpc, scenario, number)
    measured["CreateOrder"], created = await _batch(bench, pids, idle, spec, "CreateOrder",
                                                    "create_order", number)
    made = [(restaurant_id, order_id, 1)
            for restaurant_id, ids in created.created_orders.items() for order_id in ids]
    measured["AddOrderItems"], _ = await _batch(bench, pids, idle, spec, "AddOrderItems",
                                                "add_items", number, orders=made)
    # Each order is cancelled at the version AddOrderItems left it at.
    cancel = [(restaurant_id, order_id, 2) for restaurant_id, order_id, _ in made]
    measured["UpdateOrderStatus"], _ = await _batch(bench, pids, idle, spec, "UpdateOrderStatus",
                                                    "cancel", number, orders=cancel)
    return measured


async def trivial_baseline(bench, spec: CpuSpec) -> dict:
    """A trivial grpc.aio unary RPC's server CPU per call (median over the rounds)."""
    server = await start_server()
    try:
        figures = []
        load = TrivialLoad(server.address, spec.requests, spec.concurrency)
        await bench._pool(drive, TrivialLoad(server.address, 200, spec.concurrency))  # warm
        for _ in range(spec.rounds):
            before = process_cpu_seconds(server.pid)
            [ok] = await bench._pool(drive, load)
            figures.append((process_cpu_seconds(server.pid) - before) / max(1, ok) * 1e6)
        return {"us": round(statistics.median(figures), 1),
                "us_per_round": [round(f, 1) for f in figures]}
    finally:
        await server.stop()


def load_before(path: Path = BEFORE_FILE) -> dict | None:
    try:
        return json.loads(path.read_text()).get("cpu_per_rpc")
    except (OSError, ValueError):
        return None


def compare(after: dict, before: dict | None) -> dict:
    """RPC -> before and after µs/request and their ratio; also each as a multiple of the trivial
    RPC measured in the same run, and the ratio of those: on a shared machine, contention from
    other work inflates every CPU time of a run alike, and the trivial RPC shows by how much."""
    table = {}
    trivial_after = after["trivial_grpc"]["us"]
    trivial_before = (before or {}).get("trivial_grpc", {}).get("us")
    for rpc in RPCS:
        now = after["rpcs"].get(rpc, {}).get("us")
        then = (before or {}).get("rpcs", {}).get(rpc, {}).get("us")
        row = {"before_us": then, "after_us": now,
               "ratio": round(then / now, 2) if then and now else None,
               "before_x_trivial": round(then / trivial_before, 2) if then and trivial_before else None,
               "after_x_trivial": round(now / trivial_after, 2) if now and trivial_after else None}
        row["ratio_x_trivial"] = (round(row["before_x_trivial"] / row["after_x_trivial"], 2)
                                  if row["before_x_trivial"] and row["after_x_trivial"] else None)
        table[rpc] = row
    table["trivial grpc.aio RPC"] = {"before_us": trivial_before, "after_us": trivial_after,
                                     "ratio": round(trivial_before / trivial_after, 2)
                                     if trivial_before and trivial_after else None,
                                     "before_x_trivial": 1.0, "after_x_trivial": 1.0,
                                     "ratio_x_trivial": 1.0}
    return table


async def run(bench, spec: CpuSpec) -> dict:
    if bench.system.stack is None:
        raise RuntimeError("CPU per RPC needs a local stack (it reads the orders process's CPU)")
    pids = orders_pids(bench)
    # Unmeasured: connections, prepared statements, caches and the JIT-less interpreter's
    # first-call paths warm up.
    warm = CpuSpec(max(50, spec.requests // 10), 1, spec.concurrency)
    await _round(bench, pids, 0.0, warm, 0)
    await bench.quiet()
    idle = await idle_rate(pids)
    rounds = []
    for number in range(1, spec.rounds + 1):
        rounds.append(await _round(bench, pids, idle, spec, number))
        print(f"  round {number}: " + ", ".join(f"{rpc} {m['us']:g}" for rpc, m in rounds[-1].items()),
              file=sys.stderr, flush=True)
    rpcs = {}
    for rpc in RPCS:
        per_round = [r[rpc]["us"] for r in rounds]
        errors: dict[str, int] = {}
        for r in rounds:
            for kind, count in r[rpc]["errors"].items():
                errors[kind] = errors.get(kind, 0) + count
        rpcs[rpc] = {"us": round(statistics.median(per_round), 1), "us_per_round": per_round,
                     "requests": sum(r[rpc]["ok"] for r in rounds), "errors": errors,
                     "rps_median": statistics.median(r[rpc]["rps"] for r in rounds)}
    result = {"requests_per_round": spec.requests, "rounds": spec.rounds,
              "concurrency": spec.concurrency, "orders_processes": len(pids),
              # Mutual TLS between the edge and the services (on since the mesh work; the
              # before and after files were measured without it, MESH_TLS=false to compare).
              "mesh_tls": bool(getattr(bench.system.settings, "mesh_tls", False)),
              "idle_us_per_s": round(idle * 1e6), "rpcs": rpcs,
              "trivial_grpc": await trivial_baseline(bench, spec)}
    before = load_before()
    result["before_file"] = str(BEFORE_FILE.relative_to(BEFORE_FILE.parents[2]))
    result["compared"] = compare(result, before) if before else None
    return result


def _cell(value, suffix: str = "") -> str:
    return "—" if value is None else f"{value:g}{suffix}"


def table(result: dict) -> list[str]:
    """The per-RPC Markdown table: before, after, ratio (or this run alone)."""
    compared = result.get("compared")
    trivial = result["trivial_grpc"]["us"]
    if compared:
        lines = ["| RPC | before µs/request | after µs/request | before / after | before × trivial "
                 "| after × trivial | before / after in trivial RPCs |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for rpc, row in compared.items():
            hot = " (hot)" if rpc in HOT_RPCS else ""
            name = f"{rpc} (direct, no interceptor)" if rpc.startswith("trivial") else rpc + hot
            lines.append(f"| {name} | {_cell(row['before_us'])} | {_cell(row['after_us'])} | "
                         f"{_cell(row['ratio'], '×')} | {_cell(row['before_x_trivial'])} | "
                         f"{_cell(row['after_x_trivial'])} | {_cell(row['ratio_x_trivial'], '×')} |")
        return lines
    lines = ["| RPC | µs/request | × trivial RPC | per round |", "|---|---:|---:|---|"]
    for rpc, row in result["rpcs"].items():
        lines.append(f"| {rpc} | {row['us']} | {round(row['us'] / trivial, 1) if trivial else '—'} "
                     f"| {', '.join(map(str, row['us_per_round']))} |")
    lines.append(f"| trivial grpc.aio RPC (direct, no interceptor) | {trivial} | 1 | "
                 f"{', '.join(map(str, result['trivial_grpc']['us_per_round']))} |")
    return lines
