"""Prometheus metrics of one process (prometheus_client), served on an operator-only port.

Every service process serves `GET /metrics` (Prometheus text format) on `<SERVICE>_METRICS_ADDR`
(loopback by default; the operator's network in a deployment, never a route of the edge). The
page is rendered on the process's own event loop, so collectors that read live state (pools,
sockets, admission lanes) see it without locks. docs/observability.md lists every metric.

Labels are bounded: method names, status codes, reasons and connection types come from fixed
sets; no label ever carries a user, session or restaurant id.

Hot paths record with the cheapest primitives: latencies go into `LoopHistogram`s (plain lists
owned by the event loop, no lock), and state that already exists as a number (pool sizes, socket
counts, admission lanes) is read at scrape time instead of being counted per request. Rare events
(errors, refusals, lockouts) use prometheus_client's Counter.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from typing import Callable, Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Request latency buckets (seconds): fine below 100 ms where the service lives, and 2 s exactly
# (the API p95 alert's threshold) so histogram_quantile is not interpolating across it.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
# Redis calls are ~60 µs when healthy: finer at the bottom.
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 2.5)

# --- errors every service answers (posmesh/common/interceptors.abort) ------------------------

RPC_ERRORS = Counter(
    "posmesh_rpc_errors", "Errors answered to callers, by gRPC code and ErrorInfo reason.",
    ["code", "reason"])


def count_error(code: str, reason: str) -> None:
    RPC_ERRORS.labels(code, reason).inc()


# --- security events (posmesh/common/security_events.record) -----------------------------------

SECURITY_EVENTS = Counter(
    "posmesh_security_events", "Security events recorded (LOGIN_FAILED, LOGIN_LOCKOUT, "
    "REFRESH_REUSED, TENANT_MISMATCH, ...), by type and severity.", ["event", "severity"])

# --- admission control (posmesh/common/admission.py) --------------------------------------------

ADMISSION_REFUSED = Counter(
    "posmesh_admission_refused", "Calls refused by admission control (OVERLOADED), by priority "
    "and cause (in_flight: the lane was full; queue_age: waited too long before starting).",
    ["priority", "cause"])
# Every series exists from the start (at 0), so rates and alerts see a refusal's first increase.
for _priority in ("critical", "normal", "sheddable"):
    for _cause in ("in_flight", "queue_age"):
        ADMISSION_REFUSED.labels(_priority, _cause)
DEADLINES_EXCEEDED = Counter(
    "posmesh_deadline_exceeded", "Calls abandoned at their deadline (DEADLINE_EXCEEDED).")

class LoopHistogram(Collector):
    """A histogram for hot paths of the event loop: prometheus_client's Histogram.observe takes a
    lock (about 8 µs on the development VM); this keeps a plain list of bucket counts per label
    tuple (a bisect and three additions per observation) and builds the family at scrape time.
    Observe and scrape from the event loop's thread only (MetricsServer serves there)."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...],
                 buckets: tuple[float, ...]) -> None:
        self.key = name
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.bounds = tuple(float(bound) for bound in buckets)
        self.series: dict[tuple[str, ...], list] = {}  # labels -> [bucket counts, sum, count]

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [[0] * (len(self.bounds) + 1), 0.0, 0]
        series[0][bisect_left(self.bounds, seconds)] += 1
        series[1] += seconds
        series[2] += 1

    def counts(self) -> dict[tuple[str, ...], int]:
        return {labels: series[2] for labels, series in list(self.series.items())}

    def collect(self) -> Iterable:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, (counts, total, _) in list(self.series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), counts):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric(list(labels), buckets, total)
        yield family


# --- Redis (posmesh/common/redis.py) -----------------------------------------------------------

REDIS_CALL_SECONDS = LoopHistogram(
    "posmesh_redis_call_seconds", "Redis commands and pipelines, by command, from the client.",
    ("command",), FAST_BUCKETS)
REDIS_ERRORS = Counter(
    "posmesh_redis_errors", "Redis calls that failed, by command and error class.",
    ["command", "error"])


class ProcessInfo(Collector):
    """`posmesh_process_info{service}` = 1: which service a target is, for dashboards."""

    def __init__(self, service: str) -> None:
        self.service = service

    def collect(self) -> Iterable:
        family = GaugeMetricFamily("posmesh_process_info", "The service this process runs.",
                                   labels=["service"])
        family.add_metric([self.service], 1)
        yield family


