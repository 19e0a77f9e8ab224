"""The authorization interceptor, on a real in-process gRPC server with real signed tokens.

No database or Redis: the servicer is a tiny fake of MenuService/OrderFeedService and the
revocation check is the real local revocation set. What is checked is the mechanism every service shares:
401 vs 403, each reason, tenant checks on header/field/nested field, the internal-only guard, and
how unexpected and infrastructure errors reach the client.
"""

from __future__ import annotations

import time
import uuid

import asyncpg.exceptions
import grpc
import pytest
import sqlalchemy.exc

from posmesh.common import context
from posmesh.common.interceptors import infrastructure_error
from posmesh.common.revocations import RevocationSet, SessionRevocation
from posmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from tests.support.interceptor_rig import (
    OTHER_RESTAURANT,
    RESTAURANT,
    authenticator_for,
    bearer,
    call_error,
    error_reason,
    make_token,
    new_signing_key,
    serving,
)


class FakeMenu(orders_pb2_grpc.MenuServiceServicer):
    """Echoes the caller the interceptor established; fails on demand by item id."""

    async def GetMenu(self, request, ctx):
        caller = context.current()
        return orders_pb2.Menu(restaurant_id=caller.restaurant_id)

    async def UpdateMenuItem(self, request, ctx):
        if request.item_id == "boom":
            raise RuntimeError("a bug")
        if request.item_id == "db-down":
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError())
        return orders_pb2.MenuItem(id=request.item_id)

    async def CreateMenuItem(self, request, ctx):
        return orders_pb2.MenuItem(id="new")


class FakeFeed(orders_pb2_grpc.OrderFeedServiceServicer):
    async def WatchRestaurantOrders(self, request, ctx):
        yield orders_pb2.WatchOrdersResponse(heartbeat=True)


@pytest.fixture(scope="module")
def signing_key():
    return new_signing_key()


@pytest.fixture(scope="module")
def revocations():
    return RevocationSet(lifetime_seconds=910, max_entries=1000)


@pytest.fixture(scope="module")
async def channel(signing_key, revocations):
    def register(server):
        orders_pb2_grpc.add_MenuServiceServicer_to_server(FakeMenu(), server)
        orders_pb2_grpc.add_OrderFeedServiceServicer_to_server(FakeFeed(), server)

    async with serving(authenticator_for(signing_key, revocations), register) as chan:
        yield chan


async def test_a_valid_token_exposes_its_caller_to_the_servicer(channel, signing_key):
    menu = orders_pb2_grpc.MenuServiceStub(channel)
    reply = await menu.GetMenu(orders_pb2.GetMenuRequest(restaurant_id=RESTAURANT),
                               metadata=bearer(make_token(signing_key)))
    assert reply.restaurant_id == RESTAURANT


