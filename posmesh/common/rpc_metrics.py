"""RED metrics per RPC: the gRPC server interceptor every service runs, outermost after tracing,
so it sees every answer (the authorization interceptor's refusals and admission's OVERLOADED
included).

The usual names (go-grpc-prometheus, grpc-ecosystem/py-grpc-prometheus):

- `grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}`
- `grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method, grpc_code}` (unary calls;
  a stream lasting hours would only flatten the histogram)

Cheap on purpose (measured by `python -m bench.observability --micro`): prometheus_client's
Counter.inc and Histogram.observe take a lock each (about 4 and 8 µs on the development VM), so
the interceptor keeps plain per-series lists instead (posmesh.common.metrics.LoopHistogram) — a
call costs two clock reads, a dict lookup, a bisect and three additions — and a collector turns
them into the two families when Prometheus scrapes. Both run on the process's event loop
(posmesh.common.metrics serves the page there), so no lock is needed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Iterable

import grpc
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from posmesh.common.metrics import LATENCY_BUCKETS, LoopHistogram, register

UNARY, SERVER_STREAM = "unary", "server_stream"
_OK = grpc.StatusCode.OK
_LABELS = ("grpc_type", "grpc_service", "grpc_method", "grpc_code")


class RedMetrics(Collector):
    """The process's RED series (`RED`, one per process): a LoopHistogram of unary latencies,
    and counts of ended streams; `grpc_server_handled_total` is built from both."""

    def __init__(self) -> None:
        self.handling = LoopHistogram(
            "grpc_server_handling_seconds", "Time from the start of a unary RPC to its answer, "
            "by status code.", _LABELS, LATENCY_BUCKETS)
        self.streams: dict[tuple[str, str, str, str], int] = {}

    def observe(self, key: tuple[str, str, str, str], seconds: float) -> None:
        self.handling.observe(key, seconds)

    def count_stream(self, key: tuple[str, str, str, str]) -> None:
        self.streams[key] = self.streams.get(key, 0) + 1

    def collect(self) -> Iterable:
        handled = CounterMetricFamily("grpc_server_handled", "RPCs completed on the server, by "
                                      "status code.", labels=list(_LABELS))
        for key, count in (*self.handling.counts().items(), *list(self.streams.items())):
            handled.add_metric(list(key), count)
        yield handled
        yield from self.handling.collect()


RED = register(RedMetrics())


def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


def _code_name(code) -> str:
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    for status in grpc.StatusCode:  # an int from the Cython layer
        if status.value[0] == code:
            return status.name
    return "UNKNOWN"


def _final_code(ctx, failed: BaseException | None) -> str:
    code = ctx.code()
    if code is not None and code != _OK and code != 0:
        return _code_name(code)
    if failed is None:
        return "OK"
    if isinstance(failed, grpc.aio.AbortError):
        return _code_name(code)
    # Raised past every interceptor: gRPC answers UNKNOWN (cancellations: the caller is gone).
    return "CANCELLED" if isinstance(failed, asyncio.CancelledError) else "UNKNOWN"


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, red: RedMetrics = RED) -> None:
        self._red = red
        self._keys: dict[str, tuple[str, str, str]] = {}  # full method -> (type, service, method)

    def _prefix(self, kind: str, full_method: str) -> tuple[str, str, str]:
        prefix = self._keys.get(full_method)
        if prefix is None:
            prefix = self._keys[full_method] = (kind, *_split(full_method))
        return prefix

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _timed_unary(handler.unary_unary, self._prefix(UNARY, details.method), self._red),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _counted_stream(handler.unary_stream, self._prefix(SERVER_STREAM, details.method),
                                self._red),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler  # client/bidi streaming: infrastructure only (reflection)


def _timed_unary(behaviour: Callable, prefix: tuple[str, str, str], red: RedMetrics) -> Callable:
    clock = time.perf_counter

    async def timed(request, ctx):
        start = clock()
        failed = None
        try:
            return await behaviour(request, ctx)
        except BaseException as exc:
            failed = exc
            raise
        finally:
            red.observe((*prefix, _final_code(ctx, failed)), clock() - start)
    return timed


def _counted_stream(behaviour: Callable, prefix: tuple[str, str, str], red: RedMetrics) -> Callable:
    async def counted(request, ctx):
        failed = None
        try:
            async for response in behaviour(request, ctx):
                yield response
        except BaseException as exc:
            failed = exc
            raise
        finally:
            red.count_stream((*prefix, _final_code(ctx, failed)))
    return counted
