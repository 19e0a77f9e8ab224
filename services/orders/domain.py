"""The rules of menus and orders: plain data, validation, pricing, the status transition table.

Pure functions over dataclasses; no I/O and no gRPC. The use cases that combine these rules with
the store live in menu.py and order_book.py. Every rejection is an ApiError with a stable reason.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
import uuid
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from enum import StrEnum
from typing import Iterable, Mapping

from posmesh.common.approvals import Approval, approval_invalid
from posmesh.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    version_conflict,
)
from posmesh.common.permissions import KITCHEN_SCREEN, MANAGERS
from services.orders import money


class OrderStatus(StrEnum):
    OPEN = "OPEN"
    SENT_TO_KITCHEN = "SENT_TO_KITCHEN"
    PREPARING = "PREPARING"
    READY = "READY"
    SERVED = "SERVED"
    PAID = "PAID"
    CANCELLED = "CANCELLED"


class OrderType(StrEnum):
    DINE_IN = "DINE_IN"
    TAKEAWAY = "TAKEAWAY"


S = OrderStatus
# The one transition table. Anything not listed is INVALID_TRANSITION.
TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    S.OPEN: frozenset({S.SENT_TO_KITCHEN, S.CANCELLED}),
    S.SENT_TO_KITCHEN: frozenset({S.PREPARING, S.CANCELLED}),
    S.PREPARING: frozenset({S.READY, S.CANCELLED}),
    S.READY: frozenset({S.SERVED, S.CANCELLED}),
    S.SERVED: frozenset({S.PAID, S.CANCELLED}),
    S.PAID: frozenset(),
    S.CANCELLED: frozenset(),
}
FINAL_STATUSES = frozenset(status for status, targets in TRANSITIONS.items() if not targets)
ACTIVE_STATUSES = frozenset(OrderStatus) - FINAL_STATUSES
EDITABLE_STATUSES = frozenset({S.OPEN})

# Event types on the restaurant's stream.
ORDER_CREATED = "order.created"
ORDER_UPDATED = "order.updated"
ORDER_STATUS_CHANGED = "order.status_changed"
MENU_UPDATED = "menu.updated"

# Input limits: a POS till sends far less; anything above is a bug or an attack.
REQUEST_ID_MAX = 128
TABLE_NUMBER_MAX = 32
ORDER_NOTES_MAX = 1000
LINE_NOTES_MAX = 500
MODIFIERS_MAX = 20
MODIFIER_MAX = 100
LINES_PER_REQUEST_MAX = 100
LINES_PER_ORDER_MAX = 200
ITEM_NAME_MAX = 200
ITEM_DESCRIPTION_MAX = 2000
CATEGORY_NAME_MAX = 100
CATEGORY_POSITION_MAX = 1_000_000


# ---------------------------------------------------------------------------------------------
# Plain data


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts, from the verified token: never from the request body."""

    user_id: str  # "" for a device's own token
    restaurant_id: str
    role: str = ""  # "" for a device's own token
    device_id: str = ""  # the paired device the change is made on, if any
    device_type: str = ""
    session_id: str = ""

    @property
    def is_manager(self) -> bool:
        return self.role in MANAGERS


@dataclass(frozen=True, slots=True)
class RestaurantProfile:
    """What orders needs to know about a restaurant (owned by the staff service)."""

    restaurant_id: str
    currency: str
    timezone: str


@dataclass(frozen=True, slots=True)
class MenuCategory:
    id: str
    restaurant_id: str
    name: str
    position: int
    version: int


@dataclass(frozen=True, slots=True)
class MenuItem:
    id: str
    restaurant_id: str
    category_id: str | None
    name: str
    description: str
    price_minor: int
    currency: str
    tax_rate_ppm: int
    available: bool
    version: int


@dataclass(frozen=True, slots=True)
class CategoryPatch:
    """Fields a client sent (None: unchanged)."""

    name: str | None = None
    position: int | None = None


@dataclass(frozen=True, slots=True)
class MenuItemPatch:
    """Fields a client sent (None: unchanged; category_id "" clears the category)."""

    category_id: str | None = None
    name: str | None = None
    description: str | None = None
    price_minor: int | None = None
    tax_rate_ppm: int | None = None
    available: bool | None = None


@dataclass(frozen=True, slots=True)
class LineInput:
    menu_item_id: str
    quantity: int
    notes: str = ""
    modifiers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OrderDraft:
    request_id: str
    order_type: OrderType
    table_number: str
    notes: str
    lines: tuple[LineInput, ...]