async def test_a_missing_token_is_unauthenticated_token_invalid(channel):
    error = await call_error(orders_pb2_grpc.MenuServiceStub(channel).GetMenu(
        orders_pb2.GetMenuRequest(restaurant_id=RESTAURANT)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == "TOKEN_INVALID"


async def test_an_expired_token_is_unauthenticated_token_expired(channel, signing_key):
    token = make_token(signing_key, iat=int(time.time()) - 3600, exp=int(time.time()) - 60)
    error = await call_error(orders_pb2_grpc.MenuServiceStub(channel).GetMenu(
        orders_pb2.GetMenuRequest(restaurant_id=RESTAURANT), metadata=bearer(token)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == "TOKEN_EXPIRED"


async def test_a_revoked_session_is_unauthenticated_session_revoked(channel, signing_key, revocations):
    session = str(uuid.uuid4())
    revocations.add(SessionRevocation(session, "u-1", RESTAURANT, "LOGOUT"))
    error = await call_error(orders_pb2_grpc.MenuServiceStub(channel).GetMenu(
        orders_pb2.GetMenuRequest(restaurant_id=RESTAURANT),
        metadata=bearer(make_token(signing_key, sid=session))))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == "SESSION_REVOKED"


async def test_a_path_restaurant_other_than_the_tokens_is_tenant_mismatch_naming_both(channel, signing_key):
    error = await call_error(orders_pb2_grpc.MenuServiceStub(channel).GetMenu(
        orders_pb2.GetMenuRequest(restaurant_id=OTHER_RESTAURANT),
        metadata=bearer(make_token(signing_key))))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(error) == "TENANT_MISMATCH"
    assert RESTAURANT in error.details() and OTHER_RESTAURANT in error.details()


async def test_an_x_restaurant_id_header_other_than_the_tokens_is_tenant_mismatch(channel, signing_key):
    error = await call_error(orders_pb2_grpc.MenuServiceStub(channel).GetMenu(
        orders_pb2.GetMenuRequest(restaurant_id=RESTAURANT),
        metadata=bearer(make_token(signing_key), ("x-restaurant-id", OTHER_RESTAURANT))))
    assert error_reason(error) == "TENANT_MISMATCH"
    assert "X-Restaurant-Id" in error.details()


async def test_a_token_without_restaurant_is_no_restaurant_context_with_a_hint(channel, signing_key):
    token = make_token(signing_key, restaurant_id=None, role=None)
    error = await call_error(orders_pb2_grpc.MenuServiceStub(channel).GetMenu(
        orders_pb2.GetMenuRequest(), metadata=bearer(token)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(error) == "NO_RESTAURANT_CONTEXT"
    assert "switch-restaurant" in error.details()


async def test_a_role_outside_the_permission_table_is_role_forbidden_naming_permission_and_role(channel, signing_key):
    error = await call_error(orders_pb2_grpc.MenuServiceStub(channel).CreateMenuItem(
        orders_pb2.CreateMenuItemRequest(restaurant_id=RESTAURANT, item=orders_pb2.MenuItem(name="x")),
        metadata=bearer(make_token(signing_key, role="staff"))))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(error) == "ROLE_FORBIDDEN"
    assert "orders.CreateMenuItem" in error.details() and "staff" in error.details()


async def test_a_manager_passes_the_same_permission(channel, signing_key):
    item = await orders_pb2_grpc.MenuServiceStub(channel).CreateMenuItem(
        orders_pb2.CreateMenuItemRequest(restaurant_id=RESTAURANT, item=orders_pb2.MenuItem(name="x")),
        metadata=bearer(make_token(signing_key, role="manager")))
    assert item.id == "new"


async def test_an_unexpected_exception_is_internal_without_leaking_its_text(channel, signing_key):
    error = await call_error(orders_pb2_grpc.MenuServiceStub(channel).UpdateMenuItem(
        orders_pb2.UpdateMenuItemRequest(restaurant_id=RESTAURANT, item_id="boom"),
        metadata=bearer(make_token(signing_key, role="owner"))))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error_reason(error) == "INTERNAL"
    assert "a bug" not in error.details()


async def test_a_database_outage_is_a_retryable_unavailable(channel, signing_key):
    error = await call_error(orders_pb2_grpc.MenuServiceStub(channel).UpdateMenuItem(
        orders_pb2.UpdateMenuItemRequest(restaurant_id=RESTAURANT, item_id="db-down"),
        metadata=bearer(make_token(signing_key, role="owner"))))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(error) == "DATABASE_UNAVAILABLE"


async def test_an_internal_rpc_is_served_to_a_direct_caller(channel):
    stream = orders_pb2_grpc.OrderFeedServiceStub(channel).WatchRestaurantOrders(
        orders_pb2.WatchRestaurantOrdersRequest(restaurant_id=RESTAURANT))
    first = await stream.read()
    stream.cancel()
    assert first.heartbeat


async def test_an_internal_rpc_arriving_through_the_edge_is_refused(channel):
    stream = orders_pb2_grpc.OrderFeedServiceStub(channel).WatchRestaurantOrders(
        orders_pb2.WatchRestaurantOrdersRequest(restaurant_id=RESTAURANT),
        metadata=(("x-forwarded-for", "203.0.113.9"),))
    error = await call_error(stream.read())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(error) == "INTERNAL_ONLY"


async def test_a_request_that_cannot_be_decoded_is_invalid_argument_invalid_encoding(channel, signing_key):
    # A string field holding invalid UTF-8, as a transcoded query string can carry.
    bad_utf8 = b"\x0a\x02\xff\xfe"
    call = channel.unary_unary("/posmesh.orders.v1.MenuService/GetMenu",
                               request_serializer=lambda raw: raw,
                               response_deserializer=orders_pb2.Menu.FromString)
    error = await call_error(call(bad_utf8, metadata=bearer(make_token(signing_key))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(error) == "INVALID_ENCODING"


async def test_a_huge_restaurant_header_is_not_echoed_whole_in_the_error(channel, signing_key):
    huge = "r" * 20_000
    error = await call_error(orders_pb2_grpc.MenuServiceStub(channel).GetMenu(
        orders_pb2.GetMenuRequest(restaurant_id=RESTAURANT),
        metadata=bearer(make_token(signing_key), ("x-restaurant-id", huge))))
    assert error_reason(error) == "TENANT_MISMATCH"
    assert len(error.details()) < 400


@pytest.mark.parametrize("exc", [
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.InterfaceError("connection is closed"),
    asyncpg.exceptions.CrashShutdownError("terminating connection because of crash"),
    asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.exceptions.ProtocolError("got result for unknown protocol state"),
])
def test_a_lost_asyncpg_connection_is_a_retryable_database_unavailable(exc):
    error = infrastructure_error(exc)
    assert error is not None and error.code == grpc.StatusCode.UNAVAILABLE
    assert error.reason == "DATABASE_UNAVAILABLE"


def test_an_outage_wrapped_by_sqlalchemy_is_a_retryable_database_unavailable():
    """SQLAlchemy's asyncpg adapter wraps errors it does not know as disconnects in a plain
    DBAPIError; the asyncpg error under it still says what happened."""
    adapted = Exception("adapted by sqlalchemy")
    adapted.__cause__ = asyncpg.exceptions.CrashShutdownError("terminating connection")
    error = infrastructure_error(sqlalchemy.exc.DBAPIError("SELECT 1", {}, adapted))
    assert error is not None and error.reason == "DATABASE_UNAVAILABLE"


def test_an_asyncpg_query_error_is_not_mistaken_for_an_outage():
    assert infrastructure_error(asyncpg.exceptions.UniqueViolationError("duplicate")) is None


@pytest.mark.parametrize(("exc", "reason"), [
    (asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
     "DATABASE_TIMEOUT"),
    (asyncpg.exceptions.SerializationError("could not serialize access"), "DATABASE_CONFLICT"),
    (asyncpg.exceptions.DeadlockDetectedError("deadlock detected"), "DATABASE_CONFLICT"),
])
def test_a_statement_timeout_or_a_collision_is_retryable_with_its_own_reason(exc, reason):
    """One mapping (posmesh/common/database_errors.py) for raw asyncpg and under SQLAlchemy."""
    adapted = Exception("adapted by sqlalchemy")
    adapted.__cause__ = exc
    for raised in (exc, sqlalchemy.exc.DBAPIError("UPDATE ...", {}, adapted)):
        error = infrastructure_error(raised)
        assert error is not None and error.code == grpc.StatusCode.UNAVAILABLE
        assert error.reason == reason
