"""What metrics and tracing cost: CPU per request with them off, with metrics on, and with metrics
and tracing (exported at 100 %) on.

    .venv/bin/python -m bench.observability [--rounds 3] [--seconds 8] [--rate 100]
    .venv/bin/python -m bench.observability --micro    # the RED interceptor alone, no stack

Each mode runs on a stack of its own, started the same way (bench/stackrun.py, one realtime
process) and seeded with the same small world; the three stacks run side by side and their rounds
alternate in a rotating order, each driven by a generator process at a fixed rate with the same
requests (bench/scenarios.py: `till_order`, a POST /api/v1/orders with 4 lines,
and `order_history`, a filtered GET). CPU per request is the CPU time (schedstat, nanoseconds)
of every service process, and of Envoy, over a round divided by the requests it answered.

- off: no metrics pages (the RED interceptor is not installed), `OTEL_SAMPLE_RATIO=0` and no
  exporter (no span is recorded; Envoy traces nothing).
- metrics: every metrics page on and scraped every 5 s (a Prometheus scrapes every 15 s).
- metrics+tracing: as metrics, plus every span exported over OTLP to a receiver in the bench
  process (Envoy's too), as docker-compose runs with Jaeger.

On a shared machine, read the per-round figures for noise.
Results: bench/results/observability.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

from bench import machine
from bench.edge_check import process_cpu_seconds
from bench.loadgen import HttpLoad, run_http, warm_up_process
from bench.seed import build_world
from bench.stackrun import bench_settings
from bench.world import Target
from stack.supervisor import Stack
from tests.harness import LOOPBACK, free_ports
from tests.support.otlp import OtlpReceiver

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("till_order", "order_history")
MODES = ("off", "metrics", "metrics+tracing")
SERVICES = ("auth", "staff", "orders", "realtime")


def mode_settings(data_dir: Path, mode: str, otlp_endpoint: str | None) -> dict:
    metrics_ports = free_ports(5)
    on = mode != "off"
    addrs = [f"{LOOPBACK}:{port}" if on else "" for port in metrics_ports]
    return {
        "auth_metrics_addr": addrs[0], "staff_metrics_addr": addrs[1],
        "orders_metrics_addr": addrs[2], "realtime_metrics_addr": addrs[3],
        "realtime_metrics_addrs": [addrs[3]] if on else [], "envoy_metrics_addr": addrs[4],
        "otel_sample_ratio": 1.0 if mode == "metrics+tracing" else 0.0,
        "otel_exporter_otlp_endpoint": otlp_endpoint if mode == "metrics+tracing" else None,
    }


async def scrape_every(settings, seconds: float, stop: asyncio.Event) -> None:
    targets = [addr for addr in (settings.auth_metrics_addr, settings.staff_metrics_addr,
                                 settings.orders_metrics_addr, settings.realtime_metrics_addr,
                                 settings.envoy_metrics_addr) if addr]
    async with httpx.AsyncClient(timeout=5) as client:
        while not stop.is_set():
            for target in targets:
                await client.get(f"http://{target}/metrics")
            try:
                await asyncio.wait_for(stop.wait(), seconds)
            except asyncio.TimeoutError:
                pass


class ModeStack:
    """One mode's stack, seeded, with its scraper (when metrics are on) and OTLP receiver."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.data_dir = Path(tempfile.mkdtemp(prefix="posmesh-bench-obs-"))
        self.receiver = OtlpReceiver()
        self.stack: Stack | None = None
        self.world = None
        self._stop_scraping = asyncio.Event()
        self._scraper: asyncio.Task | None = None

    async def start(self) -> None:
        await self.receiver.__aenter__()
        settings = bench_settings(self.data_dir).model_copy(
            update=mode_settings(self.data_dir, self.mode, self.receiver.endpoint))
        self.stack = Stack(settings)
        await self.stack.start()
        self.world = await build_world(self.stack.edge_url, str(self.stack.ca_file),
                                       self.stack.mail_dir, 2)
        if self.mode != "off":
            self._scraper = asyncio.create_task(
                scrape_every(self.stack.settings, 5.0, self._stop_scraping))

    async def stop(self) -> None:
        self._stop_scraping.set()
        if self._scraper is not None:
            await asyncio.gather(self._scraper, return_exceptions=True)
        if self.stack is not None:
            await self.stack.stop()
        await self.receiver.__aexit__(None, None, None)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    async def round(self, scenario: str, *, seconds: float, rate: float,
                    executor: ProcessPoolExecutor) -> dict:
        assert self.stack is not None
        target = Target("127.0.0.1", self.stack.settings.edge_port, str(self.stack.ca_file))
        pids = self.stack.pids()
        spec = HttpLoad(scenario, target, rate=rate, duration=seconds, warmup=0, connections=2,
                        world=self.world, seed=zlib.crc32(scenario.encode()),
                        start_at=time.monotonic() + 1.0)
        parts = (*SERVICES, "envoy")
        before = {name: process_cpu_seconds(pids[name][0]) for name in parts}
        outcome = await asyncio.get_running_loop().run_in_executor(executor, run_http, spec)
        after = {name: process_cpu_seconds(pids[name][0]) for name in parts}
        answered = len(outcome.recorder.ok_latencies)
        services = sum(after[name] - before[name] for name in SERVICES)
        return {"requests": answered, "errors": sum(outcome.recorder.errors.values()),
                "services_us_per_request": round(services / max(1, answered) * 1e6, 1),
                "envoy_us_per_request": round((after["envoy"] - before["envoy"])
                                              / max(1, answered) * 1e6, 1)}


