"""Admission control and deadlines for every unary RPC a service serves.

Past saturation a service must refuse what it cannot finish in time, at once and cheaply, instead
of queueing it: a queued request nobody waits for any more is CPU stolen from one somebody does.
Three checks, before the handler touches the database:

- **In flight.** At most ADMISSION_MAX_IN_FLIGHT unary calls per process in each of two lanes,
  mirroring the edge's circuit breakers (envoy/envoy.yaml.j2): CRITICAL calls (order writes,
  status changes, sign-ins) have a lane of their own, so a read storm cannot starve them; NORMAL
  and SHEDDABLE share the other, and SHEDDABLE (lists and reads, which a client simply repeats)
  may fill only SHEDDABLE_SHARE of it, so reads are shed first. The number comes from Little's
  law: a process's measured throughput times the latency we promise (docs/platform.md).
- **Queue age.** The edge stamps `x-request-start` (its clock, seconds); a request that already
  waited longer than its priority's budget in the edge, the network and the gRPC queue is refused:
  its answer would come too late to be of use (ADMISSION_MAX_QUEUE_MS, 200 ms, for reads; twice
  that for other calls, five times for critical ones).
- **Deadline.** The caller's deadline (grpc-timeout; the edge sets it from its route timeout)
  or REQUEST_DEADLINE_SECONDS. The handler runs under it, less a margin, so a request answers
  DEADLINE_EXCEEDED with its reason before the caller gives up, and whatever it was waiting for
  (a pool, a query, another service) is abandoned and released. Calls to other services get
  what remains (posmesh/common/clients.py).

A refusal is UNAVAILABLE with reason OVERLOADED, `retry_after_seconds` metadata and a
`retry-after` header (the edge passes it to HTTP clients).
"""

from __future__ import annotations

import contextvars
import enum
import time
from dataclasses import dataclass

from posmesh.common.errors import DeadlineExceeded, Unavailable
from posmesh.common.metrics import ADMISSION_REFUSED, DEADLINES_EXCEEDED, CallbackCollector, gauge_family, register
from posmesh.common.settings import Settings

RETRY_AFTER_SECONDS = 1
# Answer this long before the caller's deadline, so our reason arrives before its timeout does.
DEADLINE_MARGIN_SECONDS = 0.05
# A request with less than this left is refused before any work: nothing useful fits.
MIN_USEFUL_SECONDS = 0.005
SHEDDABLE_SHARE = 0.75
REQUEST_START_HEADER = "x-request-start"


class Priority(enum.Enum):
    CRITICAL = "critical"  # order writes, status changes, the event flow, sign-ins: shed last
    NORMAL = "normal"
    SHEDDABLE = "sheddable"  # lists and reads: shed first


