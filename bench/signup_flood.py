"""The registration-flood workload: login p95 with and without 20 registrations per second from
other people, measured in one run.

Rounds alternate (quiet, flood, quiet, flood, ...) so drift on a shared machine falls on both
sides; the verdict compares the median of the rounds' login p95s. Registrations the auth service
sheds (503 SERVER_BUSY when the enrollment hash queue is full, 429 RATE_LIMITED) are the design
working, counted apart from errors; logins must have none."""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass

FLOOD_RATE = 20.0  # registrations per second, as the identity issue asks
SHED_REASONS = ("503 SERVER_BUSY", "429 RATE_LIMITED")


@dataclass(frozen=True)
class FloodSpec:
    login_rate: float
    rounds: int  # of each kind
    seconds: float
    warmup: float


def login_p95_moved(quiet: list[dict], flooded: list[dict]) -> dict:
    """The medians of the rounds' login p95 and their ratio (flooded / quiet)."""
    quiet_p95 = statistics.median(s["p95_ms"] for s in quiet)
    flooded_p95 = statistics.median(s["p95_ms"] for s in flooded)
    return {"quiet_p95_ms": round(quiet_p95, 2), "flooded_p95_ms": round(flooded_p95, 2),
            "ratio": round(flooded_p95 / quiet_p95, 3) if quiet_p95 else None}


def registrations_outcome(summaries: list[dict]) -> dict:
    """Accepted, shed (by reason) and failed registrations over the flood rounds."""
    accepted = sum(s["requests"] - s["errors"] for s in summaries)
    shed: dict[str, int] = {}
    failed: dict[str, int] = {}
    for s in summaries:
        for kind, count in s.get("error_kinds", {}).items():
            bucket = shed if kind in SHED_REASONS else failed
            bucket[kind] = bucket.get(kind, 0) + count
    seconds = sum(s["duration_s"] for s in summaries)
    return {"offered_per_second": FLOOD_RATE, "accepted": accepted,
            "accepted_per_second": round(accepted / seconds, 1) if seconds else 0.0,
            "shed": shed, "failed": failed}


async def run(bench, spec: FloodSpec) -> dict:
    """Runs the rounds on `bench` (bench.cli.Bench) and returns the phase's results."""
    quiet: list[dict] = []
    flooded: list[dict] = []
    registrations: list[dict] = []
    # Unmeasured: the seed's aftermath (its mail, its hashes) must not land in the first round.
    await bench.quiet()
    await bench.http("login", rate=spec.login_rate, duration=spec.warmup + 2, warmup=spec.warmup)
    for round_number in range(1, spec.rounds + 1):
        await bench.quiet()
        alone, _ = await bench.http("login", rate=spec.login_rate, duration=spec.seconds,
                                    warmup=spec.warmup)
        bench.print_summary(f"login, quiet (round {round_number})", alone)
        quiet.append(alone)
        await bench.quiet()
        (with_flood, _), (flood, _) = await asyncio.gather(
            bench.http("login", rate=spec.login_rate, duration=spec.seconds, warmup=spec.warmup),
            bench.http("register", rate=FLOOD_RATE, duration=spec.seconds, warmup=spec.warmup))
        bench.print_summary(f"login, during the flood (round {round_number})", with_flood)
        bench.print_summary(f"registrations (round {round_number})", flood)
        flooded.append(with_flood)
        registrations.append(flood)
    result = {"login_rate": spec.login_rate, "rounds": spec.rounds, "round_seconds": spec.seconds,
              **login_p95_moved(quiet, flooded),
              "login_errors": sum(s["errors"] for s in quiet + flooded),
              "registrations": registrations_outcome(registrations),
              "quiet_rounds": quiet, "flooded_rounds": flooded}
    return result
