"""`python -m bench` (`make bench`, `make bench ARGS=--quick`): the whole benchmark, end to end.

Starts a local stack (or uses `--url`), seeds 20 restaurants through the public API, runs every
workload from separate generator processes through Envoy over TLS, checks every target of the
service issues and writes bench/results/<date>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import signal
import sys
import time
import traceback
from collections import Counter
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from bench import (ceiling, cpu_per_rpc, edge_check, machine, mesh_cost, overload, replicas,
                   report, signup_flood, targets)
from bench.fanout import Trigger, analyse, create_orders
from bench.loadgen import HttpLoad, HttpResult, run_http, warm_up_process
from bench.openloop import Recorder, percentile, summarise
from bench.posday import DaySpec, run_day
from bench.seed import build_world, edge_client
from bench.sockets import SocketHolder, raise_fd_limit
from bench.stackrun import BENCH_OVERRIDES, System, running, start_local
from posmesh.common.settings import REPLICATED_SERVICES
from stack.supervisor import SERVICES
from bench.verification import VerificationSpec, measure
from bench.world import Target, World

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESTAURANTS = 20
ENVOY_MAX_DOWNSTREAM = 10_000  # envoy/envoy.yaml.j2's overload manager
FD_RESERVE = 300  # Envoy's descriptors for listeners, upstream gRPC, admin, logs
# Orders-mix targets of the orders issue.
MIX_P95_MS, MIX_P99_MS = 50.0, 150.0


@dataclass(frozen=True)
class Profile:
    name: str
    ceiling_s: float
    single_s: float
    single_warmup: float
    rates: dict  # workload -> offered req/s
    mix_rate: float
    mix_s: float
    mix_warmup: float
    step_rates: tuple[int, ...]
    step_s: float
    step_warmup: float
    day_people: tuple[int, int, int]  # tills, kitchen screens, phones per restaurant
    day_s: float
    day_warmup: float
    sockets_small: int
    sockets_large: int  # 0: skip
    fanout_events_small: int
    fanout_events_large: int
    burst_events: int
    verification_samples: int
    holders: int
    max_steps: int = 5
    day_small_people: tuple[int, int, int] | None = None
    day_small_s: float = 0
    day_small_warmup: float = 0
    flood: signup_flood.FloodSpec = signup_flood.FloodSpec(login_rate=25, rounds=5, seconds=12,
                                                          warmup=2)
    overload: overload.OverloadSpec = overload.OverloadSpec(seconds=15, warmup=3,
                                                            capacity_if_unknown=300)
    # The unknown-field check's cost (bench/edge_check.py): rounds per scenario, each this long.
    edge_check_rounds: int = 2
    edge_check_s: float = 3
    edge_check_rate: float = 100
    # One orders process against all (bench/replicas.py): alternating rounds at these rates.
    replicas: replicas.ReplicasSpec = replicas.ReplicasSpec(rates=(300, 1000), rounds=3,
                                                            seconds=10, warmup=2)
    # The orders process's CPU per request per RPC (bench/cpu_per_rpc.py).
    cpu: cpu_per_rpc.CpuSpec = cpu_per_rpc.CpuSpec(requests=1000, rounds=5)
    # What mTLS inside costs (bench/mesh_cost.py): rounds per scenario, each this long, at this
    # rate per stack.
    mesh_tls_rounds: int = 6
    mesh_tls_s: float = 5
    # Below saturation on 2 cores with both stacks loaded at once: a saturated round measures
    # queueing, not the cost of a request.
    mesh_tls_rate: float = 40
    # Phases left out unless `--only` names them.
    only_when_asked: frozenset[str] = frozenset()


FULL = Profile(
    name="full", ceiling_s=8, single_s=12, single_warmup=3,
    rates={"login": 50, "refresh": 100, "verify": 300, "list_active": 400, "get_order": 400,
           "create_order": 100},
    mix_rate=800, mix_s=60, mix_warmup=5,
    step_rates=(100, 200, 300, 400, 600, 1000, 1200, 1600), step_s=10, step_warmup=2,
    day_people=(30, 10, 10), day_s=40, day_warmup=8,
    day_small_people=(8, 2, 2), day_small_s=20, day_small_warmup=5,
    sockets_small=1000, sockets_large=10_000, fanout_events_small=40, fanout_events_large=15,
    burst_events=20, verification_samples=5000, holders=4,
    edge_check_rounds=6, edge_check_s=5,
)
QUICK = Profile(
    name="quick", ceiling_s=2, single_s=3, single_warmup=1,
    rates={"login": 50, "refresh": 100, "verify": 300, "list_active": 400, "get_order": 400,
           "create_order": 100},
    mix_rate=800, mix_s=6, mix_warmup=1,
    step_rates=(), step_s=0, step_warmup=0, max_steps=0,
    day_people=(6, 2, 2), day_s=8, day_warmup=2,
    sockets_small=1000, sockets_large=0, fanout_events_small=15, fanout_events_large=0,
    burst_events=10, verification_samples=2000, holders=2,
    flood=signup_flood.FloodSpec(login_rate=25, rounds=1, seconds=4, warmup=1),
    overload=overload.OverloadSpec(seconds=4, warmup=1, capacity_if_unknown=300),
    edge_check_rounds=3, edge_check_s=3,
    replicas=replicas.ReplicasSpec(rates=(1000,), rounds=1, seconds=4, warmup=1),
    cpu=cpu_per_rpc.CpuSpec(requests=300, rounds=3),
    # Differences of a few µs per request need the full run's rounds; and the quick run must
    # stay near 2 minutes.
    only_when_asked=frozenset({"edge_check", "replicas", "cpu_per_rpc", "mesh_tls"}),
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Bench:
    def __init__(self, profile: Profile, system: System, executor: ProcessPoolExecutor) -> None:
        self.profile = profile
        self.system = system
        self.executor = executor
        host, port = system.edge_host_port
        self.edge = Target(host, port, system.ca_file)
        self.world: World | None = None
        self.restaurants = RESTAURANTS
        self.fd_limit = 20_000
        self.edge_socket_capacity = ENVOY_MAX_DOWNSTREAM
        self.sockets_via_edge = self.sockets_direct = self.edge_refused = 0
        self.ceiling_rps: float | None = None
        self.results: dict = {"workloads": {}, "websockets": {}, "failures": {},
                              "notes": list(system.notes)}

    # --- helpers ----------------------------------------------------------------------------

    async def _pool(self, function, *specs):
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(self.executor, function, spec)
                                      for spec in specs))

    async def http(self, scenario: str, *, rate: float = 0.0, duration: float, warmup: float,
                   processes: int | None = None, concurrency: int = 0, target: Target | None = None,
                   extra: dict | None = None, connections: int = 4
                   ) -> tuple[dict, list[HttpResult]]:
        processes = processes or (1 if rate <= 450 else 2)
        start_at = time.monotonic() + 1.5
        cpu_before = self.cpu_seconds()
        specs = [HttpLoad(scenario, target or self.edge, rate=rate / processes, duration=duration,
                          warmup=warmup, concurrency=concurrency, connections=connections,
                          world=self.world, seed=zlib.crc32(scenario.encode()) & 0xFFFF, shard=n, shards=processes,
                          start_at=start_at, extra=dict(extra or {}))
                 for n in range(processes)]
        outcomes = await self._pool(run_http, *specs)
        cpu = self.cpu_share(cpu_before, self.cpu_seconds(), time.monotonic() - start_at)
        merged = Recorder()
        for outcome in outcomes:
            merged.merge(outcome.recorder)
        if scenario == "cancel":
            duration = max(o.duration for o in outcomes)
        summary = summarise(merged, duration, offered_rate=rate or None)
        summary["generator_processes"] = processes
        summary["cpu_percent"] = cpu  # of one core, from send of the first request to the last reply
        if self.ceiling_rps:
            summary["ratio_to_ceiling"] = round(summary["achieved_rps"] / self.ceiling_rps, 3)
        return summary, list(outcomes)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each part of the system and the bench."""
        names: dict[int, str] = {}
        if self.system.stack is not None:
            for name, pids in self.system.stack.pids().items():
                service = name.partition("-")[0]  # replicas count as their service
                for pid in pids:
                    names[pid] = service if service in SERVICES else name
                    if service == "auth":  # its new-password hashing process (and its helper)
                        try:
                            children = psutil.Process(pid).children(recursive=True)
                        except psutil.Error:
                            children = []
                        names.update({child.pid: "auth (new passwords)" for child in children})
        me = psutil.Process()
        processes = {pid: None for pid in names}
        try:
            processes.update({child.pid: None for child in me.children(recursive=True)})
        except psutil.Error:
            pass
        processes[me.pid] = None
        totals: dict[str, float] = {}
        for pid in processes:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            name = names.get(pid) or ("bench supervisor" if pid == me.pid else "bench generators")
            used = times.user + times.system
            if name == "postgres":  # backends that have exited are counted in their parent
                used += times.children_user + times.children_system
            totals[name] = totals.get(name, 0.0) + used
        return totals

    @staticmethod
    def cpu_share(before: dict[str, float], after: dict[str, float], seconds: float) -> dict:
        """Percent of one core each part used over `seconds` (200 % = both cores)."""
        return {name: round((after[name] - before.get(name, 0.0)) / seconds * 100)
                for name in sorted(after, key=lambda n: before.get(n, 0.0) - after[n])
                if seconds > 0 and after[name] - before.get(name, 0.0) > 0.01 * seconds}

    def print_summary(self, name: str, s: dict) -> None:
        errors = f", errors {s['errors']} {s['error_kinds']}" if s.get("errors") else ""
        log(f"  {name}: offered {s.get('offered_rps', 'max')}/s, achieved {s['achieved_rps']}/s, "
            f"p50 {s['p50_ms']} p95 {s['p95_ms']} p99 {s['p99_ms']} max {s['max_ms']} ms{errors}")
        if s.get("cpu_percent"):
            log("    CPU % of a core: " + ", ".join(f"{k} {v}" for k, v in s["cpu_percent"].items()))

    async def quiet(self, limit: float = 20.0, busy_percent: float = 25.0) -> None:
        """Waits (up to `limit` s) until the machine is nearly idle, so a phase does not start
        while the previous one's aftermath (a backlog, 10,000 sockets closing) is still running."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if await asyncio.to_thread(psutil.cpu_percent, 1.0) < busy_percent:
                return

    async def phase(self, name: str, coroutine) -> None:
        if name != "seed":
            await self.quiet(limit=1.5 if self.profile.name == "quick" else 20.0)
        log(f"{name} ...")
        started = time.monotonic()
        try:
            await coroutine
        except Exception as exc:
            self.results["failures"][name] = f"{type(exc).__name__}: {exc}"
            log(f"  {name} FAILED: {exc!r}")
            traceback.print_exc()
        log(f"  ({name}: {time.monotonic() - started:.0f} s)")

    # --- phases -------------------------------------------------------------------------------

    async def seed(self) -> None:
        self.world = await build_world(self.system.edge_url, self.system.ca_file,
                                       self.system.mail_dir, self.restaurants)
        log(f"  {len(self.world.restaurants)} restaurants, "
            f"{sum(len(r.people) for r in self.world.restaurants)} people, "
            f"{sum(len(r.order_ids) for r in self.world.restaurants)} open orders")

    async def run_ceiling(self) -> None:
        p = self.profile
        envoy = ceiling.CeilingEnvoy(self.system.data_dir or Path("/tmp"),
                                     *self._cert_and_key())
        await envoy.start()
        try:
            target = Target("127.0.0.1", envoy.port, self.system.ca_file)
            summary, _ = await self.http("ceiling", duration=p.ceiling_s, warmup=1, processes=2,
                                         concurrency=64, target=target,
                                         extra={"path": ceiling.PATH})
            self.ceiling_rps = summary["achieved_rps"]
            summary["ratio_to_ceiling"] = 1.0
            self.print_summary("ceiling (python generator)", summary)
            h2load = None if p.name == "quick" else await ceiling.h2load(
                f"https://localhost:{envoy.port}{ceiling.PATH}", duration=int(p.ceiling_s))
            if h2load:
                log(f"  ceiling (h2load): {h2load.get('rps')} req/s, {h2load.get('failed')} failed")
            self.results["ceiling"] = {"python": summary, "h2load": h2load}
        finally:
            await envoy.stop()

    def _cert_and_key(self) -> tuple[Path, Path]:
        certs = self.system.settings.certs_dir
        return certs / "server.pem", certs / "server-key.pem"

    async def run_auth(self) -> None:
        p = self.profile
        login, outcomes = await self.http("login", rate=p.rates["login"], duration=p.single_s,
                                          warmup=p.single_warmup)
        self.print_summary("login", login)
        self.results["workloads"]["login"] = login
        # Sessions to refresh: one per seeded person plus one per login just made; each is
        # refreshed by one request at a time (its token rotates on every use).
        sessions = [p.refresh_token for r in self.world.restaurants for p in r.people]
        sessions += [token for outcome in outcomes for token in outcome.refresh_tokens]
        refresh, _ = await self.http("refresh", rate=p.rates["refresh"], duration=p.single_s,
                                     warmup=p.single_warmup, extra={"refresh_tokens": sessions})
        self.print_summary("refresh", refresh)
        self.results["workloads"]["refresh"] = refresh
        verify, _ = await self.http("verify", rate=p.rates["verify"], duration=p.single_s,
                                    warmup=p.single_warmup)
        self.print_summary("verify", verify)
        self.results["workloads"]["verify"] = verify

    async def run_signup_flood(self) -> None:
        self.results["signup_flood"] = result = await signup_flood.run(self, self.profile.flood)
        log(f"  login p95 {result['quiet_p95_ms']} ms quiet, {result['flooded_p95_ms']} ms during "
            f"{signup_flood.FLOOD_RATE:g} registrations/s: ×{result['ratio']}; registrations "
            f"{result['registrations']}")

    async def run_overload(self) -> None:
        self.results["overload"] = result = await overload.run(self, self.profile.overload)
        log(f"  capacity {result['capacity_rps']:g}/s: goodput at " + ", ".join(
            f"{s['factor']}× {s['achieved_rps']}/s ({s['goodput_ratio']:.0%})"
            for s in result["runs"].values()))

    async def run_replicas(self) -> None:
        stack = self.system.stack
        if stack is None or len(stack.replicas("orders")) < 2:
            self.results["notes"].append("Phase replicas needs a local stack with ORDERS_REPLICAS "
                                         "≥ 2 (`--replicas 2`); skipped.")
            log("  skipped: needs a local stack with ORDERS_REPLICAS >= 2")
            return
        self.results["replicas"] = result = await replicas.run(self, self.profile.replicas)
        for rate, medians in result["rates"].items():
            log(f"  mix at {rate}/s, medians of {result['rounds']} rounds: " + "; ".join(
                f"{n} orders process(es) {medians[str(n)]['achieved_rps']}/s p95 "
                f"{medians[str(n)]['p95_ms']} ms" for n in result["orders_processes"])
                + f"; goodput ×{medians['goodput_ratio']}")

    async def run_verification(self) -> None:
        from stack.supervisor import settings_env

        async with edge_client(self.system.edge_url, self.system.ca_file) as client:
            jwks = (await client.get("/.well-known/jwks.json")).json()
        env = {k: v for k, v in settings_env(self.system.settings).items() if v is not None}
        token = self.world.restaurants[0].staff[0].access_token
        [result] = await self._pool(measure, VerificationSpec(
            jwks, token, env, samples=self.profile.verification_samples,
            can_mint=self.system.stack is not None))
        self.results["verification"] = result
        log(f"  first sight: verify p99 {result['verify']['p99_ms']} ms, with revocation p99 "
            f"{result['verify_with_revocation']['p99_ms']} ms; repeat: p99 "
            f"{result['verify_repeat']['p99_ms']} / {result['verify_with_revocation_repeat']['p99_ms']} ms")

    async def run_orders(self) -> None:
        p = self.profile
        for name in ("list_active", "get_order", "create_order"):
            summary, _ = await self.http(name, rate=p.rates[name], duration=p.single_s,
                                         warmup=p.single_warmup)
            self.print_summary(name, summary)
            self.results["workloads"][name] = summary
            if name == "create_order":
                await self.close_orders()

    async def run_cpu_per_rpc(self) -> None:
        """The orders process's CPU per request, per RPC, against the committed "before"."""
        self.results["cpu_per_rpc"] = result = await cpu_per_rpc.run(self, self.profile.cpu)
        for line in cpu_per_rpc.table(result):
            log("  " + line)

    async def run_edge_check(self) -> None:
        """The unknown-field check's cost: the same requests through two Envoys from the edge's
        template, with and without the check, at the same moments (bench/edge_check.py)."""
        if self.system.stack is None:
            self.results["notes"].append("The unknown-field check's cost needs a local stack "
                                         "(a second Envoy in front of its services): not measured.")
            return
        p = self.profile
        envoys = [edge_check.BenchEdge(self.system.settings, self.system.data_dir,
                                       reject_unknown_fields=check) for check in (True, False)]
        targets = tuple(Target("127.0.0.1", envoy.port, self.system.ca_file) for envoy in envoys)
        results = {}
        try:
            await asyncio.gather(*(envoy.start() for envoy in envoys))
            pids = tuple(envoy.pid for envoy in envoys)
            for scenario in edge_check.SCENARIOS:
                # Unmeasured: connections, Lua traces and caches warm on both sides.
                await self._edge_check_round(scenario, targets, pids, 1.0, 0)
                rounds = [await self._edge_check_round(scenario, targets, pids, p.edge_check_s, n)
                          for n in range(p.edge_check_rounds)]
                results[scenario] = summary = edge_check.summarise(scenario, rounds)
                log(f"  {scenario}: Envoy {summary['envoy_us_with_check']} µs/request with the "
                    f"check, {summary['envoy_us_without_check']} without: +{summary['delta_us']} µs "
                    f"({summary['delta_percent_of_edge']} % of the edge, "
                    f"{summary['delta_percent_of_request']} % of the request; rounds "
                    f"{summary['delta_us_per_round']})")
        finally:
            await asyncio.gather(*(envoy.stop() for envoy in envoys))
            await self.close_orders()
        self.results["edge_check"] = results

    @property
    def mesh_dir(self) -> str:
        """The mesh certificates of a local stack with MESH_TLS on ("" otherwise)."""
        from posmesh.common import mesh_tls

        settings = self.system.settings
        if self.system.stack is None or not settings.mesh_tls:
            return ""
        return str(mesh_tls.mesh_dir(settings).resolve())

    async def run_mesh_tls(self) -> None:
        """What mTLS on the internal hops costs: the same requests through the bench stack and a
        plaintext twin of it, at the same moments (bench/mesh_cost.py)."""
        if self.system.stack is None:
            self.results["notes"].append("The cost of mTLS inside needs a local stack (a plaintext "
                                         "twin beside it): not measured.")
            return
        p = self.profile
        log("  starting the plaintext twin (MESH_TLS=false) ...")
        twin, folder = await mesh_cost.start_plaintext_twin(self.system.stack)
        host, port = self.system.edge_host_port
        targets = (Target(host, port, self.system.ca_file),
                   Target("127.0.0.1", twin.settings.edge_port, str(twin.ca_file)))
        stacks = (self.system.stack, twin)
        results = {}
        try:
            for scenario in mesh_cost.SCENARIOS:
                await self._mesh_tls_round(scenario, targets, stacks, 1.0, 0)  # warm, unmeasured
                rounds = [await self._mesh_tls_round(scenario, targets, stacks, p.mesh_tls_s, n)
                          for n in range(p.mesh_tls_rounds)]
                results[scenario] = summary = mesh_cost.summarise(scenario, p.mesh_tls_rate, rounds)
                log(f"  {scenario}: {summary['cpu_us_mtls']} µs CPU/request with mTLS inside, "
                    f"{summary['cpu_us_plaintext']} without: +{summary['delta_us']} µs "
                    f"({summary['delta_percent']} %); p99 {summary['p99_ms_mtls']} vs "
                    f"{summary['p99_ms_plaintext']} ms (rounds {summary['delta_us_per_round']}); "
                    f"errors {summary['errors_mtls'] or 0} / {summary['errors_plaintext'] or 0}")
        finally:
            await twin.stop()
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            await self.close_orders()
        self.results["mesh_tls"] = results

    async def _paired_http(self, scenario: str, targets: tuple[Target, Target], rate: float,
                           seconds: float, number: int, measure: Callable[[], object]):
        """The same scenario through both targets at the same moments: the same seed, so both
        generators send the same sequence of requests, and the same start. Which generator
        process serves which target alternates by round, so neither is always served first.
        Returns the two outcomes in target order and `measure()` taken before and after."""
        start_at = time.monotonic() + 1.0
        specs = [HttpLoad(scenario, target, rate=rate, duration=seconds, warmup=0, connections=1,
                          world=self.world, seed=zlib.crc32(scenario.encode()) & 0xFFFF,
                          start_at=start_at)
                 for target in targets]
        order = [0, 1] if number % 2 == 0 else [1, 0]
        before = measure()
        outcomes = await self._pool(run_http, *(specs[k] for k in order))
        after = measure()
        return (outcomes[order.index(0)], outcomes[order.index(1)]), before, after

    async def _mesh_tls_round(self, scenario: str, targets: tuple[Target, Target], stacks,
                              seconds: float, number: int) -> mesh_cost.Round:
        pids = [mesh_cost.stack_pids(stack) for stack in stacks]
        (mtls, plain), before, after = await self._paired_http(
            scenario, targets, self.profile.mesh_tls_rate, seconds, number,
            lambda: [sum(edge_check.process_cpu_seconds(pid) for pid in group) for group in pids])
        return mesh_cost.Round(
            mtls_requests=len(mtls.recorder.ok_latencies),
            plain_requests=len(plain.recorder.ok_latencies),
            mtls_cpu_s=after[0] - before[0], plain_cpu_s=after[1] - before[1],
            mtls_p99_ms=percentile(sorted(mtls.recorder.latencies), 0.99) * 1000,
            plain_p99_ms=percentile(sorted(plain.recorder.latencies), 0.99) * 1000,
            mtls_errors=dict(mtls.recorder.errors), plain_errors=dict(plain.recorder.errors))

    async def _edge_check_round(self, scenario: str, targets: tuple[Target, Target],
                                pids: tuple[int, int], seconds: float, number: int
                                ) -> edge_check.Round:
        (checked, unchecked), before, after = await self._paired_http(
            scenario, targets, self.profile.edge_check_rate, seconds, number,
            lambda: ([edge_check.process_cpu_seconds(pid) for pid in pids], self.cpu_seconds()))
        (envoys_before, parts_before), (envoys_after, parts_after) = before, after
        services = sum(parts_after[name] - parts_before.get(name, 0.0) for name in parts_after
                       if name not in ("envoy", "bench supervisor", "bench generators"))
        return edge_check.Round(
            checked_requests=len(checked.recorder.latencies),
            unchecked_requests=len(unchecked.recorder.latencies),
            checked_cpu_s=envoys_after[0] - envoys_before[0],
            unchecked_cpu_s=envoys_after[1] - envoys_before[1],
            services_cpu_s=services,
            errors=sum(checked.recorder.errors.values()) + sum(unchecked.recorder.errors.values()))

    async def close_orders(self) -> None:
        """Cancels every open order but the seeded ones (outside any measurement), so each
        workload starts from the same 10 open orders per restaurant: a list of active orders
        returns up to 100, and a growing backlog would measure the backlog. Orders created by
        requests the generator gave up on (timeouts) are open too, hence the listing."""
        started = time.monotonic()
        await self.settle()
        seeded = {o for r in self.world.restaurants for o in r.order_ids}
        extra: list[tuple[str, str, int]] = []
        async with edge_client(self.system.edge_url, self.system.ca_file) as client:
            for restaurant in self.world.restaurants:
                headers = {"authorization": f"Bearer {restaurant.staff[0].access_token}"}
                token = ""
                while True:
                    reply = await client.get("/api/v1/orders/active", headers=headers,
                                             params={"page_size": 500, "page_token": token})
                    reply.raise_for_status()
                    body = reply.json()
                    extra += [(restaurant.id, o["id"], o["version"]) for o in body["orders"]
                              if o["id"] not in seeded]
                    token = body.get("next_page_token", "")
                    if not token:
                        break
        if not extra:
            return
        summary, _ = await self.http("cancel", duration=0, warmup=0, processes=1, concurrency=32,
                                     extra={"orders": extra})
        log(f"  (closed {len(extra)} orders the workload left open in "
            f"{time.monotonic() - started:.1f} s, {summary['errors']} errors)")

    async def run_mix(self) -> None:
        """The target run (800 req/s for 60 s), then a step search for the highest rate that
        still meets the percentiles: upwards when the target run met them, downwards when not,
        then one step between the best passing and the lowest failing rate."""
        p = self.profile
        summary = await self._mix_step(p.mix_rate, p.mix_s, p.mix_warmup, label="target run")
        self.results["workloads"]["orders_mix"] = summary
        steps = {p.mix_rate: summary}
        passing = {p.mix_rate} if summary["meets"] else set()
        failing = set() if summary["meets"] else {p.mix_rate}
        ladder = [r for r in p.step_rates if (r > p.mix_rate) == summary["meets"]]
        ladder.sort(reverse=not summary["meets"])
        for rate in ladder[:p.max_steps]:
            step = steps[rate] = await self._mix_step(rate, p.step_s, p.step_warmup)
            (passing if step["meets"] else failing).add(rate)
            if step["meets"] != summary["meets"]:
                break  # crossed over
        if passing and len(steps) <= p.max_steps:
            low = max(passing)
            higher_failures = [r for r in failing if r > low]
            if higher_failures and min(higher_failures) - low > 100:
                middle = int(round((low + min(higher_failures)) / 2 / 50) * 50)
                step = steps[middle] = await self._mix_step(middle, p.step_s, p.step_warmup)
                (passing if step["meets"] else failing).add(middle)
        best: dict = {"rate": max(passing) if passing else 0}
        above = [r for r in failing if r > best["rate"]]
        if above:
            best.update(failed_at=min(above), why=self._why(steps[min(above)]))
        self.results["workloads"]["orders_mix_steps"] = [steps[r] for r in sorted(steps)]
        if p.step_rates:  # a quick run has no step search: the target says "not measured"
            self.results["workloads"]["orders_mix_max_rate"] = best
        log(f"  highest mix rate meeting p95<{MIX_P95_MS:g} ms, p99<{MIX_P99_MS:g} ms: {best}")

    async def _mix_step(self, rate: int, duration: float, warmup: float, label: str = "step"
                        ) -> dict:
        summary, _ = await self.http("orders_mix", rate=rate, duration=duration, warmup=warmup)
        summary["meets"] = self._meets(summary)
        self.print_summary(f"orders mix {label} at {rate}/s for {duration:g} s", summary)
        await self.close_orders()
        return summary

    async def settle(self, limit: float = 60.0) -> None:
        """Waits until the stack answers quickly again (an overloaded step leaves a backlog)."""
        started = time.monotonic()
        person = self.world.restaurants[0].staff[0]
        async with edge_client(self.system.edge_url, self.system.ca_file) as client:
            while time.monotonic() - started < limit:
                began = time.monotonic()
                try:
                    reply = await client.get("/api/v1/orders/active", headers={
                        "authorization": f"Bearer {person.access_token}"}, timeout=20)
                    if reply.status_code == 200 and time.monotonic() - began < 0.1:
                        return
                except Exception:
                    pass
                await asyncio.sleep(0.5)

    @staticmethod
    def _meets(s: dict) -> bool:
        return s["p95_ms"] < MIX_P95_MS and s["p99_ms"] < MIX_P99_MS and s["errors"] == 0

    @staticmethod
    def _why(s: dict) -> str:
        return f"p95 {s['p95_ms']} ms, p99 {s['p99_ms']} ms, {s['errors']} errors"

    async def run_pos_day(self) -> None:
        """The 1,000-user day of the issue, and first a smaller day this machine can carry
        (full run), so the report shows both the limit and a healthy day."""
        p = self.profile
        if p.day_small_people:
            self.results["workloads"]["pos_day_small"] = await self._day(
                p.day_small_people, p.day_small_s, p.day_small_warmup)
            await self.close_orders()
            await self.quiet()
        self.results["workloads"]["pos_day"] = await self._day(p.day_people, p.day_s, p.day_warmup)

    async def _day(self, people: tuple[int, int, int], duration: float, warmup: float) -> dict:
        tills, kitchens, phones = people
        halves = [self.world.restaurants[0::2], self.world.restaurants[1::2]]
        start_at = time.monotonic() + 3  # each process starts once its sockets are connected
        cpu_before = self.cpu_seconds()
        began = time.monotonic()
        specs = [DaySpec(self.edge, self.system.edge_url, restaurants, tills, kitchens, phones,
                         duration, warmup, seed=n + 1, start_at=start_at)
                 for n, restaurants in enumerate(halves)]
        outcomes = await self._pool(run_day, *specs)
        cpu = self.cpu_share(cpu_before, self.cpu_seconds(), time.monotonic() - began)
        overall = Recorder()
        by_kind: dict[str, Recorder] = {}
        events = []
        for outcome in outcomes:
            for kind, recorder in outcome.by_kind.items():
                overall.merge(recorder)
                by_kind.setdefault(kind, Recorder()).merge(recorder)
            events.extend(outcome.event_latencies)
        users = sum(o.users for o in outcomes)
        summary = summarise(overall, duration, offered_rate=round(len(overall.latencies) / duration, 1))
        events.sort()
        summary.update(
            users=users, restaurants=len(self.world.restaurants), sockets=sum(o.sockets for o in outcomes),
            per_restaurant=f"{tills} tills and {kitchens} kitchen screens with sockets, "
                           f"{phones} managers' phones",
            socket_failures=dict(sum((o.socket_failures for o in outcomes), Counter())),
            socket_closes=dict(sum((o.socket_closes for o in outcomes), Counter())),
            missing_events=sum(o.missing_events for o in outcomes),
            event_deliveries=len(events),
            event_p50_ms=round(percentile(events, .5) * 1000, 2),
            event_p99_ms=round(percentile(events, .99) * 1000, 2),
            by_kind={kind: summarise(r, duration) for kind, r in by_kind.items()},
            cpu_percent=cpu)
        if self.ceiling_rps:
            summary["ratio_to_ceiling"] = round(summary["achieved_rps"] / self.ceiling_rps, 3)
        self.print_summary(f"POS day, {users} users", summary)
        log(f"  sockets {summary['sockets']} (failures {summary['socket_failures']}, closes "
            f"{summary['socket_closes']}); events p50 {summary['event_p50_ms']} ms p99 "
            f"{summary['event_p99_ms']} ms, {summary['missing_events']} missing")
        return summary

    async def run_websockets(self) -> None:
        p = self.profile
        place = self.world.restaurants[0]
        # Fresh tokens: the sockets must outlive nothing but this phase.
        async with edge_client(self.system.edge_url, self.system.ca_file) as client:
            tokens = []
            for person in place.people:
                reply = await client.post("/api/v1/auth/login", json={
                    "email": person.email, "password": self.world.password,
                    "restaurant_id": place.id})
                reply.raise_for_status()
                tokens.append(reply.json()["access_token"])
        realtime = psutil.Process(self.system.pid_of("realtime"))
        envoy_pid = self.system.pid_of("envoy")
        envoy = psutil.Process(envoy_pid) if envoy_pid else None
        holders = [SocketHolder(self.system.edge_url, self.system.ca_file,
                                self.system.settings.realtime_ws_addr, self.mesh_dir)
                   for _ in range(p.holders)]
        # Envoy holds two descriptors per proxied socket (client side and upstream) and admits
        # at most 10,000 downstream connections.
        self.edge_socket_capacity = min(ENVOY_MAX_DOWNSTREAM - 10,
                                        (self.fd_limit - FD_RESERVE) // 2)
        ws = self.results["websockets"]
        try:
            await asyncio.sleep(1.0)
            rss_before = realtime.memory_info().rss
            envoy_before = envoy.memory_info().rss if envoy else 0
            held = await self._connect(holders, tokens, place.id, p.sockets_small)
            await asyncio.sleep(2.0)
            rss_small = realtime.memory_info().rss
            idle = self._idle(held, rss_before, rss_small, envoy_before, envoy, p.sockets_small)
            ws["idle"] = idle
            log(f"  {held['held']} sockets: realtime {idle['realtime_kib_per_connection']} KiB "
                f"per connection, Envoy {idle['envoy_kib_per_connection']} KiB")
            ws["fanout_1000"] = await self._fanout(holders, place, tokens[2], held["held"],
                                                   p.fanout_events_small, spacing=0.4, via="edge")
            if not p.sockets_large:
                ws["deliveries"] = await self._burst(holders, place, tokens[2], held["held"],
                                                     realtime, via="edge")
                return
            more = await self._connect(holders, tokens, place.id, p.sockets_large - held["held"])
            total = held["held"] + more["held"]
            await asyncio.sleep(3.0)
            rss_large = realtime.memory_info().rss
            idle = self._idle({"held": total, "failed": held["failed"] + more["failed"],
                               "connect_s": round(held["connect_s"] + more["connect_s"], 1),
                               "failures": {**held["failures"], **more["failures"]},
                               "via_edge": more["via_edge"], "direct": more["direct"],
                               "edge_refused": more["edge_refused"],
                               "edge_refusals": more["edge_refusals"]},
                              rss_before, rss_large, envoy_before, envoy, total)
            # The growth from 1,000 to N sockets, without the one-time costs of the first ones.
            idle["realtime_kib_per_connection_marginal"] = round(
                (rss_large - rss_small) / max(1, total - held["held"]) / 1024, 1)
            ws["idle"] = idle
            log(f"  {total} sockets: realtime {idle['realtime_kib_per_connection']} KiB per "
                f"connection ({idle['realtime_kib_per_connection_marginal']} KiB from 1,000 to "
                f"{total}), Envoy {idle['envoy_kib_per_connection']} KiB")
            # When Envoy is full (all its downstream connections taken, or its overload manager
            # refusing new requests), the create goes straight to the orders service with the
            # same token: the measured path starts at its response either way.
            via = "grpc" if self.edge_refused or \
                self.sockets_via_edge >= ENVOY_MAX_DOWNSTREAM - 10 else "edge"
            ws["fanout_10000"] = await self._fanout(holders, place, tokens[2], total,
                                                    p.fanout_events_large, spacing=2.0, via=via)
            ws["deliveries"] = await self._burst(holders, place, tokens[2], total, realtime, via=via)
        finally:
            statuses = []
            for holder in holders:
                try:
                    statuses.append(await holder.call("status"))
                except Exception:
                    pass
            closes: dict = {}
            for status in statuses:
                for code, count in status.get("closes", {}).items():
                    closes[code] = closes.get(code, 0) + count
            ws["unexpected_closes"] = closes
            await asyncio.gather(*(holder.stop() for holder in holders))

    def _idle(self, held: dict, rss_before: int, rss_after: int, envoy_before: int, envoy,
              count: int) -> dict:
        envoy_after = envoy.memory_info().rss if envoy else 0
        n = max(1, held["held"])
        through_envoy = max(1, held.get("via_edge") or held["held"])
        return {
            "held": held["held"], "failed": held["failed"], "failures": held["failures"],
            "via_edge": held.get("via_edge"), "direct": held.get("direct"),
            "edge_refused": held.get("edge_refused", 0), "edge_refusals": held.get("edge_refusals", {}),
            "open_file_limit": self.fd_limit,
            "connect_s": held["connect_s"], "measured_over": held["held"],
            "realtime_rss_before_mib": round(rss_before / (1 << 20), 1),
            "realtime_rss_after_mib": round(rss_after / (1 << 20), 1),
            "realtime_kib_per_connection": round((rss_after - rss_before) / n / 1024, 1),
            "envoy_kib_per_connection": round((envoy_after - envoy_before) / through_envoy / 1024, 1),
        }

    async def _connect(self, holders: list[SocketHolder], tokens: list[str], restaurant_id: str,
                       count: int) -> dict:
        """Opens `count` more sockets through Envoy, spread over the holders. Beyond what Envoy
        can hold (its descriptors under the open-file limit; its overload manager's heap cap,
        which it answers with 503), sockets go straight to the realtime port."""
        started = time.monotonic()
        through_edge = max(0, min(count, self.edge_socket_capacity - self.sockets_via_edge))
        specs = [("kitchen", restaurant_id, tokens[k % len(tokens)], k >= through_edge)
                 for k in range(count)]
        replies = await asyncio.gather(*(
            holder.call("connect", specs=specs[n::len(holders)], concurrency=48)
            for n, holder in enumerate(holders)))
        failures: dict = {}
        refusals: dict = {}
        for reply in replies:
            for kind, number in reply["failures"].items():
                failures[kind] = failures.get(kind, 0) + number
            for kind, number in reply["edge_refusals"].items():
                refusals[kind] = refusals.get(kind, 0) + number
        self.sockets_via_edge = sum(r["via_edge"] for r in replies)
        self.sockets_direct = sum(r["direct"] for r in replies)
        self.edge_refused = sum(r["edge_refused"] for r in replies)
        held = sum(r["connected"] for r in replies)
        if failures:
            log(f"  socket failures: {failures}")
        if refusals:
            log(f"  refused by Envoy, held straight on the realtime port instead: {refusals}")
        return {"held": held, "failed": sum(failures.values()), "failures": failures,
                "connect_s": round(time.monotonic() - started, 1),
                "via_edge": self.sockets_via_edge, "direct": self.sockets_direct,
                "edge_refused": self.edge_refused, "edge_refusals": refusals}

    async def _trigger(self, place, token: str, count: int, spacing: float, via: str):
        trigger = Trigger(self.edge, token, place.menu_item_ids, count, spacing, via=via,
                          orders_addr=self.system.settings.orders_addr,
                          mesh_dir=self.mesh_dir)
        [made] = await self._pool(create_orders, trigger)
        return made

    async def _collect(self, holders: list[SocketHolder]) -> tuple[dict[str, list[float]], int]:
        receipts: dict[str, list[float]] = {}
        out_of_order = 0
        for holder in holders:
            reply = await holder.call("receipts")
            out_of_order += reply["out_of_order"]
            for order_id, times in reply["receipts"].items():
                receipts.setdefault(order_id, []).extend(times)
        return receipts, out_of_order

    async def _fanout(self, holders, place, token: str, sockets: int, events: int, *,
                      spacing: float, via: str) -> dict:
        for holder in holders:
            await holder.call("reset")
        cpu_before, began = self.cpu_seconds(), time.monotonic()
        made = await self._trigger(place, token, events, spacing, via)
        await self._delivered(holders, len(made) * sockets)
        cpu = self.cpu_share(cpu_before, self.cpu_seconds(), time.monotonic() - began)
        receipts, out_of_order = await self._collect(holders)
        result = analyse(made, receipts, sockets)
        result.update(via=via, spacing_s=spacing, out_of_order=out_of_order, cpu_percent=cpu)
        log(f"  fan-out to {sockets}: last socket p50 {result['last_socket_p50_ms']} ms, p99 "
            f"{result['last_socket_p99_ms']} ms; delivery p99 {result['delivery_p99_ms']} ms; "
            f"{result['missing_deliveries']} missing, {out_of_order} out of order")
        log("    CPU % of a core: " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
        return result

    async def _delivered(self, holders, expected: int, limit: float = 30.0) -> None:
        """Waits until the holders have `expected` receipts (or `limit` seconds)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            counts = [await holder.call("count") for holder in holders]
            if sum(c["receipts"] for c in counts) >= expected:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.5)

    async def _burst(self, holders, place, token: str, sockets: int, realtime: psutil.Process,
                     *, via: str) -> dict:
        """Events back to back (one create in flight at a time): how fast the realtime process
        can deliver, and at what CPU cost per delivery."""
        for holder in holders:
            await holder.call("reset")
        cpu_before = sum(realtime.cpu_times()[:2])
        made = await self._trigger(place, token, self.profile.burst_events, 0.0, via)
        await self._delivered(holders, len(made) * sockets)
        cpu = sum(realtime.cpu_times()[:2]) - cpu_before
        receipts, _ = await self._collect(holders)
        deliveries = sum(len(times) for times in receipts.values())
        first_sent = min(sent for _, sent, _ in made)
        last = max((max(times) for times in receipts.values() if times), default=first_sent)
        wall = max(1e-6, last - first_sent)
        result = {"events": len(made), "sockets": sockets, "deliveries": deliveries,
                  "wall_s": round(wall, 3), "wall_per_second": int(deliveries / wall),
                  "cpu_seconds": round(cpu, 3),
                  "per_core": int(deliveries / cpu) if cpu > 0 else 0,
                  "missing": len(made) * sockets - deliveries, "via": via}
        log(f"  burst: {deliveries} deliveries in {wall:.2f} s ({result['wall_per_second']}/s), "
            f"{result['per_core']}/s per core of realtime CPU")
        return result


def _stop_on_signals(system: System) -> None:
    """Ctrl-C or SIGTERM: end the load processes at once (a future waiting on a worker cannot
    be cancelled otherwise) and cancel the run, whose `finally` stops the stack. Nothing is
    written for an interrupted run."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def interrupted(name: str) -> None:
        log(f"{name}: stopping the load and the stack")
        stack_pids = ({pid for pids in system.stack.pids().values() for pid in pids}
                      if system.stack is not None else set())
        for child in psutil.Process().children():
            if child.pid not in stack_pids:
                try:
                    child.terminate()
                except psutil.Error:
                    pass
        if main is not None:
            main.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupted, signum.name)


def _pause(seconds: float) -> None:
    time.sleep(seconds)


async def run(args: argparse.Namespace) -> int:
    profile = QUICK if args.quick else FULL
    fd_limit = raise_fd_limit(65536)
    info = machine.describe()
    command = machine.command_line()
    log(f"machine: {machine.summary_line(info)}")
    log(f"command: {command}")
    if fd_limit < 2 * profile.sockets_large + 1000:
        log(f"open-file limit {fd_limit}: fewer sockets than the profile asks for may be held")
    started = time.monotonic()
    if args.url:
        system = running(args.url, args.ca_file, args.mail_dir)
        description = f"running stack at {args.url}"
    else:
        log("starting the local stack (embedded PostgreSQL and Redis, 4 services, Envoy) ...")
        system = await start_local(args.replicas)
        processes = {s: system.settings.replicas(s) for s in REPLICATED_SERVICES}
        description = ("local stack via stack.supervisor.Stack, one realtime process, "
                       + ", ".join(f"{n} {s}" for s, n in processes.items())
                       + " processes, temp data dir; bench overrides: "
                       + ", ".join(f"{k}={v}" for k, v in BENCH_OVERRIDES.items()))
        log(f"  processes: {processes}")
        log(f"  up in {system.stack.started_in:.1f} s at {system.edge_url}")
    _stop_on_signals(system)
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(max_workers=4, mp_context=context, initializer=warm_up_process)
    settings = system.settings
    bench = Bench(profile, system, executor)
    bench.restaurants = args.restaurants
    bench.fd_limit = fd_limit
    # Start every generator process now (imports included), so the first workload starts on time.
    await bench._pool(_pause, *[0.5] * 4)
    bench.results.update(
        date=dt.date.today().isoformat(),
        mode=profile.name + (f", only {args.only}" if args.only else ""), command=command, machine=info,
        stack={"description": description, "argon2": {
            "memory_kib": settings.argon2_memory_kib, "time_cost": settings.argon2_time_cost,
            "parallelism": settings.argon2_parallelism},
            "replicas": {s: settings.replicas(s) for s in REPLICATED_SERVICES},
            "overrides": BENCH_OVERRIDES if not args.url else {}},
        generator={"processes": "1–4", "client": "asyncio + h2 (HTTP/2, TLS), websockets"})
    try:
        only = set(args.only.split(",")) if args.only else None
        phases = [("seed", bench.seed), ("ceiling", bench.run_ceiling),
                  ("verification", bench.run_verification), ("auth", bench.run_auth),
                  ("signup_flood", bench.run_signup_flood),
                  ("orders", bench.run_orders), ("cpu_per_rpc", bench.run_cpu_per_rpc),
                  ("edge_check", bench.run_edge_check), ("mesh_tls", bench.run_mesh_tls),
                  ("mix", bench.run_mix), ("overload", bench.run_overload),
                  ("replicas", bench.run_replicas),
                  # Sockets before the POS day: the realtime process's memory is measured from
                  # a baseline no earlier workload has grown.
                  ("websockets", bench.run_websockets), ("pos_day", bench.run_pos_day)]
        for name, phase in phases:
            if only and name not in only and name != "seed":
                continue
            if not only and name in profile.only_when_asked:
                bench.results["notes"].append(
                    f"Phase {name} does not run in a {profile.name} run: `make bench` runs it, or "
                    f"alone `make bench ARGS=\"--{profile.name} --only {name}\"`.")
                continue
            await bench.phase(name, phase())
            if name == "seed" and bench.world is None:
                break
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        if not args.url:
            log("stopping the stack ...")
        await system.stop()
    results = bench.results
    results["elapsed_s"] = round(time.monotonic() - started)
    results["generator"]["processes"] = "1–4"
    checks = targets.evaluate(results)
    # A run of some phases is named by them, so one phase's run does not replace another's.
    name = results["date"] + ("" if profile.name == "full" else f"-{profile.name}") + \
        ("-" + "-".join(sorted(args.only.split(","))) if args.only else "") + \
        (f"-replicas{args.replicas}" if args.replicas else "")
    out_dir = Path(args.out) if args.out else RESULTS_DIR
    paths = report.write(results, checks, out_dir, name=name,
                         update_latest=profile.name == "full" and not args.only)
    print()
    print(f"{'area':<9} {'verdict':<8} target — figure")
    for check in checks:
        print(f"{check.area:<9} {check.verdict:<8} {check.target} — {check.figure}")
    print()
    for line in report.workloads_table(results):
        print(line)
    print()
    if results.get("cpu_per_rpc"):
        print("orders CPU per request (µs), median of the rounds:")
        for line in cpu_per_rpc.table(results["cpu_per_rpc"]):
            print(line)
        print()
    if results["failures"]:
        print("phases that failed: " + json.dumps(results["failures"], indent=1))
    log(f"done in {results['elapsed_s']} s; wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if results["failures"] else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (under 2 minutes)")
    parser.add_argument("--url", help="bench a running stack (e.g. https://localhost:8443) "
                                      "instead of starting one")
    parser.add_argument("--ca-file", help="CA to trust with --url (default: <data dir>/certs/ca.pem)")
    parser.add_argument("--mail-dir", help="with --url: the stack's dev mail store, where the "
                                           "seed reads its verification links (default: "
                                           "<data dir>/mail)")
    parser.add_argument("--only", help="comma-separated phases: ceiling, verification, auth, "
                                       "signup_flood, orders, cpu_per_rpc, edge_check, mix, overload "
                                       "(after mix: 2× and 4× its capacity), replicas (one orders "
                                       "process against all), pos_day, websockets")
    parser.add_argument("--restaurants", type=int, default=RESTAURANTS,
                        help=f"restaurants to spread the load over (default {RESTAURANTS}, as the issues ask)")
    parser.add_argument("--out", help=f"results directory (default {RESULTS_DIR})")
    parser.add_argument("--replicas", type=int,
                        help="processes each of auth, staff and orders in the local stack "
                             "(default: AUTH/STAFF/ORDERS_REPLICAS, one per core)")
    args = parser.parse_args(argv)
    try:
        import uvloop
        code = uvloop.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
