"""What mutual TLS on the internal hops costs: CPU per request and p99 of the same requests through
the bench stack (MESH_TLS on, as `make run` has it) and through a plaintext twin (MESH_TLS=false)
at the same moments.

The twin is a second Stack of the same code on ports of its own, in front of the same PostgreSQL
and Redis (so the seeded restaurants and their tokens work on both), with the bench stack's
signing keys and the same database role passwords; only the internal hops differ: Envoy -> the
services and service -> service in plaintext instead of mTLS. In each round two generator
processes send the same scenario on the same open-loop schedule, one to each edge; each stack's
CPU (Envoy + the four services) over the round divided by the requests it answered is its CPU per
request, and their difference is what mTLS costs. The edge's own (client-facing) TLS is the same
in both. Connections inside are long-lived, so this is the steady cost (record encryption); a
handshake happens once per connection.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stack.supervisor import SERVICES, Stack
from tests.harness import LOOPBACK, free_ports

SCENARIOS = {
    "till_order": "POST /api/v1/orders: 4 lines with notes and modifiers (edge -> orders; "
                  "orders -> staff on a cache miss)",
    "order_history": "GET /api/v1/orders?page_size=10&statuses=OPEN&statuses=PREPARING",
}
PARTS = (*SERVICES, "envoy")


async def start_plaintext_twin(stack: Stack) -> tuple[Stack, Path]:
    """The bench stack's twin with MESH_TLS=false (stop it, then remove the folder)."""
    folder = Path(tempfile.mkdtemp(prefix="posmesh-bench-plain-"))
    # The same database role passwords: a bootstrap with others would change them under the
    # running stack's services.
    (folder / "secrets").symlink_to(stack.secrets_dir, target_is_directory=True)
    edge, admin, auth, staff, orders, realtime, realtime_ws = free_ports(7)
    metrics = [f"{LOOPBACK}:{port}" for port in free_ports(5)]
    settings = stack.settings.model_copy(update={
        # Metrics pages of its own: the bench stack's processes hold theirs.
        "auth_metrics_addr": metrics[0], "staff_metrics_addr": metrics[1],
        "orders_metrics_addr": metrics[2], "realtime_metrics_addr": metrics[3],
        "envoy_metrics_addr": metrics[4],
        "mesh_tls": False, "data_dir": folder, "jwt_keys_dir": stack.settings.keys_dir,
        "edge_port": edge, "envoy_admin_port": admin,
        "auth_addr": f"{LOOPBACK}:{auth}", "staff_addr": f"{LOOPBACK}:{staff}",
        "orders_addr": f"{LOOPBACK}:{orders}", "realtime_addr": f"{LOOPBACK}:{realtime}",
        "realtime_ws_addr": f"{LOOPBACK}:{realtime_ws}",
        "realtime_ws_addrs": [f"{LOOPBACK}:{realtime_ws}"],
        # Replicas of its own (the supervisor picks their ports), as many as the bench stack's.
        "auth_addrs": [], "staff_addrs": [], "orders_addrs": [],
        "smtp_url": None})
    twin = Stack(settings)
    try:
        await twin.start()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return twin, folder


def stack_pids(stack: Stack) -> list[int]:
    """Envoy and every service process (replicas too: 'auth-2', ...)."""
    return [pid for name, pids in stack.pids().items() if name.split("-")[0] in PARTS
            for pid in pids]


@dataclass
class Round:
    mtls_requests: int
    plain_requests: int
    mtls_cpu_s: float
    plain_cpu_s: float
    mtls_p99_ms: float
    plain_p99_ms: float
    mtls_errors: dict[str, int]
    plain_errors: dict[str, int]

    @property
    def mtls_us(self) -> float:
        return self.mtls_cpu_s / max(1, self.mtls_requests) * 1e6

    @property
    def plain_us(self) -> float:
        return self.plain_cpu_s / max(1, self.plain_requests) * 1e6


def summarise(scenario: str, rate: float, rounds: list[Round]) -> dict:
    """Medians over the rounds; the cost is the median of the per-round differences."""
    mtls, plain = (statistics.median(r.mtls_us for r in rounds),
                   statistics.median(r.plain_us for r in rounds))
    deltas = [r.mtls_us - r.plain_us for r in rounds]
    delta = statistics.median(deltas)
    return {
        "scenario": scenario,
        "request": SCENARIOS[scenario],
        "rate_per_stack": rate,
        "rounds": len(rounds),
        "requests_per_stack": sum(r.mtls_requests for r in rounds),
        "errors_mtls": _kinds(r.mtls_errors for r in rounds),
        "errors_plaintext": _kinds(r.plain_errors for r in rounds),
        "cpu_us_mtls": round(mtls, 1),
        "cpu_us_plaintext": round(plain, 1),
        "delta_us": round(delta, 1),
        "delta_percent": round(delta / plain * 100, 1) if plain else None,
        "delta_us_per_round": [round(d, 1) for d in deltas],
        "p99_ms_mtls": round(statistics.median(r.mtls_p99_ms for r in rounds), 1),
        "p99_ms_plaintext": round(statistics.median(r.plain_p99_ms for r in rounds), 1),
        "p99_ms_per_round": [[round(r.mtls_p99_ms, 1), round(r.plain_p99_ms, 1)] for r in rounds],
    }


def _kinds(per_round) -> dict[str, int]:
    total: dict[str, int] = {}
    for errors in per_round:
        for kind, count in errors.items():
            total[str(kind)] = total.get(str(kind), 0) + count
    return total