class PoolCollector(Collector):
    """The database pool of a process, read at scrape time from a `pool_stats()` dict
    (posmesh.common.db.pool_stats / OrdersStore.pool_stats) and a waiting count."""

    def __init__(self, stats: Callable[[], dict[str, int]],
                 waiting: Callable[[], int] = lambda: 0) -> None:
        self._stats = stats
        self._waiting = waiting

    def collect(self) -> Iterable:
        stats = self._stats()
        in_use = stats.get("checked_out", 0)
        connections = GaugeMetricFamily(
            "posmesh_db_pool_connections", "Database connections of this process's pool by "
            "state (in_use: checked out by a request; idle: open, waiting in the pool).",
            labels=["state"])
        connections.add_metric(["in_use"], in_use)
        connections.add_metric(["idle"], stats.get("checked_in", 0))
        yield connections
        yield GaugeMetricFamily("posmesh_db_pool_overflow", "Connections open beyond the "
                                "steady pool size (DB_POOL_SIZE).", value=stats.get("overflow", 0))
        yield GaugeMetricFamily("posmesh_db_pool_max", "Most connections the pool may open "
                                "(DB_POOL_SIZE + DB_MAX_OVERFLOW).",
                                value=stats.get("size", 0) + stats.get("max_overflow", 0))
        yield GaugeMetricFamily("posmesh_db_pool_waiting", "Requests waiting for a free "
                                "connection right now.", value=self._waiting())


def queue_waiters(queue) -> int:
    """Tasks blocked in `get()` of an asyncio.Queue (the pools of asyncpg and of SQLAlchemy's
    asyncio engine hand out connections from one); 0 for anything else."""
    getters = getattr(queue, "_getters", None) or ()
    return sum(1 for waiter in tuple(getters) if not waiter.done())


class CallbackCollector(Collector):
    """Families built by a function at scrape time (a component's live state). `key` names it
    for `register` (one per key and process)."""

    def __init__(self, key: str, build: Callable[[], Iterable]) -> None:
        self.key = key
        self._build = build

    def collect(self) -> Iterable:
        return list(self._build())


def gauge_family(name: str, documentation: str, values: dict[tuple[str, ...], float] | float,
                 labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    if not labels:
        return GaugeMetricFamily(name, documentation, value=float(values))  # type: ignore[arg-type]
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    for key, value in values.items():  # type: ignore[union-attr]
        family.add_metric(list(key), value)
    return family


def counter_family(name: str, documentation: str, values: dict[tuple[str, ...], float] | float,
                   labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    if not labels:
        return CounterMetricFamily(name, documentation, value=float(values))  # type: ignore[arg-type]
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    for key, value in values.items():  # type: ignore[union-attr]
        family.add_metric(list(key), value)
    return family


def register(collector: Collector, registry: CollectorRegistry = REGISTRY) -> Collector:
    """Registers once per process (a second registration of the same kind replaces the first,
    so tests that build several components in one process do not fail on duplicates)."""
    _registered = getattr(registry, "_posmesh_collectors", None)
    if _registered is None:
        _registered = {}
        setattr(registry, "_posmesh_collectors", _registered)
    key = type(collector).__name__ + getattr(collector, "key", "")
    previous = _registered.get(key)
    if previous is not None:
        registry.unregister(previous)
    registry.register(collector)
    _registered[key] = collector
    return collector


register(REDIS_CALL_SECONDS)


# --- the page ----------------------------------------------------------------------------------

_NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n"
              b"Connection: close\r\n\r\nnot found\n")


class MetricsServer:
    """`GET /metrics` over plain HTTP/1.1 on the process's event loop (a scrape every few
    seconds; nothing else is served)."""

    def __init__(self, address: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.address = address
        self._registry = registry
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        host, _, port = self.address.rpartition(":")
        self._server = await asyncio.start_server(self._handle, host or "127.0.0.1", int(port))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, _, rest = head.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD") or path != b"/metrics":
                writer.write(_NOT_FOUND)
            else:
                body = generate_latest(self._registry)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + CONTENT_TYPE_LATEST.encode()
                             + b"\r\nContent-Length: " + str(len(body)).encode()
                             + b"\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
                if method == b"GET":
                    writer.write(body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        except Exception:
            log.exception("metrics page failed")
        finally:
            writer.close()


async def serve(service: str, address: str | None) -> MetricsServer | None:
    """Starts the process's metrics page (None when `address` is empty: metrics off)."""
    register(ProcessInfo(service))
    if not address:
        return None
    server = MetricsServer(address)
    await server.start()
    log.info("%s serving metrics on http://%s/metrics", service, address)
    return server
