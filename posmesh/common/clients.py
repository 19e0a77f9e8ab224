"""gRPC channels to the other services, one cached channel per service per process.

    stub = auth_pb2_grpc.AuthAdminServiceStub(clients.channel("auth"))

Every call carries the current trace (OTel client interceptor: W3C traceparent), gets a default
deadline unless it passes its own `timeout=`, never more than what remains of the request being
served (posmesh/common/admission.py), and is retried on UNAVAILABLE a couple of times.
"""

from __future__ import annotations

import json

import grpc

from posmesh.common import admission, telemetry
from posmesh.common.settings import Settings, get_settings

SERVICES = ("auth", "staff", "orders", "realtime")
DEFAULT_TIMEOUT_SECONDS = 10.0
# Long-lived streams have no default deadline.
_STREAMING = [
    {"service": "posmesh.orders.v1.OrderService", "method": "WatchOrders"},
    {"service": "posmesh.orders.v1.OrderFeedService", "method": "WatchRestaurantOrders"},
    {"service": "grpc.health.v1.Health", "method": "Watch"},
]
_SERVICE_CONFIG = json.dumps({
    # Per call over every address the name resolves to: a headless Kubernetes Service resolves
    # to one address per pod (deploy/k8s/); pick_first would pin a process to one of them.
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{}],
            "timeout": f"{DEFAULT_TIMEOUT_SECONDS}s",
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        },
        {"name": _STREAMING},
    ]
})
CHANNEL_OPTIONS: list[tuple[str, object]] = [
    ("grpc.service_config", _SERVICE_CONFIG),
    ("grpc.enable_retries", 1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect quickly after a peer restarts (the default backoff grows to 2 minutes).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
]

_channels: dict[str, grpc.aio.Channel] = {}


def address(service: str, settings: Settings | None = None) -> str:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    return (settings or get_settings()).service_addr(service)


def channel(service: str, settings: Settings | None = None) -> grpc.aio.Channel:
    """The shared channel to `service`; made on first use inside the running event loop."""
    existing = _channels.get(service)
    if existing is None:
        existing = _channels[service] = insecure_channel(address(service, settings))
    return existing


class DeadlinePropagation(grpc.aio.UnaryUnaryClientInterceptor):
    """A unary call gets DEFAULT_TIMEOUT_SECONDS unless it passes its own timeout (the service
    config's `timeout` does not reach grpc.aio's calls), and, made while serving a request, at
    most what remains of that request's deadline: work the caller can no longer use is not
    started downstream either."""

    async def intercept_unary_unary(self, continuation, details, request):
        timeout = details.timeout if details.timeout is not None else DEFAULT_TIMEOUT_SECONDS
        remaining = admission.remaining_seconds()
        if remaining is not None:
            timeout = min(timeout, max(remaining, 0.001))
        if timeout != details.timeout:
            details = grpc.aio.ClientCallDetails(details.method, timeout, details.metadata,
                                                 details.credentials, details.wait_for_ready)
        return await continuation(details, request)


def insecure_channel(target: str) -> grpc.aio.Channel:
    # Plaintext on purpose: service-to-service traffic stays on loopback or the private network;
    # TLS terminates at the edge.
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS,
                                     interceptors=[DeadlinePropagation(),
                                                   *telemetry.client_interceptors()])


async def close_all() -> None:
    channels = list(_channels.values())
    _channels.clear()
    for chan in channels:
        await chan.close()
