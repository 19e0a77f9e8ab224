"""RealtimeService (gRPC): reports on the live sockets. The interceptor has already checked the
token, the tenant (`restaurant_id` must be the token's) and the role (owner or manager)."""

from __future__ import annotations

from posmesh.common import context
from posmesh.realtime.v1 import realtime_pb2, realtime_pb2_grpc

from services.realtime.presence import ConnectionRegistry
from services.realtime.protocol import CONNECTION_TYPES


class RealtimeServicer(realtime_pb2_grpc.RealtimeServiceServicer):
    def __init__(self, registry: ConnectionRegistry) -> None:
        self._registry = registry

    async def GetPresence(self, request: realtime_pb2.GetPresenceRequest,
                          ctx) -> realtime_pb2.GetPresenceResponse:
        restaurant_id = context.current().restaurant_id
        counts = await self._registry.presence(restaurant_id)
        return realtime_pb2.GetPresenceResponse(
            restaurant_id=restaurant_id,
            connections=[realtime_pb2.ConnectionCount(connection_type=kind, count=counts[kind])
                         for kind in CONNECTION_TYPES])
