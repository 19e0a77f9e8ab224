"""Domain dataclasses <-> posmesh.orders.v1 messages.

An order is stored as its serialised `Order` message (the store's `document` column) and events
as serialised `OrderEvent` messages, so the hot read paths (get, list active, the event stream)
hand bytes to gRPC without building messages field by field in Python.
"""

from __future__ import annotations

from datetime import date, datetime, timezone

from google.protobuf import timestamp_pb2

from posmesh.orders.v1 import orders_pb2 as pb
from services.orders import domain
from services.orders.domain import (
    EventDraft,
    MenuCategory,
    MenuItem,
    Order,
    OrderLine,
    OrderStatus,
    OrderType,
)


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def from_timestamp(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=timezone.utc)


def status_to_proto(status: OrderStatus | None) -> int:
    return pb.OrderStatus.Value(status.value) if status is not None else pb.ORDER_STATUS_UNSPECIFIED


def status_name(value: int) -> str:
    """The enum name of a status number; the number itself for values this build does not know."""
    try:
        return pb.OrderStatus.Name(value)
    except ValueError:
        return str(value)


def order_type_name(value: int) -> str:
    try:
        return pb.OrderType.Name(value)
    except ValueError:
        return str(value)


def line_to_proto(line: OrderLine) -> pb.OrderLine:
    return pb.OrderLine(
        id=line.id, menu_item_id=line.menu_item_id, name=line.name, quantity=line.quantity,
        unit_price_minor=line.unit_price_minor, tax_rate_ppm=line.tax_rate_ppm, notes=line.notes,
        modifiers=list(line.modifiers), line_total_minor=line.line_total_minor,
        tax_minor=line.tax_minor)


def order_to_proto(order: Order) -> pb.Order:
    return pb.Order(
        id=order.id, restaurant_id=order.restaurant_id, ticket_number=order.ticket_number,
        status=status_to_proto(order.status), order_type=pb.OrderType.Value(order.order_type.value),
        table_number=order.table_number, lines=[line_to_proto(line) for line in order.lines],
        notes=order.notes, subtotal_minor=order.subtotal_minor, tax_minor=order.tax_minor,
        total_minor=order.total_minor, currency=order.currency, version=order.version,
        request_id=order.request_id, created_by=order.created_by,
        create_time=timestamp(order.create_time), update_time=timestamp(order.update_time),
        business_date=order.business_date.isoformat())


def order_from_proto(message: pb.Order) -> Order:
    return Order(
        id=message.id, restaurant_id=message.restaurant_id, ticket_number=message.ticket_number,
        business_date=date.fromisoformat(message.business_date),
        status=OrderStatus(pb.OrderStatus.Name(message.status)),
        order_type=OrderType(pb.OrderType.Name(message.order_type)),
        table_number=message.table_number,
        lines=tuple(OrderLine(
            id=line.id, menu_item_id=line.menu_item_id, name=line.name, quantity=line.quantity,
            unit_price_minor=line.unit_price_minor, tax_rate_ppm=line.tax_rate_ppm,
            notes=line.notes, modifiers=tuple(line.modifiers),
            line_total_minor=line.line_total_minor, tax_minor=line.tax_minor)
            for line in message.lines),
        notes=message.notes, subtotal_minor=message.subtotal_minor, tax_minor=message.tax_minor,
        total_minor=message.total_minor, currency=message.currency, version=message.version,
        request_id=message.request_id, created_by=message.created_by,
        create_time=from_timestamp(message.create_time),
        update_time=from_timestamp(message.update_time))


def encode_order(order: Order) -> bytes:
    return order_to_proto(order).SerializeToString(deterministic=True)


def decode_order(document: bytes) -> Order:
    return order_from_proto(pb.Order.FromString(document))


def menu_item_to_proto(item: MenuItem) -> pb.MenuItem:
    return pb.MenuItem(
        id=item.id, category_id=item.category_id or "", name=item.name,
        description=item.description, price_minor=item.price_minor, currency=item.currency,
        tax_rate_ppm=item.tax_rate_ppm, available=item.available, version=item.version)


def category_to_proto(category: MenuCategory) -> pb.MenuCategory:
    return pb.MenuCategory(id=category.id, name=category.name, position=category.position,
                           version=category.version)


