"""The orders service's entry point (`posmesh serve orders`): migrations, the asyncpg store, Redis,
the outbox relay and its NOTIFY listener, the live stream reader, the auth and staff clients, and
the gRPC server (MenuService, OrderService, OrderFeedService)."""

from __future__ import annotations

from pathlib import Path

from posmesh.common import approvals, clients, security_events
from posmesh.common.approvals import Approval
from posmesh.common.authn import remote_authenticator
from posmesh.common.admission import Admission
from posmesh.common.interceptors import server_interceptors
from posmesh.common.migrations import run_migrations
from posmesh.common.redis import create_redis
from posmesh.common.server import run_grpc_service
from posmesh.common.settings import Settings
from posmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from services.orders.feed import Feed, LiveTail
from services.orders.menu import MenuBook
from services.orders.order_book import OrderBook
from services.orders.relay import EventSignals, NotificationListener, OutboxLagProbe, Relay
from services.orders.restaurants import RestaurantDirectory, staff_fetcher
from services.orders.servicer import MenuServicer, OrderFeedServicer, OrderServicer
from services.orders.store import SCHEMA, OrdersStore

# XREAD BLOCK of the live stream reader; its Redis client's socket timeout must be longer.
LIVE_BLOCK_SECONDS = 5.0


async def serve(settings: Settings) -> None:
    await run_migrations(settings, Path(__file__).parent, SCHEMA)
    redis = create_redis(settings)
    stream_redis = create_redis(settings, socket_timeout=LIVE_BLOCK_SECONDS + 5)
    store = await OrdersStore.open(settings)

    auth_channel = clients.channel("auth", settings)
    auth = await remote_authenticator(settings, auth_channel)
    security_events.configure(security_events.GrpcSecurityEventSink(auth_channel, source="orders"))
    restaurants = RestaurantDirectory(staff_fetcher(clients.channel("staff", settings)),
                                      ttl_seconds=settings.orders_restaurant_cache_seconds)

    def verify_approval(token: str) -> Approval:
        return approvals.verify(auth.authenticator.verifier.keys, token,
                                issuer=settings.jwt_issuer, jwt_audience=settings.jwt_audience,
                                leeway_seconds=settings.jwt_leeway_seconds)

    signals = EventSignals()
    listener = NotificationListener(settings, signals)
    relay = Relay(settings, store, redis, signals)
    lag_probe = OutboxLagProbe(store, settings.order_relay_poll_seconds)
    tail = LiveTail(stream_redis, signals, block_seconds=LIVE_BLOCK_SECONDS)
    feed = Feed(settings, store, tail)
    listener.start()
    relay.start()
    lag_probe.start()

    def register(server) -> list[str]:
        orders_pb2_grpc.add_MenuServiceServicer_to_server(
            MenuServicer(MenuBook(store, restaurants)), server)
        orders_pb2_grpc.add_OrderServiceServicer_to_server(
            OrderServicer(OrderBook(store, restaurants, verify_approval=verify_approval), feed,
                          auth.authenticator.revocations,
                          settings.jwt_leeway_seconds), server)
        orders_pb2_grpc.add_OrderFeedServiceServicer_to_server(OrderFeedServicer(feed), server)
        services = orders_pb2.DESCRIPTOR.services_by_name
        return [services[name].full_name
                for name in ("MenuService", "OrderService", "OrderFeedService")]

    async def on_draining() -> None:
        feed.close()

    async def on_shutdown() -> None:
        await lag_probe.stop()
        await relay.stop()
        await listener.stop()
        await tail.stop()
        await auth.stop()
        await security_events.flush()
        await stream_redis.aclose()
        await store.close()

    await run_grpc_service(
        "orders",
        settings,
        register=register,
        interceptors=server_interceptors(auth.authenticator, Admission.from_settings(settings)),
        database=store,  # health reports the asyncpg pool the store really uses
        redis=redis,
        revocations=auth.revocations,
        on_shutdown=on_shutdown,
        on_draining=on_draining,
    )