# How long a request may already have waited (edge, network, gRPC queue) and still be worth
# starting, as multiples of ADMISSION_MAX_QUEUE_MS (reads' limit): reads are repeated by the app
# anyway; a till's order is worth a longer wait.
QUEUE_AGE_SCALE = {Priority.SHEDDABLE: 1.0, Priority.NORMAL: 2.0, Priority.CRITICAL: 5.0}

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def remaining_seconds() -> float | None:
    """Seconds left before the current request's deadline (None outside a request)."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def overloaded(message: str) -> Unavailable:
    return Unavailable("OVERLOADED", message, retryable="true",
                       retry_after_seconds=str(RETRY_AFTER_SECONDS))


def deadline_exceeded(budget: float) -> DeadlineExceeded:
    DEADLINES_EXCEEDED.inc()
    return DeadlineExceeded("DEADLINE_EXCEEDED",
                            f"the request did not finish within its deadline ({budget:.3g} s) and "
                            "was abandoned; retry", retryable="true")


@dataclass
class Lane:
    limit: int
    in_flight: int = 0
    refused: int = 0


class Admission:
    """One per process. `admit()` before the handler, `release()` after it (always)."""

    def __init__(self, max_in_flight: int, default_deadline_seconds: float,
                 max_queue_seconds: float = 0.1) -> None:
        self.max_in_flight = max(1, max_in_flight)
        self.default_deadline_seconds = default_deadline_seconds
        self.queue_age_limits = {priority: max_queue_seconds * scale
                                 for priority, scale in QUEUE_AGE_SCALE.items()}
        self.critical = Lane(self.max_in_flight)
        self.shared = Lane(self.max_in_flight)
        self._sheddable_limit = max(1, int(self.max_in_flight * SHEDDABLE_SHARE))

    @classmethod
    def from_settings(cls, settings: Settings) -> "Admission":
        admission = cls(settings.admission_max_in_flight, settings.request_deadline_seconds,
                        settings.admission_max_queue_ms / 1000)
        register(CallbackCollector("admission", admission.metric_families))
        return admission

    def metric_families(self):
        yield gauge_family("posmesh_admission_in_flight", "Unary calls in flight by lane.",
                           {("critical",): self.critical.in_flight,
                            ("other",): self.shared.in_flight}, ("lane",))
        yield gauge_family("posmesh_admission_max_in_flight", "The limit of each lane "
                           "(ADMISSION_MAX_IN_FLIGHT).", self.max_in_flight)

    def _lane(self, priority: Priority) -> Lane:
        return self.critical if priority is Priority.CRITICAL else self.shared

    def admit(self, priority: Priority, *, queued_seconds: float = 0.0) -> Lane:
        """Counts the call in; raises OVERLOADED when it must be refused."""
        lane = self._lane(priority)
        limit = self._sheddable_limit if priority is Priority.SHEDDABLE else lane.limit
        if lane.in_flight >= limit:
            lane.refused += 1
            ADMISSION_REFUSED.labels(priority.value, "in_flight").inc()
            raise overloaded(f"the service is at capacity ({lane.in_flight} {priority.value} "
                             "calls in flight); retry shortly")
        if queued_seconds > self.queue_age_limits[priority]:
            lane.refused += 1
            ADMISSION_REFUSED.labels(priority.value, "queue_age").inc()
            raise overloaded(f"the request waited {queued_seconds * 1000:.0f} ms before the "
                             "service could start it; retry shortly")
        lane.in_flight += 1
        return lane

    @staticmethod
    def release(lane: Lane) -> None:
        lane.in_flight -= 1

    def budget(self, time_remaining: float | None) -> float:
        """Seconds the handler may run: the caller's deadline less the margin, else the default.
        Raises DEADLINE_EXCEEDED when nothing useful fits any more."""
        if time_remaining is None:
            return self.default_deadline_seconds
        budget = time_remaining - DEADLINE_MARGIN_SECONDS
        if budget < MIN_USEFUL_SECONDS:
            raise deadline_exceeded(max(time_remaining, 0.0))
        return budget

    @staticmethod
    def start_deadline(budget: float) -> contextvars.Token:
        return _deadline.set(time.monotonic() + budget)

    @staticmethod
    def end_deadline(token: contextvars.Token) -> None:
        _deadline.reset(token)

    def snapshot(self) -> dict[str, int]:
        return {"max_in_flight": self.max_in_flight,
                "critical_in_flight": self.critical.in_flight,
                "other_in_flight": self.shared.in_flight,
                "critical_refused": self.critical.refused, "other_refused": self.shared.refused}


def queued_seconds(request_start: str | None, now: float | None = None) -> float:
    """How long ago the edge received the request, from its `x-request-start` stamp
    ("t=<unix seconds>" or bare seconds); 0 when absent, unreadable or in the future (clocks of
    different hosts may disagree by a little)."""
    if not request_start:
        return 0.0
    value = request_start[2:] if request_start.startswith("t=") else request_start
    try:
        started = float(value)
    except ValueError:
        return 0.0
    return max(0.0, (time.time() if now is None else now) - started)