async def measure(*, rounds: int, seconds: float, rate: float,
                  executor: ProcessPoolExecutor) -> dict:
    """Every mode's stack runs at once (idle but for its round); the rounds of the modes
    alternate, in a rotating order, so slow drifts of the machine's load hit every mode alike."""
    stacks = [ModeStack(mode) for mode in MODES]
    try:
        for stack in stacks:
            print(f"mode {stack.mode}: starting and seeding a stack...", flush=True)
            await stack.start()
        results: dict = {mode: {} for mode in MODES}
        for scenario in SCENARIOS:
            rounds_of = {mode: [] for mode in MODES}
            for number in range(rounds + 1):  # round 0 warms every stack up and is not counted
                order = stacks[number % len(stacks):] + stacks[:number % len(stacks)]
                for stack in order:
                    figures = await stack.round(scenario, seconds=seconds, rate=rate,
                                                executor=executor)
                    if number:
                        rounds_of[stack.mode].append(figures)
            for mode in MODES:
                per_round = rounds_of[mode]
                results[mode][scenario] = {
                    "rounds": per_round,
                    "services_us_per_request": statistics.median(
                        r["services_us_per_request"] for r in per_round),
                    "envoy_us_per_request": statistics.median(
                        r["envoy_us_per_request"] for r in per_round)}
                print(f"  {mode:16} {scenario:14} services "
                      f"{results[mode][scenario]['services_us_per_request']:7.0f} µs/request, "
                      f"Envoy {results[mode][scenario]['envoy_us_per_request']:5.0f} µs/request "
                      f"(rounds {[r['services_us_per_request'] for r in per_round]})", flush=True)
        results["metrics+tracing"]["spans_received"] = len(stacks[-1].receiver.spans)
        return results
    finally:
        for stack in stacks:
            await stack.stop()


