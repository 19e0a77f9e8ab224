"""Structured JSON logs and OpenTelemetry tracing, set up once per process.

Every log record is one JSON line with the service name and, inside a span, its trace and span
ids, so a log line can be found from a trace and the other way round. Trace context (W3C
`traceparent` from Envoy) is always continued through gRPC, SQLAlchemy and Redis. Spans are
recorded and exported over OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT is set (a share of the
traces that start here: OTEL_SAMPLE_RATIO); without an exporter nothing is recorded, because
nobody would read it: spans are then the SDK's non-recording ones, which still carry the trace
and span ids that logs and outgoing calls need (recording them cost the orders service about a
tenth of its CPU per request: docs/bench.md).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased

from posmesh.common.settings import Settings

_configured: str | None = None
_recording = False  # spans are recorded (an exporter is configured)
# Attributes every LogRecord has; anything else came from `extra=` and is logged as a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = f"{span.trace_id:032x}"
            entry["span_id"] = f"{span.span_id:016x}"
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup(service: str, settings: Settings) -> None:
    """Logging and tracing for this process; later calls are no-ops."""
    global _configured, _recording
    if _configured is not None:
        return
    _configured = service
    _recording = bool(settings.otel_exporter_otlp_endpoint)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in ("asyncio", "grpc._cython", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

    provider = TracerProvider(
        resource=Resource.create({"service.name": f"posmesh-{service}",
                                  "deployment.environment": settings.env}),
        sampler=sampler_for(settings),
    )
    if settings.otel_exporter_otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # http://collector:4317 is plaintext, https:// is TLS (the exporter reads the scheme).
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_exporter_otlp_endpoint))
        )
    trace.set_tracer_provider(provider)

    # redis-py (sync and asyncio) and SQLAlchemy's engine factories are patched globally; gRPC is
    # instrumented where the server and channels are made (server.py, clients.py).
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    RedisInstrumentor().instrument(tracer_provider=provider)
    # Its version guard stops at SQLAlchemy 2.0; the hooks it uses are unchanged in 2.1.
    SQLAlchemyInstrumentor().instrument(tracer_provider=provider, skip_dep_check=True)


def sampler_for(settings: Settings) -> Sampler:
    """What is recorded: with an exporter, the caller's decision (the edge's traceparent) or
    OTEL_SAMPLE_RATIO of the traces that start here; without one, nothing (ids still flow)."""
    if settings.otel_exporter_otlp_endpoint:
        return ParentBased(TraceIdRatioBased(settings.otel_sample_ratio))
    return ALWAYS_OFF


def current_traceparent() -> str:
    """The W3C traceparent of the current span ('' outside one), to store with work that is
    carried on later by another task or process (the order outbox)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def context_of(traceparent: str):
    """An OpenTelemetry context whose parent is `traceparent` (None when empty or malformed:
    the span then starts a trace of its own). The sampled flag it carries is followed."""
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def shutdown() -> None:
    """Flush spans still buffered for export."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


# Long-lived server streams are not traced: a span lasting hours says little, and the
# instrumentation ends it from the context that cancels the stream, which fails ("Failed to
# detach context", logged at ERROR on every client hang-up).
UNTRACED_METHODS = (
    "/posmesh.orders.v1.OrderService/WatchOrders",
    "/posmesh.orders.v1.OrderFeedService/WatchRestaurantOrders",
)


def server_interceptor():
    """OpenTelemetry's gRPC instrumentation when spans are recorded; otherwise the lean
    TraceContextInterceptor, which keeps the ids and skips what only a recorded span needs."""
    if not _recording:
        return TraceContextInterceptor()
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return aio_server_interceptor(filter_=traced)


_TRACE_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})


class TraceContextInterceptor(grpc.aio.ServerInterceptor):
    """Without an exporter: the caller's trace context (W3C `traceparent`) is continued and each
    call runs in a server span, non-recording, so its logs and its calls to other services carry
    the same ids as with the full instrumentation. The instrumentation's per-call work (span
    attributes from the peer and the method, a proxy around the servicer context, status
    bookkeeping) is for recorded spans only and is skipped."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("posmesh.grpc.server", tracer_provider=tracer_provider)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not traced(details):
            return handler
        carrier = {key: value for key, value in details.invocation_metadata or ()
                   if key in _TRACE_HEADERS}
        parent = propagate.extract(carrier) if carrier else None
        tracer, name = self._tracer, details.method.lstrip("/")
        if handler.unary_unary:
            behaviour = handler.unary_unary

            async def unary(request, ctx):
                with tracer.start_as_current_span(name, context=parent,
                                                  kind=trace.SpanKind.SERVER):
                    return await behaviour(request, ctx)
            return handler._replace(unary_unary=unary)
        if handler.unary_stream:
            stream_behaviour = handler.unary_stream

            async def stream(request, ctx):
                with tracer.start_as_current_span(name, context=parent,
                                                  kind=trace.SpanKind.SERVER):
                    async for response in stream_behaviour(request, ctx):
                        yield response
            return handler._replace(unary_stream=stream)
        return handler


_UNTRACED = frozenset(UNTRACED_METHODS)


def traced(details) -> bool:
    """The server interceptor's filter, run on every call: one set lookup (the library's
    composed filters cost a few percent of a cheap RPC's CPU)."""
    return getattr(details, "method", None) not in _UNTRACED


def client_interceptors() -> list:
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())
