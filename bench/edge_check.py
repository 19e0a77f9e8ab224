"""What the edge's unknown-field check (envoy/unknown_fields.lua) costs: Envoy CPU per request with
and without it, for the same transcoded requests at the same moments.

Two bench-only Envoys are rendered from the edge's template and settings, on ports of their own,
in front of the stack's services: one as the edge is (with the check), one with
`stack.envoy_config.render(..., reject_unknown_fields=False)`. They start together and are run
the same way (log output to a file each), so the check is the only difference; the stack's own
edge is left alone. In each round two generator processes send the same scenario on the same
open-loop schedule, one through each Envoy, so both see the same requests under the same machine
load; each Envoy's CPU time over the round divided by the requests it answered is its CPU per
request, and their difference is what the check costs. The services answer both streams: their
CPU over the round divided by every request of the round is the service side of a request, so
the check is also set against a whole request (edge + services).

Envoy's CPU time is read per thread from /proc/<pid>/task/*/schedstat (nanoseconds; psutil's
cpu_times counts 10 ms clock ticks, too coarse for differences of microseconds per request), with
psutil as the fallback where schedstat is missing.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from posmesh.common.settings import Settings
from stack.envoy_config import envoy_binary, render
from tests.harness import free_ports

# scenario (bench/scenarios.py) -> what it sends
SCENARIOS = {
    "till_order": "POST /api/v1/orders: 4 lines with notes and modifiers (~750 bytes of JSON)",
    "order_history": "GET /api/v1/orders?page_size=10&statuses=OPEN&statuses=PREPARING",
}


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of every live thread of `pid`."""
    total_ns, found = 0, False
    try:
        for thread in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{thread}/schedstat") as stats:
                    total_ns += int(stats.read().split()[0])
                    found = True
            except (OSError, ValueError, IndexError):
                continue  # a thread that just ended
    except OSError:
        pass
    if found:
        return total_ns / 1e9
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


class BenchEdge:
    """An Envoy from the edge's template and settings, on free ports, with or without the check."""

    def __init__(self, settings: Settings, data_dir: Path, *, reject_unknown_fields: bool) -> None:
        self.port, admin_port = free_ports(2)
        self.settings = settings.model_copy(update={"edge_port": self.port,
                                                    "envoy_admin_port": admin_port})
        self.name = "checked-edge" if reject_unknown_fields else "unchecked-edge"
        self.folder = data_dir / "bench" / self.name
        self.config = render(self.settings, self.folder,
                             reject_unknown_fields=reject_unknown_fields)
        self.log_file = self.folder / "envoy.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout: float = 20.0) -> None:
        with self.log_file.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(envoy_binary()), "-c", str(self.config), "--log-level", "warn",
                "--disable-hot-restart", stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(self._ready):
            if self.process.returncode is not None:
                raise RuntimeError(f"the {self.name} Envoy exited: {self.log_file.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {self.name} Envoy did not become ready")
            await asyncio.sleep(0.1)

    def _ready(self) -> bool:
        url = f"http://127.0.0.1:{self.settings.envoy_admin_port}/ready"
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()


@dataclass
class Round:
    """One round: requests answered and CPU seconds used, by each Envoy and by the services."""

    checked_requests: int
    unchecked_requests: int
    checked_cpu_s: float
    unchecked_cpu_s: float
    services_cpu_s: float
    errors: int

    @property
    def checked_us(self) -> float:
        return self.checked_cpu_s / max(1, self.checked_requests) * 1e6

    @property
    def unchecked_us(self) -> float:
        return self.unchecked_cpu_s / max(1, self.unchecked_requests) * 1e6

    @property
    def services_us(self) -> float:
        return self.services_cpu_s / max(1, self.checked_requests + self.unchecked_requests) * 1e6


def summarise(scenario: str, rounds: list[Round]) -> dict:
    """Medians over the rounds; the check's cost is the median of the per-round differences."""
    with_check = statistics.median(r.checked_us for r in rounds)
    without = statistics.median(r.unchecked_us for r in rounds)
    services = statistics.median(r.services_us for r in rounds)
    deltas = [r.checked_us - r.unchecked_us for r in rounds]
    delta = statistics.median(deltas)
    return {
        "scenario": scenario,
        "request": SCENARIOS[scenario],
        "rounds": len(rounds),
        "requests_per_envoy": sum(r.checked_requests for r in rounds),
        "errors": sum(r.errors for r in rounds),
        "envoy_us_with_check": round(with_check, 1),
        "envoy_us_without_check": round(without, 1),
        "delta_us": round(delta, 1),
        "delta_us_per_round": [round(d, 1) for d in deltas],
        "envoy_us_per_round": [[round(r.checked_us, 1), round(r.unchecked_us, 1)] for r in rounds],
        "services_us": round(services, 1),
        "delta_percent_of_edge": round(delta / without * 100, 2) if without else None,
        "delta_percent_of_request": round(delta / (without + services) * 100, 2)
        if without + services else None,
    }