def event_payload(restaurant_id: str, draft: EventDraft) -> bytes:
    """The event as stored in the outbox; id, sequence and time are added when it is read."""
    event = pb.OrderEvent(restaurant_id=restaurant_id, type=draft.type,
                          menu_change=draft.menu_change)
    if draft.order is not None:
        event.order.CopyFrom(order_to_proto(draft.order))
    if draft.previous_status is not None:
        event.previous_status = status_to_proto(draft.previous_status)
    if draft.menu_item is not None:
        event.menu_item.CopyFrom(menu_item_to_proto(draft.menu_item))
    if draft.menu_category is not None:
        event.menu_category.CopyFrom(category_to_proto(draft.menu_category))
    return event.SerializeToString(deterministic=True)


def finished_event(payload: bytes, sequence: int, created_at: datetime) -> pb.OrderEvent:
    """The outbox payload with its sequence number (also its id) and commit time."""
    event = pb.OrderEvent.FromString(payload)
    event.sequence = sequence
    event.id = str(sequence)
    event.create_time.FromDatetime(created_at)
    return event


# -- requests -> domain inputs (validated) -------------------------------------------------------


def line_inputs(lines) -> list[domain.LineInput]:
    return [domain.line_input(index, line.menu_item_id, line.quantity, line.notes, line.modifiers)
            for index, line in enumerate(lines)]


def order_draft_input(request: pb.CreateOrderRequest) -> domain.OrderDraft:
    kind = order_type_name(request.order_type) if request.order_type else None
    return domain.order_draft(request.request_id, kind, request.table_number, request.notes,
                              line_inputs(request.lines))


def timestamp_input(stamp: timestamp_pb2.Timestamp, field_name: str) -> datetime:
    try:
        return from_timestamp(stamp)
    except (ValueError, OverflowError, OSError):
        raise domain.invalid("VALUE_OUT_OF_RANGE", field_name,
                             "is not a time between years 1 and 9999") from None


def status_input(value: int, field_name: str = "status") -> OrderStatus:
    if value == pb.ORDER_STATUS_UNSPECIFIED:
        raise domain.invalid("FIELD_REQUIRED", field_name, "is required")
    return domain.order_status(status_name(value), field_name)


def menu_item_patch(item: pb.MenuItem) -> domain.MenuItemPatch:
    """The fields a client set on a MenuItem, validated (absent fields stay None)."""
    present = item.HasField
    category_id = None
    if present("category_id"):
        # "" (or blank) takes the item out of its category.
        raw = item.category_id.strip()
        category_id = domain.resource_id(raw, "item.category_id") if raw else ""
    return domain.MenuItemPatch(
        category_id=category_id,
        name=domain.menu_item_name(item.name) if present("name") else None,
        description=domain.menu_item_description(item.description) if present("description") else None,
        price_minor=domain.price(item.price_minor) if present("price_minor") else None,
        tax_rate_ppm=domain.tax_rate(item.tax_rate_ppm) if present("tax_rate_ppm") else None,
        available=item.available if present("available") else None,
    )


def category_patch(category: pb.MenuCategory) -> domain.CategoryPatch:
    present = category.HasField
    return domain.CategoryPatch(
        name=domain.category_name(category.name) if present("name") else None,
        position=domain.category_position(category.position) if present("position") else None,
    )


# -- responses from stored documents (serialised once, when the order was written) ---------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_ORDERS_FIELD = b"\x0a"  # field 1 (orders), length-delimited
_NEXT_PAGE_TOKEN_FIELD = b"\x12"  # field 2 (next_page_token), length-delimited


def order_page_bytes(documents: list[bytes], next_page_token: str) -> bytes:
    """A ListOrdersResponse / ListActiveOrdersResponse (both: `repeated Order orders = 1;
    string next_page_token = 2;`) in wire form, from the orders' stored documents: the bytes
    protobuf itself would produce, without parsing each document into a message first."""
    parts = []
    for document in documents:
        parts += (_ORDERS_FIELD, _varint(len(document)), document)
    if next_page_token:
        token = next_page_token.encode()
        parts += (_NEXT_PAGE_TOKEN_FIELD, _varint(len(token)), token)
    return b"".join(parts)
