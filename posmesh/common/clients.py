"""gRPC channels to the other services, one cached channel per service per process.

    stub = auth_pb2_grpc.AuthAdminServiceStub(clients.channel("auth"))

A service with several replicas (`<SVC>_ADDRS`) is one channel over all of them: gRPC's
round_robin spreads the calls, and a replica that is down is skipped (its calls retried on
another).

Every call carries the current trace (OTel client interceptor: W3C traceparent), gets a default
deadline unless it passes its own `timeout=`, never more than what remains of the request being
served (posmesh/common/admission.py), and is retried on UNAVAILABLE a couple of times.

Channels are mutual TLS (posmesh/common/mesh_tls.py): the process presents the certificate of
its own identity (`use_identity`, set by `posmesh serve`) and accepts only a server whose
certificate names the service it called. When the certificate files change (`posmesh certs
rotate`), the next call opens a new channel with them; calls already running finish on the old.
"""

from __future__ import annotations

import ipaddress
import json

import grpc

from posmesh.common import admission, mesh_tls, telemetry
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
    # Per call over every address the name resolves to (one pod each behind a headless
    # Kubernetes Service, deploy/k8s/); one address: as before.
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

_channels: dict[str, "MeshChannel"] = {}
_identity: str | None = None
_credentials: mesh_tls.ReloadingCredentials | None = None


def use_identity(name: str) -> None:
    """Who this process is in the mesh: its certificate is presented on every channel."""
    global _identity, _credentials
    _identity, _credentials = name, None


def _mesh_credentials(settings: Settings) -> mesh_tls.ReloadingCredentials:
    global _credentials
    if _identity is None:
        raise RuntimeError("this process has no mesh identity: call clients.use_identity(name) "
                           "first (`posmesh serve` does)")
    if _credentials is None:
        _credentials = mesh_tls.ReloadingCredentials(mesh_tls.files_for(settings, _identity))
    return _credentials


def address(service: str, settings: Settings | None = None) -> str:
    """The channel target for `service`: its one address, or an `ipv4:`/`ipv6:` list of every
    replica (e.g. `ipv4:127.0.0.1:50053,127.0.0.1:40001`)."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    return target((settings or get_settings()).service_addrs(service))


def target(addrs: list[str]) -> str:
    if len(addrs) == 1:
        return addrs[0]
    families = set()
    for addr in addrs:
        host = addr.rpartition(":")[0].strip("[]")
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ValueError(f"several replicas must be IP literals (a name resolving to every "
                             f"replica goes alone in *_ADDR): {addr!r}") from None
    if len(families) > 1:
        raise ValueError(f"replica addresses mix IPv4 and IPv6: {', '.join(addrs)}")
    return f"ipv{families.pop()}:{','.join(addrs)}"


def channel(service: str, settings: Settings | None = None) -> grpc.aio.Channel:
    """The shared channel to `service`; made on first use inside the running event loop."""
    existing = _channels.get(service)
    if existing is None:
        settings = settings or get_settings()
        credentials = _mesh_credentials(settings) if settings.mesh_tls else None
        existing = _channels[service] = MeshChannel(address(service, settings), service,
                                                    credentials)
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


def _interceptors() -> list:
    return [DeadlinePropagation(), *telemetry.client_interceptors()]


def insecure_channel(target: str) -> grpc.aio.Channel:
    """Plaintext: only with MESH_TLS=false (measuring what mTLS costs); servers refuse it."""
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=_interceptors())


def secure_channel(target: str, service: str, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    """Mutual TLS to `service`: its certificate must name it (service.posmesh.local)."""
    options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", mesh_tls.server_name(service))]
    return grpc.aio.secure_channel(target, credentials, options=options,
                                   interceptors=_interceptors())


class MeshChannel:
    """A grpc.aio channel to one service that follows the process's certificate files: stubs
    made on it once keep working across a rotation (each call goes to the newest channel)."""

    def __init__(self, target: str, service: str,
                 credentials: mesh_tls.ReloadingCredentials | None) -> None:
        self._target, self._service, self._credentials = target, service, credentials
        self._generation = -1
        self._retired: list[grpc.aio.Channel] = []
        self._channel = self._current()

    def _current(self) -> grpc.aio.Channel:
        if self._credentials is None:
            if self._generation < 0:
                self._generation, self._channel = 0, insecure_channel(self._target)
            return self._channel
        generation, credentials = self._credentials.current()
        if generation != self._generation:
            if self._generation >= 0:
                # Not closed now: streams and calls running on it finish there.
                self._retired.append(self._channel)
            self._generation = generation
            self._channel = secure_channel(self._target, self._service, credentials)
        return self._channel

    def unary_unary(self, method, request_serializer=None, response_deserializer=None,
                    _registered_method=False):
        return _Multicallable(self, "unary_unary", method, request_serializer,
                              response_deserializer, _registered_method)

    def unary_stream(self, method, request_serializer=None, response_deserializer=None,
                     _registered_method=False):
        return _Multicallable(self, "unary_stream", method, request_serializer,
                              response_deserializer, _registered_method)

    def stream_unary(self, method, request_serializer=None, response_deserializer=None,
                     _registered_method=False):
        return _Multicallable(self, "stream_unary", method, request_serializer,
                              response_deserializer, _registered_method)

    def stream_stream(self, method, request_serializer=None, response_deserializer=None,
                      _registered_method=False):
        return _Multicallable(self, "stream_stream", method, request_serializer,
                              response_deserializer, _registered_method)

    def get_state(self, try_to_connect: bool = False):
        return self._current().get_state(try_to_connect)

    async def channel_ready(self) -> None:
        await self._current().channel_ready()

    async def close(self, grace: float | None = None) -> None:
        for channel in [*self._retired, self._channel]:
            await channel.close(grace)
        self._retired.clear()


class _Multicallable:
    def __init__(self, owner: MeshChannel, kind: str, method, serializer, deserializer,
                 registered: bool) -> None:
        self._owner, self._kind, self._method = owner, kind, method
        self._serializer, self._deserializer, self._registered = serializer, deserializer, registered
        self._channel = None
        self._call = None

    def __call__(self, *args, **kwargs):
        channel = self._owner._current()
        if channel is not self._channel:
            self._call = getattr(channel, self._kind)(
                self._method, request_serializer=self._serializer,
                response_deserializer=self._deserializer, _registered_method=self._registered)
            self._channel = channel
        return self._call(*args, **kwargs)


async def close_all() -> None:
    channels = list(_channels.values())
    _channels.clear()
    for chan in channels:
        await chan.close()
