"""Wires the realtime service (`posmesh serve realtime`): the gRPC server (health, reflection,
RealtimeService.GetPresence) and, in the same process and event loop (uvloop), the WebSocket
listener behind Envoy. SIGTERM closes every socket with 1001 (clients reconnect elsewhere), then
the process exits."""

from __future__ import annotations

import logging

from websockets.asyncio.server import serve as ws_serve

from posmesh.common import clients, mesh_tls, metrics, security_events, telemetry
from posmesh.common.authn import remote_authenticator
from posmesh.common.admission import Admission
from posmesh.common.interceptors import server_interceptors
from posmesh.common.pubsub import ChannelListener
from posmesh.common.redis import create_redis
from posmesh.common.server import run_grpc_service
from posmesh.common.settings import Settings, get_settings
from posmesh.realtime.v1 import realtime_pb2, realtime_pb2_grpc

from services.realtime.gateway import RealtimeGateway
from services.realtime.hub import GrpcFeedSource, OrderHub
from services.realtime.presence import ConnectionRegistry
from services.realtime.servicer import RealtimeServicer
from services.realtime.user_events import UserEventFollower

log = logging.getLogger(__name__)

# Inbound frames websockets may buffer per socket before it stops reading: clients send little.
MAX_INBOUND_QUEUE = 4
CLOSE_TIMEOUT_SECONDS = 3


async def serve(settings: Settings) -> None:
    telemetry.setup("realtime", settings)
    # websockets logs request details at debug level; upgrade URLs may carry ?token=.
    logging.getLogger("websockets").setLevel(logging.WARNING)

    redis = create_redis(settings)
    # One subscription for the revocation channel and this process's control channel.
    listener = ChannelListener(lambda: create_redis(settings, socket_timeout=None))
    auth = await remote_authenticator(settings, clients.channel("auth", settings),
                                      listener=listener)
    authenticator = auth.authenticator
    security_events.configure(security_events.GrpcSecurityEventSink(clients.channel("auth", settings), source="realtime"))
    hub = OrderHub(GrpcFeedSource(clients.channel("orders", settings)),
                   pending_limit=settings.ws_send_queue_size)
    registry = ConnectionRegistry(redis)
    gateway = RealtimeGateway(settings, authenticator=authenticator, redis=redis, hub=hub,
                              registry=registry, send_buffer_limit=settings.ws_send_buffer_bytes)
    metrics.register(metrics.CallbackCollector("realtime-gateway", gateway.metric_families))
    for channel, handler in gateway.channel_handlers().items():
        listener.handle(channel, handler)
    auth.revocations.on_revoked(gateway.on_revoked_session)
    gateway.revocation_status = auth.revocations.status
    user_events = UserEventFollower(lambda: create_redis(settings, socket_timeout=None),
                                    gateway.on_user_event)
    gateway.following_user_events = user_events.following.is_set

    registry.start()
    listener.start()
    user_events.start()
    gateway.start()
    host, _, port = settings.realtime_ws_addr.rpartition(":")
    ssl_context = None
    process_request = gateway.process_request
    if settings.mesh_tls:
        # Behind Envoy, mutual TLS like every gRPC hop: only the edge's certificate opens a socket.
        ssl_context = mesh_tls.ServerSSLContext(mesh_tls.files_for(settings, "realtime")).context
        process_request = only_from_edge(gateway.process_request)
    ws_server = await ws_serve(
        gateway.handler, host, int(port),
        ssl=ssl_context,
        process_request=process_request,
        compression=None,  # permessage-deflate costs ~36 KiB per idle socket
        ping_interval=None,  # application-level pings (gateway ticker) also keep Envoy's idle timer
        ping_timeout=None,
        close_timeout=CLOSE_TIMEOUT_SECONDS,
        max_size=settings.ws_max_message_bytes,
        max_queue=MAX_INBOUND_QUEUE,
        server_header=None,
        logger=logging.getLogger("websockets.server"),
        backlog=4096,  # reconnect storms of thousands of screens; asyncio's default is 100
    )
    log.info("realtime serving WebSockets on %s", settings.realtime_ws_addr)

    async def shutdown() -> None:
        await gateway.stop()
        ws_server.close(close_connections=True)  # 1001 going away to every socket
        await ws_server.wait_closed()
        await listener.stop()
        await user_events.stop()
        await hub.stop()
        await registry.stop()
        await auth.stop()
        await security_events.flush()
        security_events.configure(None)
        log.info("realtime closed every socket")

    def register(server) -> list[str]:
        realtime_pb2_grpc.add_RealtimeServiceServicer_to_server(RealtimeServicer(registry), server)
        return [realtime_pb2.DESCRIPTOR.services_by_name["RealtimeService"].full_name]

    await run_grpc_service("realtime", settings, register=register,
                           interceptors=server_interceptors(authenticator, Admission.from_settings(settings)), redis=redis,
                           revocations=auth.revocations, on_shutdown=shutdown)


def only_from_edge(process_request):
    """Refuses (403, and a security event) an upgrade whose TLS peer is not the edge."""
    from http import HTTPStatus

    def check(ws, request):
        caller = mesh_tls.peer_name_of_transport(ws.transport)
        if caller != mesh_tls.EDGE:
            security_events.record("CALLER_FORBIDDEN", severity=security_events.CRITICAL,
                                   caller=caller or "unknown", method="realtime WebSocket")
            return ws.respond(HTTPStatus.FORBIDDEN, "only the edge may open WebSockets here\n")
        return process_request(ws, request)
    return check


def main() -> None:
    import uvloop

    uvloop.run(serve(get_settings()))


if __name__ == "__main__":
    main()