@dataclass(frozen=True, slots=True)
class OrderLine:
    id: str
    menu_item_id: str
    name: str
    quantity: int
    unit_price_minor: int
    tax_rate_ppm: int
    notes: str
    modifiers: tuple[str, ...]
    line_total_minor: int
    tax_minor: int


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    restaurant_id: str
    ticket_number: int
    business_date: date
    status: OrderStatus
    order_type: OrderType
    table_number: str
    lines: tuple[OrderLine, ...]
    notes: str
    subtotal_minor: int
    tax_minor: int
    total_minor: int
    currency: str
    version: int
    request_id: str
    created_by: str
    create_time: datetime
    update_time: datetime

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


@dataclass(frozen=True, slots=True)
class EventDraft:
    """A change to write to the outbox with the change itself."""

    type: str
    order: Order | None = None
    previous_status: OrderStatus | None = None
    menu_change: str = ""
    menu_item: MenuItem | None = None
    menu_category: MenuCategory | None = None
    actor_user_id: str = ""
    device_id: str = ""
    approved_by: str = ""  # the manager whose PIN approved the change (manager override)


@dataclass(frozen=True, slots=True)
class OrderFilter:
    statuses: frozenset[OrderStatus] = frozenset()
    created_after: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of encoded orders (the store keeps each order as its wire document)."""

    documents: list[bytes] = field(default_factory=list)
    next_page_token: str = ""


# ---------------------------------------------------------------------------------------------
# Validation


def invalid(reason: str, field_name: str, message: str, **metadata: object) -> InvalidArgument:
    return InvalidArgument(reason, f"{field_name}: {message}", field=field_name, **metadata)


def text(value: str | None, field_name: str, *, max_length: int, required: bool = False,
         multiline: bool = False) -> str:
    """Trimmed text; '' when blank and optional."""
    cleaned = (value or "").strip()
    if not cleaned:
        if required:
            raise invalid("FIELD_REQUIRED", field_name, "is required")
        return ""
    if len(cleaned) > max_length:
        raise invalid("FIELD_TOO_LONG", field_name,
                      f"is {len(cleaned)} characters long; at most {max_length} are allowed",
                      max_length=max_length)
    allowed = {"\n", "\t"} if multiline else set()
    if any(char not in allowed and unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")
           for char in cleaned):
        raise invalid("INVALID_TEXT", field_name, "must not contain control characters"
                      + ("" if multiline else " or line breaks"))
    return cleaned


def resource_id(value: str | None, field_name: str) -> str:
    """A canonical lower-case UUID string."""
    raw = (value or "").strip()
    if not raw:
        raise invalid("FIELD_REQUIRED", field_name, "is required")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise invalid("INVALID_ID", field_name, f"{raw[:40]!r} is not a valid id") from None


def in_range(value: int, field_name: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise invalid("VALUE_OUT_OF_RANGE", field_name, f"must be between {low} and {high}, got {value}",
                      min=low, max=high)
    return value


def request_id(value: str | None) -> str:
    raw = value or ""
    if not raw.strip():
        raise invalid("FIELD_REQUIRED", "request_id",
                      "is required: a client-generated idempotency key (a UUID) per new order")
    if len(raw) > REQUEST_ID_MAX:
        raise invalid("FIELD_TOO_LONG", "request_id", f"is longer than {REQUEST_ID_MAX} characters",
                      max_length=REQUEST_ID_MAX)
    if not all(0x21 <= ord(char) <= 0x7E for char in raw):
        raise invalid("INVALID_TEXT", "request_id", "must be printable ASCII without spaces")
    return raw


def order_type(value: str | None) -> OrderType:
    if not value:
        raise invalid("FIELD_REQUIRED", "order_type", "is required: DINE_IN or TAKEAWAY")
    try:
        return OrderType(value or "")
    except ValueError:
        raise invalid("INVALID_ENUM", "order_type",
                      f"{str(value)[:40]!r} is not an order type; use DINE_IN or TAKEAWAY") from None


def order_status(value: str | None, field_name: str = "status") -> OrderStatus:
    try:
        return OrderStatus(value or "")
    except ValueError:
        raise invalid("INVALID_ENUM", field_name,
                      f"{str(value)[:40]!r} is not an order status; use one of "
                      f"{', '.join(OrderStatus)}") from None


def table_for(kind: OrderType, table_number: str | None) -> str:
    table = text(table_number, "table_number", max_length=TABLE_NUMBER_MAX)
    if kind is OrderType.DINE_IN and not table:
        raise invalid("TABLE_REQUIRED", "table_number", "is required for a DINE_IN order")
    if kind is OrderType.TAKEAWAY and table:
        raise invalid("TABLE_NOT_ALLOWED", "table_number", "must be empty for a TAKEAWAY order")
    return table


def line_input(index: int, menu_item_id: str | None, quantity: int, notes: str | None,
               modifiers: Iterable[str]) -> LineInput:
    where = f"lines[{index}]"
    item_id = resource_id(menu_item_id, f"{where}.menu_item_id")
    in_range(quantity, f"{where}.quantity", 1, money.MAX_QUANTITY)
    modifier_list = list(modifiers)
    if len(modifier_list) > MODIFIERS_MAX:
        raise invalid("TOO_MANY_MODIFIERS", f"{where}.modifiers",
                      f"has {len(modifier_list)} entries; at most {MODIFIERS_MAX} are allowed",
                      max_count=MODIFIERS_MAX)
    cleaned = tuple(text(modifier, f"{where}.modifiers[{position}]", max_length=MODIFIER_MAX,
                         required=True) for position, modifier in enumerate(modifier_list))
    return LineInput(item_id, quantity,
                     text(notes, f"{where}.notes", max_length=LINE_NOTES_MAX, multiline=True), cleaned)


def check_line_count(count: int, *, minimum: int = 0, field_name: str = "lines") -> None:
    if count < minimum:
        raise invalid("FIELD_REQUIRED", field_name, f"needs at least {minimum} line")
    if count > LINES_PER_REQUEST_MAX:
        raise invalid("TOO_MANY_LINES", field_name,
                      f"has {count} lines; at most {LINES_PER_REQUEST_MAX} per request",
                      max_count=LINES_PER_REQUEST_MAX)


def order_draft(request_key: str | None, kind: str | None, table_number: str | None,
                notes: str | None, lines: list[LineInput]) -> OrderDraft:
    key = request_id(request_key)
    resolved = order_type(kind)
    check_line_count(len(lines))
    return OrderDraft(key, resolved, table_for(resolved, table_number),
                      text(notes, "notes", max_length=ORDER_NOTES_MAX, multiline=True), tuple(lines))


def expected_version(value: int, field_name: str = "version") -> int:
    if value <= 0:
        raise invalid("FIELD_REQUIRED", field_name,
                      "is required: send the version of the resource your change is based on")
    return value


def menu_item_name(value: str | None) -> str:
    return text(value, "item.name", max_length=ITEM_NAME_MAX, required=True)


def menu_item_description(value: str | None) -> str:
    return text(value, "item.description", max_length=ITEM_DESCRIPTION_MAX, multiline=True)


def price(value: int, field_name: str = "item.price_minor") -> int:
    return in_range(value, field_name, 0, money.MAX_UNIT_PRICE_MINOR)


def tax_rate(value: int, field_name: str = "item.tax_rate_ppm") -> int:
    return in_range(value, field_name, 0, money.MAX_TAX_RATE_PPM)


def category_name(value: str | None) -> str:
    return text(value, "category.name", max_length=CATEGORY_NAME_MAX, required=True)


def category_position(value: int) -> int:
    return in_range(value, "category.position", -CATEGORY_POSITION_MAX, CATEGORY_POSITION_MAX)


# ---------------------------------------------------------------------------------------------
# Idempotency


def fingerprint(draft: OrderDraft) -> bytes:
    """A digest of everything a retry must repeat exactly (the normalised body)."""
    canonical = {
        "order_type": draft.order_type.value,
        "table_number": draft.table_number,
        "notes": draft.notes,
        "lines": [[line.menu_item_id, line.quantity, line.notes, list(line.modifiers)]
                  for line in draft.lines],
    }
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":"), ensure_ascii=False)
                          .encode()).digest()


def idempotency_mismatch(key: str, order_id: str) -> FailedPrecondition:
    # FAILED_PRECONDITION (409): repeating this call can never succeed.
    return FailedPrecondition(
        "IDEMPOTENCY_MISMATCH",
        f"request_id {key!r} was already used for order {order_id} with a different body; "
        "use a new request_id for a new order, or repeat the original body exactly",
        request_id=key, order_id=order_id)


# ---------------------------------------------------------------------------------------------
# Pricing


def price_lines(inputs: Iterable[LineInput], menu: Mapping[str, MenuItem], currency: str,
                new_id=lambda: str(uuid.uuid4())) -> tuple[OrderLine, ...]:
    """Snapshot name, price and tax rate of each line's menu item, now.

    Unknown, deleted, unavailable, or differently priced (another currency) items are
    ITEM_UNAVAILABLE (409): the till's menu is stale and must reload.
    """
    priced = []
    for index, line in enumerate(inputs):
        item = menu.get(line.menu_item_id)
        if item is None:
            raise _unavailable(index, line.menu_item_id, "is not on the menu", "unknown")
        if not item.available:
            raise _unavailable(index, line.menu_item_id, f"({item.name}) is not available now",
                               "unavailable")
        if item.currency != currency:
            raise _unavailable(index, line.menu_item_id,
                               f"({item.name}) is priced in {item.currency} but the restaurant "
                               f"now uses {currency}; a manager must update its price",
                               "currency_mismatch")
        total = money.line_total_minor(item.price_minor, line.quantity)
        priced.append(OrderLine(
            id=new_id(), menu_item_id=item.id, name=item.name, quantity=line.quantity,
            unit_price_minor=item.price_minor, tax_rate_ppm=item.tax_rate_ppm, notes=line.notes,
            modifiers=line.modifiers, line_total_minor=total,
            tax_minor=money.tax_minor(total, item.tax_rate_ppm)))
    return tuple(priced)


def _unavailable(index: int, item_id: str, message: str, why: str) -> FailedPrecondition:
    return FailedPrecondition("ITEM_UNAVAILABLE", f"lines[{index}]: menu item {item_id} {message}",
                              menu_item_id=item_id, line_index=index, cause=why)


@dataclass(frozen=True, slots=True)
class Totals:
    subtotal_minor: int
    tax_minor: int
    total_minor: int


def totals(lines: Iterable[OrderLine]) -> Totals:
    """Subtotal and tax are sums of the lines; tax was rounded per line (see money.py)."""
    subtotal = tax = 0
    for line in lines:
        subtotal += line.line_total_minor
        tax += line.tax_minor
    return Totals(subtotal, tax, subtotal + tax)


# ---------------------------------------------------------------------------------------------
# Orders: creation and changes (each returns the order after the change)


def new_order(*, order_id: str, actor: Actor, draft: OrderDraft, lines: tuple[OrderLine, ...],
              currency: str, ticket_number: int, business_date: date, now: datetime) -> Order:
    sums = totals(lines)
    return Order(
        id=order_id, restaurant_id=actor.restaurant_id, ticket_number=ticket_number,
        business_date=business_date, status=OrderStatus.OPEN, order_type=draft.order_type,
        table_number=draft.table_number, lines=lines, notes=draft.notes,
        subtotal_minor=sums.subtotal_minor, tax_minor=sums.tax_minor, total_minor=sums.total_minor,
        currency=currency, version=1, request_id=draft.request_id, created_by=actor.user_id,
        create_time=now, update_time=now)


def check_version(order: Order, expected: int) -> None:
    if order.version != expected:
        raise version_conflict(f"order {order.id}", expected, order.version)


def check_transition(current: OrderStatus, target: OrderStatus) -> None:
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none: it is final"
        raise FailedPrecondition(
            "INVALID_TRANSITION",
            f"an order cannot go from {current} to {target}; from {current} it can go to {allowed}",
            **{"from": current.value, "to": target.value})


def with_status(order: Order, target: OrderStatus, now: datetime) -> Order:
    check_transition(order.status, target)
    if target is OrderStatus.SENT_TO_KITCHEN and not order.lines:
        raise FailedPrecondition("ORDER_EMPTY",
                                 f"order {order.id} has no lines; add items before sending it to "
                                 "the kitchen", order_id=order.id)
    return replace(order, status=target, version=order.version + 1, update_time=now)


# What a kitchen screen's own token may move an order to: the kitchen's part of the flow.
KITCHEN_TARGETS = frozenset({OrderStatus.PREPARING, OrderStatus.READY})


def check_device_may_move(actor: Actor, target: OrderStatus) -> None:
    """A device's own token (no person) moves orders only as its type allows."""
    if actor.user_id:
        return
    if actor.device_type != KITCHEN_SCREEN or target not in KITCHEN_TARGETS:
        raise PermissionDenied(
            "DEVICE_FORBIDDEN", f"a {actor.device_type or 'device'} moves orders to "
            f"{' or '.join(sorted(KITCHEN_TARGETS)) if actor.device_type == KITCHEN_SCREEN else 'no status'}"
            f", not {target}", device_type=actor.device_type)


