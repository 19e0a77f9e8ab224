"""posmesh.orders.v1 on the wire: messages in, use cases called, messages out.

Authentication, tenant and role checks and the mapping of errors to google.rpc.Status happen in
the shared interceptor. The restaurant always comes from the verified token (context.current()).
"""

from __future__ import annotations

import logging
import time
from typing import AsyncIterator, Awaitable, Callable

from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from posmesh.common import context
from posmesh.common.errors import ERROR_DOMAIN, ApiError, Internal
from posmesh.common.interceptors import infrastructure_error
from posmesh.common.revocations import RevocationSet
from posmesh.common.tokens import session_revoked, token_expired
from posmesh.orders.v1 import orders_pb2 as pb
from posmesh.orders.v1 import orders_pb2_grpc
from services.orders import domain, wire
from services.orders.domain import Actor, OrderFilter
from services.orders.feed import Feed
from services.orders.menu import MenuBook
from services.orders.order_book import OrderBook
from services.orders.store import translate as translate_database_error

log = logging.getLogger(__name__)


def _actor() -> Actor:
    caller = context.current()
    return Actor(user_id=caller.user_id,
                 restaurant_id=domain.resource_id(caller.restaurant_id, "token restaurant_id"),
                 role=caller.role, device_id=caller.device_id, device_type=caller.device_type,
                 session_id=caller.session_id)


def _bearer() -> str:
    return context.request_info().bearer_token


class MenuServicer(orders_pb2_grpc.MenuServiceServicer):
    def __init__(self, menu: MenuBook) -> None:
        self._menu = menu

    async def GetMenu(self, request: pb.GetMenuRequest, ctx) -> pb.Menu:
        actor = _actor()
        view = await self._menu.get(actor, _bearer(), request.include_unavailable)
        return pb.Menu(restaurant_id=actor.restaurant_id, currency=view.currency,
                       categories=[wire.category_to_proto(c) for c in view.categories],
                       items=[wire.menu_item_to_proto(i) for i in view.items])

    async def CreateMenuCategory(self, request: pb.CreateMenuCategoryRequest, ctx) -> pb.MenuCategory:
        patch = wire.category_patch(request.category)
        if patch.name is None:
            raise domain.invalid("FIELD_REQUIRED", "category.name", "is required")
        created = await self._menu.create_category(_actor(), patch.name, patch.position or 0)
        return wire.category_to_proto(created)

    async def UpdateMenuCategory(self, request: pb.UpdateMenuCategoryRequest, ctx) -> pb.MenuCategory:
        category_id = domain.resource_id(request.category_id, "category_id")
        patch = wire.category_patch(request.category)
        version = domain.expected_version(request.category.version, "category.version")
        updated = await self._menu.update_category(_actor(), category_id, patch, version)
        return wire.category_to_proto(updated)

    async def DeleteMenuCategory(self, request: pb.DeleteMenuCategoryRequest,
                                 ctx) -> pb.DeleteMenuCategoryResponse:
        await self._menu.delete_category(_actor(),
                                         domain.resource_id(request.category_id, "category_id"))
        return pb.DeleteMenuCategoryResponse()

    async def CreateMenuItem(self, request: pb.CreateMenuItemRequest, ctx) -> pb.MenuItem:
        created = await self._menu.create_item(_actor(), _bearer(),
                                               wire.menu_item_patch(request.item))
        return wire.menu_item_to_proto(created)

    async def UpdateMenuItem(self, request: pb.UpdateMenuItemRequest, ctx) -> pb.MenuItem:
        item_id = domain.resource_id(request.item_id, "item_id")
        patch = wire.menu_item_patch(request.item)
        version = domain.expected_version(request.item.version, "item.version")
        updated = await self._menu.update_item(_actor(), _bearer(), item_id, patch, version)
        return wire.menu_item_to_proto(updated)

    async def DeleteMenuItem(self, request: pb.DeleteMenuItemRequest,
                             ctx) -> pb.DeleteMenuItemResponse:
        await self._menu.delete_item(_actor(), domain.resource_id(request.item_id, "item_id"))
        return pb.DeleteMenuItemResponse()


