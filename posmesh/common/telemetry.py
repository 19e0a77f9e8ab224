"""Structured JSON logs and OpenTelemetry tracing, set up once per process.

Every log record is one JSON line with the service name and, inside a span, its trace and span
ids, so a log line can be found from a trace and the other way round. Spans are always recorded
(W3C `traceparent` from Envoy is continued through gRPC, SQLAlchemy and Redis); they are exported
over OTLP/gRPC only when OTEL_EXPORTER_OTLP_ENDPOINT is set.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from posmesh.common.settings import Settings

_configured: str | None = None
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
    global _configured
    if _configured is not None:
        return
    _configured = service

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
        sampler=ParentBased(TraceIdRatioBased(settings.otel_sample_ratio)),
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
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    untraced = filters.any_of(*(filters.full_method_name(name) for name in UNTRACED_METHODS))
    return aio_server_interceptor(filter_=filters.negate(untraced))


def client_interceptors() -> list:
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())