class _PassThrough:
    """An interceptor that only wraps each call, as the services' others do: the baseline, so the
    figure is what adding the RED interceptor to a server that already has interceptors costs."""

    def __new__(cls):
        import grpc

        class PassThrough(grpc.aio.ServerInterceptor):
            async def intercept_service(self, continuation, details):
                handler = await continuation(details)
                inner = handler.unary_unary

                async def wrapped(request, ctx):
                    return await inner(request, ctx)
                return grpc.unary_unary_rpc_method_handler(
                    wrapped, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
        return PassThrough()


async def interceptor_cost(calls: int = 3000, blocks: int = 8) -> dict:
    """CPU per unary call of in-process gRPC servers (client and server in this process) with a
    pass-through interceptor, and with it plus the RED interceptor; blocks alternate so both see
    the same machine. The difference is the RED interceptor's cost per call."""
    import grpc

    from posmesh.common.rpc_metrics import RedMetrics, RpcMetricsInterceptor

    async def echo(request: bytes, ctx) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "posmesh.bench.v1.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    servers, channels = {}, {}
    for name, interceptors in (("without", [_PassThrough()]),
                               ("with", [_PassThrough(), RpcMetricsInterceptor(RedMetrics())])):
        server = grpc.aio.server(interceptors=interceptors)
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers[name] = server
        channels[name] = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    per_call: dict[str, list[float]] = {"without": [], "with": []}
    try:
        for block in range(blocks + 1):
            for name in (("without", "with") if block % 2 else ("with", "without")):
                call = channels[name].unary_unary("/posmesh.bench.v1.Echo/Echo")
                started = time.process_time()
                for _ in range(calls):
                    await call(b"x")
                if block:  # the first block of each warms up
                    per_call[name].append((time.process_time() - started) / calls * 1e6)
    finally:
        for name in servers:
            await channels[name].close()
            await servers[name].stop(None)
    without, with_ = statistics.median(per_call["without"]), statistics.median(per_call["with"])
    deltas = [w - wo for w, wo in zip(per_call["with"], per_call["without"])]
    return {"calls_per_block": calls, "blocks": blocks,
            "without_us_per_call": round(without, 1), "with_us_per_call": round(with_, 1),
            "interceptor_us_per_call": round(statistics.median(deltas), 1),
            "deltas_us": [round(d, 1) for d in deltas]}


async def wrapper_cost(calls: int = 100_000, repeats: int = 7) -> dict:
    """The RED interceptor's own work per call, without gRPC around it: a handler awaited
    directly vs through the interceptor's wrapper (clock reads, the code, the histogram), best of
    `repeats` runs (the minimum is the figure least disturbed by other processes)."""
    from posmesh.common.rpc_metrics import RedMetrics, _timed_unary

    class Context:
        def code(self):
            return None

    async def handler(request, ctx):
        return request

    timed = _timed_unary(handler, ("unary", "posmesh.bench.v1.Echo", "Echo"), RedMetrics())
    ctx = Context()
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, call in (("bare", handler), ("wrapped", timed)):
            started = time.perf_counter()
            for _ in range(calls):
                await call(b"x", ctx)
            elapsed = (time.perf_counter() - started) / calls * 1e6
            best[name] = min(best.get(name, elapsed), elapsed)
    return {"calls": calls, "repeats": repeats, "bare_us": round(best["bare"], 3),
            "wrapped_us": round(best["wrapped"], 3),
            "red_us_per_call": round(best["wrapped"] - best["bare"], 3)}


def report(results: dict, command: str, about: dict) -> str:
    lines = ["# Observability overhead: CPU per request", "",
             f"Command: `{command}`", "",
             f"Machine: {about}", "",
             "| scenario | mode | services µs/request | Envoy µs/request | services vs off |",
             "|---|---|---|---|---|"]
    for scenario in SCENARIOS:
        if "off" not in results:
            break
        base = results["off"][scenario]["services_us_per_request"]
        for mode in MODES:
            row = results[mode][scenario]
            delta = (row["services_us_per_request"] - base) / base * 100 if base else 0.0
            lines.append(f"| {scenario} | {mode} | {row['services_us_per_request']:.0f} | "
                         f"{row['envoy_us_per_request']:.0f} | {delta:+.1f} % |")
    work = results.get("red_work")
    if work:
        lines += ["", f"The RED interceptor's own work per call (its wrapper around a handler, "
                  f"no gRPC; best of {work['repeats']} runs of {work['calls']}): "
                  f"**{work['red_us_per_call']} µs**."]
    micro = results.get("interceptor")
    if micro:
        lines += ["", f"The RED interceptor alone (in-process unary calls, client and server in one "
                  f"process, medians of {micro['blocks']} alternating blocks of "
                  f"{micro['calls_per_block']}, after a pass-through interceptor like the "
                  f"services' others): {micro['without_us_per_call']} µs per call without, "
                  f"{micro['with_us_per_call']} µs with; median of the per-block differences "
                  f"{micro['interceptor_us_per_call']} µs (differences {micro['deltas_us']}: "
                  "where they swing by more than the median, the machine's noise decides it)."]
    lines += ["", "Medians of the rounds (the modes' rounds alternate); per-round figures in "
              "observability.json. On a shared 2-core machine rounds differ by several per cent "
              "from noise alone: compare the per-round figures before trusting a small "
              "difference."]
    return "\n".join(lines) + "\n"


async def main_async(args) -> None:
    context = multiprocessing.get_context("spawn")
    about = machine.summary_line(machine.describe())  # the load average before the run
    results = {"red_work": await wrapper_cost(), "interceptor": await interceptor_cost()}
    print(f"RED interceptor's own work: {results['red_work']}", flush=True)
    print(f"RED interceptor in a gRPC server: {results['interceptor']}", flush=True)
    if args.micro:
        return
    with ProcessPoolExecutor(1, mp_context=context, initializer=warm_up_process) as executor:
        results.update(await measure(rounds=args.rounds, seconds=args.seconds, rate=args.rate,
                                     executor=executor))
    command = " ".join([".venv/bin/python -m bench.observability", *sys.argv[1:]])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "observability.json").write_text(json.dumps(
        {"command": command, "machine": about, "results": results}, indent=1, default=str))
    text = report(results, command, about)
    (RESULTS / "observability.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--micro", action="store_true",
                        help="only the RED interceptor's own cost (seconds, no stack)")
    import uvloop

    uvloop.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
