"""The RED interceptor counts every call by service, method and final status code, on a real
in-process gRPC server: answers, aborts, crashes, codes set without raising, and streams."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import REGISTRY

from posmesh.common.rpc_metrics import RpcMetricsInterceptor

SERVICE = "posmesh.test.v1.ProbeService"


async def _ok(request: bytes, ctx) -> bytes:
    return request


async def _abort(request: bytes, ctx) -> bytes:
    await ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


async def _crash(request: bytes, ctx) -> bytes:
    raise RuntimeError("a bug")


async def _set_code(request: bytes, ctx) -> bytes:
    ctx.set_code(grpc.StatusCode.ALREADY_EXISTS)
    return b""


async def _stream(request: bytes, ctx):
    yield b"one"
    yield b"two"


def _handlers() -> grpc.GenericRpcHandler:
    unary = {name: grpc.unary_unary_rpc_method_handler(behaviour)
             for name, behaviour in (("Ok", _ok), ("Abort", _abort), ("Crash", _crash),
                                     ("SetCode", _set_code))}
    unary["Stream"] = grpc.unary_stream_rpc_method_handler(_stream)
    return grpc.method_handlers_generic_handler(SERVICE, unary)


@pytest.fixture
async def channel():
    server = grpc.aio.server(interceptors=[RpcMetricsInterceptor()])
    server.add_generic_rpc_handlers((_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield chan
    await server.stop(None)


def handled(method: str, code: str, kind: str = "unary") -> float:
    return REGISTRY.get_sample_value("grpc_server_handled_total", {
        "grpc_type": kind, "grpc_service": SERVICE, "grpc_method": method,
        "grpc_code": code}) or 0.0


def timed(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("grpc_server_handling_seconds_count", {
        "grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": method,
        "grpc_code": code}) or 0.0


@pytest.mark.parametrize("method,code", [("Ok", "OK"), ("Abort", "NOT_FOUND"),
                                         ("Crash", "UNKNOWN"), ("SetCode", "ALREADY_EXISTS")])
async def test_a_unary_call_is_counted_and_timed_by_its_final_code(channel, method, code):
    before, before_timed = handled(method, code), timed(method, code)
    call = channel.unary_unary(f"/{SERVICE}/{method}")
    try:
        await call(b"x", timeout=5)
    except grpc.aio.AioRpcError as error:
        assert error.code().name == code

    assert handled(method, code) == before + 1
    assert timed(method, code) == before_timed + 1


async def test_a_server_stream_is_counted_when_it_ends(channel):
    before = handled("Stream", "OK", "server_stream")
    replies = [reply async for reply in channel.unary_stream(f"/{SERVICE}/Stream")(b"x")]

    assert replies == [b"one", b"two"]
    assert handled("Stream", "OK", "server_stream") == before + 1


def test_latencies_land_in_cumulative_buckets_with_a_2_second_boundary():
    from posmesh.common.rpc_metrics import RedMetrics

    red = RedMetrics()
    key = ("unary", SERVICE, "Timed", "OK")
    for seconds in (0.0004, 0.003, 1.5, 2.0, 3.0):
        red.observe(key, seconds)
    handled, handling = list(red.collect())
    buckets = {sample.labels["le"]: sample.value for sample in handling.samples
               if sample.name.endswith("_bucket")}

    assert handled.samples[0].value == 5
    assert buckets["0.001"] == 1 and buckets["0.005"] == 2
    assert buckets["2.0"] == 4, "a 2 s call is within the 2 s bucket (le is inclusive)"
    assert buckets["+Inf"] == 5
    assert [s.value for s in handling.samples if s.name.endswith("_sum")] == [6.5034]
