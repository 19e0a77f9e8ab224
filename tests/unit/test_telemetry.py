"""Tracing without an exporter records nothing, yet every call still carries its trace ids: the
caller's traceparent is continued (logs and calls to other services show the same trace)."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from posmesh.common.settings import Settings
from posmesh.common.telemetry import TraceContextInterceptor, sampler_for

pytestmark = pytest.mark.unit

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_spans_are_recorded_only_when_an_exporter_reads_them() -> None:
    without = sampler_for(Settings(OTEL_EXPORTER_OTLP_ENDPOINT=None))
    with_exporter = sampler_for(Settings(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4317",
                                         OTEL_SAMPLE_RATIO=0.25))
    assert without.get_description() == "AlwaysOffSampler"
    assert with_exporter.get_description().startswith("ParentBased")
    assert "0.25" in with_exporter.get_description()


@pytest.fixture
async def traced_channel():
    async def current_trace(request: bytes, ctx) -> bytes:
        span = trace.get_current_span().get_span_context()
        return f"{span.trace_id:032x} {int(span.is_valid)} {int(span.trace_flags.sampled)}".encode()

    server = grpc.aio.server(interceptors=[
        TraceContextInterceptor(TracerProvider(sampler=sampler_for(Settings())))])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Traced", {"Call": grpc.unary_unary_rpc_method_handler(current_trace)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel.unary_unary("/test.Traced/Call")
    await server.stop(None)


async def test_a_callers_traceparent_is_continued_without_recording(traced_channel) -> None:
    reply = await traced_channel(b"", metadata=(
        ("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"),))
    assert reply.decode() == f"{TRACE_ID} 1 0"


async def test_a_call_without_traceparent_still_runs_in_a_trace_of_its_own(traced_channel) -> None:
    first, second = [(await traced_channel(b"")).decode().split() for _ in range(2)]
    assert first[1] == second[1] == "1"
    assert first[0] != second[0] and int(first[0], 16) != 0