class OrderServicer(orders_pb2_grpc.OrderServiceServicer):
    def __init__(self, book: OrderBook, feed: Feed, revocations: RevocationSet,
                 leeway_seconds: int) -> None:
        self._book = book
        self._feed = feed
        self._revocations = revocations
        self._leeway = leeway_seconds

    async def CreateOrder(self, request: pb.CreateOrderRequest, ctx) -> pb.Order:
        order = await self._book.create(_actor(), _bearer(), wire.order_draft_input(request))
        return wire.order_to_proto(order)

    async def ListOrders(self, request: pb.ListOrdersRequest, ctx) -> bytes:
        filters = OrderFilter(
            statuses=frozenset(wire.status_input(value, f"statuses[{index}]")
                               for index, value in enumerate(request.statuses)),
            created_after=(wire.timestamp_input(request.created_after, "created_after")
                           if request.HasField("created_after") else None),
            created_before=(wire.timestamp_input(request.created_before, "created_before")
                            if request.HasField("created_before") else None))
        page = await self._book.list_orders(_actor(), filters, request.page_size,
                                            request.page_token)
        return wire.order_page_bytes(page.documents, page.next_page_token)

    # Reads answer with the stored documents as they are (a serialised response: the shared
    # interceptor sends bytes on unchanged).

    async def ListActiveOrders(self, request: pb.ListActiveOrdersRequest, ctx) -> bytes:
        page = await self._book.list_active(_actor(), request.page_size, request.page_token)
        return wire.order_page_bytes(page.documents, page.next_page_token)

    async def GetOrder(self, request: pb.GetOrderRequest, ctx) -> bytes:
        return await self._book.get(_actor(), domain.resource_id(request.order_id, "order_id"))

    async def UpdateOrderStatus(self, request: pb.UpdateOrderStatusRequest, ctx) -> pb.Order:
        order_id = domain.resource_id(request.order_id, "order_id")
        target = wire.status_input(request.status)
        version = domain.expected_version(request.version)
        return wire.order_to_proto(await self._book.update_status(_actor(), order_id, target,
                                                                  version, request.approval))

    async def AddOrderItems(self, request: pb.AddOrderItemsRequest, ctx) -> pb.Order:
        order_id = domain.resource_id(request.order_id, "order_id")
        domain.check_line_count(len(request.lines), minimum=1)
        inputs = tuple(wire.line_inputs(request.lines))
        version = domain.expected_version(request.version)
        return wire.order_to_proto(await self._book.add_items(_actor(), order_id, inputs, version))

    async def RemoveOrderItem(self, request: pb.RemoveOrderItemRequest, ctx) -> pb.Order:
        order_id = domain.resource_id(request.order_id, "order_id")
        line_id = domain.resource_id(request.line_id, "line_id")
        version = domain.expected_version(request.version)
        return wire.order_to_proto(await self._book.remove_item(_actor(), order_id, line_id,
                                                                version))

    async def WatchOrders(self, request: pb.WatchOrdersRequest,
                          ctx) -> AsyncIterator[pb.WatchOrdersResponse]:
        actor = _actor()
        guard = self._session_guard(context.current())
        async for message in with_final_error(
                self._feed.watch(actor.restaurant_id, request.after_event_id, guard)):
            yield message

    def _session_guard(self, caller: context.Caller) -> Callable[[], Awaitable[None]]:
        """Ends a user's stream when their token expires or their session is revoked (checked
        each time the stream wakes: the local revocation set costs a dict lookup)."""

        async def guard() -> None:
            if time.time() > caller.expires_at + self._leeway:
                raise token_expired("the access token expired during the stream")
            if self._revocations.is_revoked(caller.session_id):
                raise session_revoked()

        return guard


class OrderFeedServicer(orders_pb2_grpc.OrderFeedServiceServicer):
    """For services (realtime): no user session, the restaurant is named by the caller."""

    def __init__(self, feed: Feed) -> None:
        self._feed = feed

    async def WatchRestaurantOrders(self, request: pb.WatchRestaurantOrdersRequest,
                                    ctx) -> AsyncIterator[pb.WatchOrdersResponse]:
        restaurant_id = domain.resource_id(request.restaurant_id, "restaurant_id")
        async for message in with_final_error(
                self._feed.watch(restaurant_id, request.after_event_id, with_trace=True)):
            yield message


async def with_final_error(messages: AsyncIterator[pb.WatchOrdersResponse]
                           ) -> AsyncIterator[pb.WatchOrdersResponse]:
    """Once a stream has started, a failure is also sent as a last message carrying `error`:
    an HTTP/1.1 client behind the edge sees only a truncated body otherwise (the status travels
    in HTTP/2 trailers). The exception is re-raised so gRPC clients get the same status."""
    started = False
    try:
        async for message in messages:
            started = True
            yield message
    except Exception as exc:
        if not started:
            raise
        error = exc if isinstance(exc, ApiError) else (
            translate_database_error(exc) or infrastructure_error(exc))
        if not isinstance(error, ApiError):
            error = Internal("INTERNAL", "internal error; it has been logged")
        yield pb.WatchOrdersResponse(error=status_message(error))
        raise


def status_message(error: ApiError) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN,
                                            metadata=error.metadata))
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=[detail])