def needs_manager(order: Order, target: OrderStatus, actor: Actor) -> bool:
    """Cancelling an order the kitchen has (anything after OPEN) is for owners and managers, or
    someone a manager approved it for on the till (CANCEL_SENT_ORDER)."""
    return (target is OrderStatus.CANCELLED and order.status is not OrderStatus.OPEN
            and not actor.is_manager)


def check_approval(approval: Approval, *, action: str, order_id: str, actor: Actor) -> None:
    """The approval must be for this action on this order, by this session on this device."""
    if (approval.action != action or approval.resource_id != order_id
            or approval.restaurant_id != actor.restaurant_id
            or approval.device_id != actor.device_id or approval.sid != actor.session_id):
        raise approval_invalid("the approval is for another action, order, device or session")


def check_editable(order: Order) -> None:
    if order.status not in EDITABLE_STATUSES:
        raise FailedPrecondition(
            "ORDER_NOT_EDITABLE",
            f"order {order.id} is {order.status}: lines can be added or removed only while it is "
            "OPEN", order_id=order.id, status=order.status.value)


def with_lines_added(order: Order, lines: tuple[OrderLine, ...], now: datetime) -> Order:
    check_editable(order)
    combined = order.lines + lines
    if len(combined) > LINES_PER_ORDER_MAX:
        raise invalid("TOO_MANY_LINES", "lines",
                      f"the order would have {len(combined)} lines; at most "
                      f"{LINES_PER_ORDER_MAX} are allowed", max_count=LINES_PER_ORDER_MAX)
    return _with_lines(order, combined, now)


