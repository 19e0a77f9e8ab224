"""A real OTLP/gRPC trace receiver for the tests: the collector's TraceService from
opentelemetry-proto, keeping every span it is sent (from the services' OTLP exporters and
Envoy's OpenTelemetry tracer).

    async with OtlpReceiver() as receiver:       # listens on 127.0.0.1:<free port>
        settings: OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint
        spans = await receiver.wait_for(lambda spans: ..., timeout=20)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict = field(default_factory=dict, hash=False, compare=False)


def _value(any_value) -> object:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: list[ReceivedSpan]) -> None:
        self._sink = sink

    async def Export(self, request, context):
        for resource_spans in request.resource_spans:
            resource = {item.key: _value(item.value) for item in resource_spans.resource.attributes}
            service = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self._sink.append(ReceivedSpan(
                        service=service, name=span.name, trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        attributes={item.key: _value(item.value) for item in span.attributes}))
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self.spans),
                                                                  self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> "OtlpReceiver":
        await self._server.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._server.stop(grace=None)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    async def wait_for(self, done: Callable[[list[ReceivedSpan]], object],
                       timeout: float = 30.0) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while not done(self.spans):
            if time.monotonic() > deadline:
                raise AssertionError(f"the spans never satisfied the check; received "
                                     f"{sorted({(s.service, s.name) for s in self.spans})}")
            await asyncio.sleep(0.2)
        return self.spans
