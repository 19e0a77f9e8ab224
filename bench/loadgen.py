"""Load-generator processes: the load never runs in the process that supervises the stack.

`run_http(spec)` is executed in a worker of a spawn-context process pool. Several workers of one
workload share a start time on the system-wide monotonic clock, so their schedules line up.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from bench.h2client import H2Pool, tls_context
from bench.openloop import Recorder, run_batch, run_closed_loop, run_open_loop
from bench.scenarios import Scenarios
from bench.world import Target, World


def _dump_tasks(signum, frame) -> None:
    import sys

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        print("no running event loop", file=sys.stderr, flush=True)
        return
    for task in asyncio.all_tasks(loop):
        task.print_stack(limit=8, file=sys.stderr)
    sys.stderr.flush()


@dataclass
class HttpLoad:
    scenario: str
    target: Target
    rate: float = 0.0  # per process; open loop
    duration: float = 10.0
    warmup: float = 2.0
    concurrency: int = 0  # > 0: closed loop (the ceiling) instead of a schedule
    connections: int = 4
    world: World | None = None
    seed: int = 1
    shard: int = 0
    shards: int = 1
    start_at: float = 0.0  # time.monotonic() at which to begin
    timeout: float = 15.0
    count: int = 0  # > 0: exactly this many requests, `concurrency` at a time (no schedule)
    extra: dict = field(default_factory=dict)


@dataclass
class HttpResult:
    recorder: Recorder
    duration: float
    refresh_tokens: list[str]
    created_orders: dict[str, list[str]]


def run_http(spec: HttpLoad) -> HttpResult:
    import uvloop

    return uvloop.run(_run_http(spec))


async def _run_http(spec: HttpLoad) -> HttpResult:
    target = spec.target
    pool = H2Pool(target.host, target.port, tls_context(target.ca_file),
                  connections=spec.connections, server_hostname=target.server_hostname)
    await pool.start()
    scenarios = Scenarios(pool, spec.world, seed=spec.seed, shard=spec.shard, shards=spec.shards,
                          extra=spec.extra)
    fire = scenarios.fire(spec.scenario)
    delay = spec.start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    try:
        if spec.count or spec.scenario == "cancel":
            recorder, duration = await run_batch(fire, count=spec.count or len(spec.extra["orders"]),
                                                 concurrency=spec.concurrency)
        elif spec.concurrency:
            recorder, duration = await run_closed_loop(fire, concurrency=spec.concurrency,
                                                       duration=spec.duration, warmup=spec.warmup)
        else:
            recorder, duration = await run_open_loop(fire, rate=spec.rate, duration=spec.duration,
                                                     warmup=spec.warmup, timeout=spec.timeout)
    finally:
        await pool.close()
    seeded = {r.id: set(r.order_ids) for r in spec.world.restaurants} if spec.world else {}
    created = {rid: [o for o in ids if o not in seeded.get(rid, ())]
               for rid, ids in scenarios.orders.items()}
    return HttpResult(recorder, duration, scenarios.refresh_tokens, created)


def warm_up_process() -> None:
    """Imports the heavy modules once, so a worker's first workload starts on time; and
    `kill -USR1 <pid>` prints what every asyncio task of the worker is waiting on."""
    import importlib
    import signal

    signal.signal(signal.SIGUSR1, _dump_tasks)

    for module in ("h2.connection", "uvloop", "websockets.asyncio.client", "bench.scenarios"):
        importlib.import_module(module)
