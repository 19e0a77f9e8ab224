"""Open-loop load: requests leave on a fixed schedule, whatever the server does.

Request i of a run at `rate` per second is due at start + i / rate. Its latency is measured from
that due time, not from when it was actually sent, so a server (or generator) that falls behind
shows up in the percentiles instead of silently lowering the offered rate (coordinated omission).
A warm-up at the same rate runs first; its samples are discarded.
"""

from __future__ import annotations

import array
import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable

_now = time.monotonic  # uvloop's loop.time() is cached per iteration, in ms

# What a request reports: None when it succeeded, else a short error kind ("503 SERVICE_UNAVAILABLE").
Outcome = str | None
Fire = Callable[[int], Awaitable[Outcome]]


# Error kinds that are a refusal at capacity (admission control), answered before any work.
REFUSED_MARK = "OVERLOADED"
NO_JSON = "non-JSON body"  # bench.scenarios.error_kind's reason for a body it could not read


@dataclass
class Recorder:
    """Latencies (seconds) of every request, of the successful ones and of the refused ones
    (OVERLOADED), and error kinds."""

    latencies: array.array = field(default_factory=lambda: array.array("d"))
    ok_latencies: array.array = field(default_factory=lambda: array.array("d"))
    refused_latencies: array.array = field(default_factory=lambda: array.array("d"))
    errors: Counter = field(default_factory=Counter)
    sent: int = 0
    late_sends: int = 0  # requests sent more than 10 ms after their due time (generator lag)

    def record(self, latency: float, outcome: Outcome) -> None:
        self.latencies.append(latency)
        if outcome is None:
            self.ok_latencies.append(latency)
            return
        self.errors[outcome] += 1
        if REFUSED_MARK in outcome:
            self.refused_latencies.append(latency)

    def merge(self, other: "Recorder") -> None:
        self.latencies.extend(other.latencies)
        self.ok_latencies.extend(other.ok_latencies)
        self.refused_latencies.extend(other.refused_latencies)
        self.errors.update(other.errors)
        self.sent += other.sent
        self.late_sends += other.late_sends


def without_reason(kind: str) -> bool:
    """An error kind a client cannot act on: no ErrorInfo reason ("503"), a transport failure
    (an exception's name), a timeout."""
    status, _, reason = kind.partition(" ")
    return not status.isdigit() or not reason or reason == NO_JSON


def percentile(sorted_values: list[float] | array.array, fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarise(recorder: Recorder, duration: float, offered_rate: float | None = None) -> dict:
    """Percentiles in milliseconds, achieved rate and errors, as JSON-ready values."""
    values = sorted(recorder.latencies)
    count = len(values)
    errors = sum(recorder.errors.values())
    summary = {
        "requests": count,
        "errors": errors,
        "error_kinds": dict(recorder.errors.most_common(10)),
        "duration_s": round(duration, 2),
        "achieved_rps": round((count - errors) / duration, 1) if duration else 0.0,
        "late_sends": recorder.late_sends,
    }
    if offered_rate is not None:
        summary["offered_rps"] = offered_rate
    for name, fraction in (("p50", .50), ("p90", .90), ("p95", .95), ("p99", .99), ("p999", .999)):
        summary[f"{name}_ms"] = round(percentile(values, fraction) * 1000, 2)
    summary["max_ms"] = round(values[-1] * 1000, 2) if values else 0.0
    summary["mean_ms"] = round(sum(values) / count * 1000, 2) if count else 0.0
    ok = sorted(recorder.ok_latencies)
    refused = sorted(recorder.refused_latencies)
    summary.update(
        ok_p99_ms=round(percentile(ok, .99) * 1000, 2),
        refused=len(refused),
        refused_p99_ms=round(percentile(refused, .99) * 1000, 2),
        refused_max_ms=round(refused[-1] * 1000, 2) if refused else 0.0,
        over_2s=sum(1 for value in values if value > 2.0),
        timeouts=recorder.errors.get("timeout", 0),
        without_reason=sum(n for kind, n in recorder.errors.items() if without_reason(kind)),
    )
    return summary


async def run_open_loop(fire: Fire, *, rate: float, duration: float, warmup: float = 0.0,
                        timeout: float = 15.0, first_index: int = 0) -> tuple[Recorder, float]:
    """Fires `fire(i)` at `rate` per second for warmup + duration seconds; returns the recorder of
    the measured part (after the warm-up) and its length in seconds. A request still unanswered
    `timeout` seconds after its due time counts as an error ("timeout")."""
    recorder = Recorder()
    interval = 1.0 / rate
    total = int((warmup + duration) * rate)
    measured_from = int(warmup * rate)
    pending: set[asyncio.Task] = set()
    start = _now() + 0.05

    async def one(index: int, due: float) -> None:
        try:
            outcome = await asyncio.wait_for(fire(first_index + index), timeout)
        except asyncio.TimeoutError:
            outcome = "timeout"
        except Exception as exc:  # the request failed on the client side (reset, lost connection)
            outcome = type(exc).__name__
        if index >= measured_from:
            recorder.record(_now() - due, outcome)

    index = 0
    while index < total:
        now = _now()
        # Everything due by now leaves now, in order; then sleep until the next due time.
        while index < total and start + index * interval <= now:
            due = start + index * interval
            if now - due > 0.010 and index >= measured_from:
                recorder.late_sends += 1
            task = asyncio.ensure_future(one(index, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
            if index >= measured_from:
                recorder.sent += 1
            index += 1
        if index < total:
            await asyncio.sleep(max(0.0, start + index * interval - _now()))
    if pending:
        await asyncio.wait(pending)
    return recorder, duration


async def run_closed_loop(fire: Fire, *, concurrency: int, duration: float, warmup: float = 1.0
                          ) -> tuple[Recorder, float]:
    """`concurrency` workers each sending back to back: a throughput ceiling, not a latency test."""
    recorder = Recorder()
    measuring_from = _now() + warmup
    stop_at = measuring_from + duration
    counter = iter(range(1 << 62))

    async def worker() -> None:
        while True:
            started = _now()
            if started >= stop_at:
                return
            try:
                outcome = await fire(next(counter))
            except Exception as exc:
                outcome = type(exc).__name__
            if started >= measuring_from:
                recorder.sent += 1
                recorder.record(_now() - started, outcome)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return recorder, duration


async def run_batch(fire: Fire, *, count: int, concurrency: int) -> tuple[Recorder, float]:
    """Exactly `count` requests, `concurrency` at a time (housekeeping, not a measurement)."""
    recorder = Recorder()
    indices = iter(range(count))
    started = _now()

    async def worker() -> None:
        for index in indices:
            began = _now()
            try:
                outcome = await fire(index)
            except Exception as exc:
                outcome = type(exc).__name__
            recorder.sent += 1
            recorder.record(_now() - began, outcome)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return recorder, _now() - started


def monotonic() -> float:
    """System-wide monotonic clock (CLOCK_MONOTONIC): comparable across processes on Linux."""
    return time.monotonic()