def with_line_removed(order: Order, line_id: str, now: datetime) -> Order:
    check_editable(order)
    remaining = tuple(line for line in order.lines if line.id != line_id)
    if len(remaining) == len(order.lines):
        raise NotFound("LINE_NOT_FOUND", f"order {order.id} has no line {line_id}",
                       order_id=order.id, line_id=line_id)
    return _with_lines(order, remaining, now)


def _with_lines(order: Order, lines: tuple[OrderLine, ...], now: datetime) -> Order:
    sums = totals(lines)
    return replace(order, lines=lines, subtotal_minor=sums.subtotal_minor,
                   tax_minor=sums.tax_minor, total_minor=sums.total_minor,
                   version=order.version + 1, update_time=now)


def order_not_found(order_id: str) -> NotFound:
    # The same answer whether the order does not exist or belongs to another restaurant.
    return NotFound("ORDER_NOT_FOUND", f"order {order_id} was not found in this restaurant",
                    order_id=order_id)


# ---------------------------------------------------------------------------------------------
# Menu changes


def new_menu_item(*, item_id: str, restaurant_id: str, currency: str, patch: MenuItemPatch) -> MenuItem:
    if patch.name is None:
        raise invalid("FIELD_REQUIRED", "item.name", "is required")
    if patch.price_minor is None:
        raise invalid("FIELD_REQUIRED", "item.price_minor", "is required (minor units, e.g. 450 for 4.50)")
    return MenuItem(
        id=item_id, restaurant_id=restaurant_id, category_id=patch.category_id or None,
        name=patch.name, description=patch.description or "", price_minor=patch.price_minor,
        currency=currency, tax_rate_ppm=patch.tax_rate_ppm or 0,
        available=True if patch.available is None else patch.available, version=1)


def patched_menu_item(item: MenuItem, patch: MenuItemPatch, currency: str) -> MenuItem:
    def pick(new, old):
        return old if new is None else new

    category = item.category_id if patch.category_id is None else (patch.category_id or None)
    return replace(
        item, category_id=category, name=pick(patch.name, item.name),
        description=pick(patch.description, item.description),
        price_minor=pick(patch.price_minor, item.price_minor),
        # The price is always in the restaurant's current currency.
        currency=currency, tax_rate_ppm=pick(patch.tax_rate_ppm, item.tax_rate_ppm),
        available=pick(patch.available, item.available), version=item.version + 1)


def patched_category(category: MenuCategory, patch: CategoryPatch) -> MenuCategory:
    return replace(category,
                   name=category.name if patch.name is None else patch.name,
                   position=category.position if patch.position is None else patch.position,
                   version=category.version + 1)


def menu_item_not_found(item_id: str) -> NotFound:
    return NotFound("MENU_ITEM_NOT_FOUND", f"menu item {item_id} was not found in this restaurant",
                    menu_item_id=item_id)


def menu_category_not_found(category_id: str) -> NotFound:
    return NotFound("MENU_CATEGORY_NOT_FOUND",
                    f"menu category {category_id} was not found in this restaurant",
                    category_id=category_id)
