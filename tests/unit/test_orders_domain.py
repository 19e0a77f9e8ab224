"""Order and menu rules: validation, pricing, totals, the transition table, editing, versions."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import date, datetime, timezone

import pytest

from posmesh.common.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from services.orders import domain, money
from services.orders.domain import (
    Actor,
    LineInput,
    MenuItem,
    OrderStatus,
    OrderType,
    TRANSITIONS,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 11, 21, 12, 0, tzinfo=timezone.utc)
ACTOR = Actor(user_id="u-1", restaurant_id="11111111-1111-1111-1111-111111111111")
ITEM_ID = "22222222-2222-2222-2222-222222222222"


def menu_item(item_id: str = ITEM_ID, *, price: int = 450, rate: int = 200_000,
              available: bool = True, currency: str = "GBP", name: str = "Flat white") -> MenuItem:
    return MenuItem(id=item_id, restaurant_id=ACTOR.restaurant_id, category_id=None, name=name,
                    description="", price_minor=price, currency=currency, tax_rate_ppm=rate,
                    available=available, version=1)


def ids():
    counter = itertools.count(1)
    return lambda: f"line-{next(counter)}"


def draft(lines=(), *, kind=OrderType.TAKEAWAY, table="") -> domain.OrderDraft:
    return domain.OrderDraft(request_id="req-1", order_type=kind, table_number=table, notes="",
                             lines=tuple(lines))


def order_with(lines, status=OrderStatus.OPEN) -> domain.Order:
    order = domain.new_order(order_id="o-1", actor=ACTOR, draft=draft(), lines=tuple(lines),
                             currency="GBP", ticket_number=1, business_date=date(2025, 11, 21),
                             now=NOW)
    return replace(order, status=status)


# -- the transition table -----------------------------------------------------------------------

LEGAL = [(current, target) for current, targets in TRANSITIONS.items() for target in targets]
ILLEGAL = [(current, target) for current in OrderStatus for target in OrderStatus
           if target not in TRANSITIONS[current]]


def test_the_table_is_the_documented_lifecycle() -> None:
    path = [OrderStatus.OPEN, OrderStatus.SENT_TO_KITCHEN, OrderStatus.PREPARING,
            OrderStatus.READY, OrderStatus.SERVED, OrderStatus.PAID]
    for current, following in zip(path, path[1:]):
        assert following in TRANSITIONS[current]
    for status in path[:-1]:
        assert OrderStatus.CANCELLED in TRANSITIONS[status]
    assert TRANSITIONS[OrderStatus.PAID] == frozenset()
    assert TRANSITIONS[OrderStatus.CANCELLED] == frozenset()
    assert len(LEGAL) == 10


@pytest.mark.parametrize(("current", "target"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_legal_transition_moves_the_status_and_the_version(current, target) -> None:
    order = order_with([_line()], status=current)
    moved = domain.with_status(order, target, NOW)
    assert moved.status is target
    assert moved.version == order.version + 1


@pytest.mark.parametrize(("current", "target"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_every_other_transition_is_invalid_and_names_from_and_to(current, target) -> None:
    order = order_with([_line()], status=current)
    with pytest.raises(FailedPrecondition) as caught:
        domain.with_status(order, target, NOW)
    assert caught.value.reason == "INVALID_TRANSITION"
    assert caught.value.metadata == {"from": current.value, "to": target.value}
    assert current.value in caught.value.message and target.value in caught.value.message


def test_an_empty_order_cannot_go_to_the_kitchen() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        domain.with_status(order_with([]), OrderStatus.SENT_TO_KITCHEN, NOW)
    assert caught.value.reason == "ORDER_EMPTY"


def test_an_empty_order_can_be_cancelled() -> None:
    assert domain.with_status(order_with([]), OrderStatus.CANCELLED, NOW).status is OrderStatus.CANCELLED


# -- versions and editing -----------------------------------------------------------------------

def test_a_stale_version_is_a_version_conflict() -> None:
    with pytest.raises(Aborted) as caught:
        domain.check_version(order_with([]), 7)
    assert caught.value.reason == "VERSION_CONFLICT"
    assert caught.value.metadata == {"expected_version": "7", "current_version": "1"}


@pytest.mark.parametrize("status", [s for s in OrderStatus if s is not OrderStatus.OPEN])
def test_lines_can_change_only_while_open(status) -> None:
    order = order_with([_line()], status=status)
    with pytest.raises(FailedPrecondition) as added:
        domain.with_lines_added(order, (_line("line-9"),), NOW)
    with pytest.raises(FailedPrecondition) as removed:
        domain.with_line_removed(order, "line-1", NOW)
    assert added.value.reason == removed.value.reason == "ORDER_NOT_EDITABLE"


def test_adding_and_removing_lines_recomputes_totals_and_bumps_the_version() -> None:
    order = order_with([_line("a", price=400, rate=88_750)])
    grown = domain.with_lines_added(order, (_line("b", price=20, rate=125_000),), NOW)
    assert (grown.subtotal_minor, grown.tax_minor, grown.total_minor) == (420, 36 + 3, 459)
    assert grown.version == 2
    shrunk = domain.with_line_removed(grown, "a", NOW)
    assert (shrunk.subtotal_minor, shrunk.tax_minor, shrunk.total_minor) == (20, 3, 23)
    assert [line.id for line in shrunk.lines] == ["b"]
    assert shrunk.version == 3


def test_removing_an_unknown_line_is_not_found() -> None:
    with pytest.raises(NotFound) as caught:
        domain.with_line_removed(order_with([_line()]), "nope", NOW)
    assert caught.value.reason == "LINE_NOT_FOUND"


def test_an_order_holds_at_most_200_lines() -> None:
    order = order_with([_line(f"l{i}") for i in range(150)])
    with pytest.raises(InvalidArgument) as caught:
        domain.with_lines_added(order, tuple(_line(f"m{i}") for i in range(51)), NOW)
    assert caught.value.reason == "TOO_MANY_LINES"


def _line(line_id: str = "line-1", *, price: int = 450, rate: int = 200_000, quantity: int = 1):
    total = price * quantity
    return domain.OrderLine(id=line_id, menu_item_id=ITEM_ID, name="x", quantity=quantity,
                            unit_price_minor=price, tax_rate_ppm=rate, notes="", modifiers=(),
                            line_total_minor=total, tax_minor=money.tax_minor(total, rate))


# -- pricing ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("price", "quantity", "rate", "subtotal", "tax"),
    [
        (400, 1, 88_750, 400, 36),  # 8.875 %: 35.5 -> 36
        (133, 3, 88_750, 399, 35),  # 35.41125 -> 35
        (20, 1, 125_000, 20, 3),  # 12.5 %: 2.5 -> 3
        (5000, 1, 100, 5000, 1),  # 0.01 %: 0.5 -> 1
        (4999, 1, 100, 4999, 0),  # 0.4999 -> 0
        (150, 1, 333_300, 150, 50),  # 33.33 %: 49.995 -> 50
        (999, 999, 333_300, 998_001, 332_634),  # 332633.7333 -> 332634
    ],
)
def test_lines_are_priced_from_the_menu_with_tax_rounded_per_line(price, quantity, rate,
                                                                   subtotal, tax) -> None:
    menu = {ITEM_ID: menu_item(price=price, rate=rate)}
    (line,) = domain.price_lines([LineInput(ITEM_ID, quantity)], menu, "GBP", ids())
    assert (line.unit_price_minor, line.tax_rate_ppm, line.quantity) == (price, rate, quantity)
    assert (line.line_total_minor, line.tax_minor) == (subtotal, tax)
    sums = domain.totals([line])
    assert (sums.subtotal_minor, sums.tax_minor, sums.total_minor) == (subtotal, tax, subtotal + tax)


def test_order_tax_is_the_sum_of_rounded_line_taxes_not_the_rounded_sum() -> None:
    # Three 4p lines at 12.5 %: each 0.5p rounds up to 1p, so 3p (rounding the order would give 2p).
    menu = {ITEM_ID: menu_item(price=4, rate=125_000)}
    lines = domain.price_lines([LineInput(ITEM_ID, 1)] * 3, menu, "GBP", ids())
    sums = domain.totals(lines)
    assert (sums.subtotal_minor, sums.tax_minor, sums.total_minor) == (12, 3, 15)


def test_the_price_is_a_snapshot_of_the_item_at_order_time() -> None:
    menu = {ITEM_ID: menu_item(price=450, name="Flat white")}
    (line,) = domain.price_lines([LineInput(ITEM_ID, 2, "oat milk", ("extra shot",))], menu, "GBP", ids())
    assert (line.name, line.notes, line.modifiers) == ("Flat white", "oat milk", ("extra shot",))
    menu[ITEM_ID] = menu_item(price=999)
    assert line.unit_price_minor == 450


@pytest.mark.parametrize(
    ("menu", "cause"),
    [({}, "unknown"), ({ITEM_ID: menu_item(available=False)}, "unavailable"),
     ({ITEM_ID: menu_item(currency="EUR")}, "currency_mismatch")],
)
def test_unknown_unavailable_or_foreign_currency_items_are_item_unavailable(menu, cause) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        domain.price_lines([LineInput(ITEM_ID, 1)], menu, "GBP", ids())
    assert caught.value.reason == "ITEM_UNAVAILABLE"
    assert caught.value.metadata["menu_item_id"] == ITEM_ID
    assert caught.value.metadata["cause"] == cause


# -- validation ---------------------------------------------------------------------------------

def _reason(call) -> str:
    with pytest.raises(InvalidArgument) as caught:
        call()
    return caught.value.reason


@pytest.mark.parametrize(("quantity", "ok"), [(1, True), (999, True), (0, False), (-3, False),
                                              (1000, False)])
def test_quantity_must_be_1_to_999(quantity, ok) -> None:
    call = lambda: domain.line_input(0, ITEM_ID, quantity, "", [])  # noqa: E731
    if ok:
        assert call().quantity == quantity
    else:
        assert _reason(call) == "VALUE_OUT_OF_RANGE"


def test_line_inputs_are_bounded() -> None:
    assert _reason(lambda: domain.line_input(0, ITEM_ID, 1, "x" * 501, [])) == "FIELD_TOO_LONG"
    assert _reason(lambda: domain.line_input(0, ITEM_ID, 1, "", ["m"] * 21)) == "TOO_MANY_MODIFIERS"
    assert _reason(lambda: domain.line_input(0, ITEM_ID, 1, "", ["m" * 101])) == "FIELD_TOO_LONG"
    assert _reason(lambda: domain.line_input(0, ITEM_ID, 1, "", [" "])) == "FIELD_REQUIRED"
    assert _reason(lambda: domain.line_input(0, "not-a-uuid", 1, "", [])) == "INVALID_ID"
    assert _reason(lambda: domain.line_input(0, "", 1, "", [])) == "FIELD_REQUIRED"
    assert _reason(lambda: domain.line_input(0, ITEM_ID, 1, "a\x00b", [])) == "INVALID_TEXT"
    # Notes may span lines; modifiers may not.
    assert domain.line_input(0, ITEM_ID, 1, "no onions\nno salt", []).notes == "no onions\nno salt"
    assert _reason(lambda: domain.line_input(0, ITEM_ID, 1, "", ["a\nb"])) == "INVALID_TEXT"


def test_errors_name_the_field_with_its_index() -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.line_input(3, ITEM_ID, 0, "", [])
    assert caught.value.metadata["field"] == "lines[3].quantity"


@pytest.mark.parametrize(("request_id", "reason"), [("", "FIELD_REQUIRED"), ("   ", "FIELD_REQUIRED"),
                                                    ("x" * 129, "FIELD_TOO_LONG"),
                                                    ("has space", "INVALID_TEXT"),
                                                    ("ünïcode", "INVALID_TEXT")])
def test_request_id_is_required_and_bounded(request_id, reason) -> None:
    assert _reason(lambda: domain.order_draft(request_id, "TAKEAWAY", "", "", [])) == reason


def test_order_type_decides_the_table_rule() -> None:
    assert domain.order_draft("r", "DINE_IN", " 12 ", "", []).table_number == "12"
    assert _reason(lambda: domain.order_draft("r", "DINE_IN", "", "", [])) == "TABLE_REQUIRED"
    assert _reason(lambda: domain.order_draft("r", "TAKEAWAY", "4", "", [])) == "TABLE_NOT_ALLOWED"
    assert _reason(lambda: domain.order_draft("r", None, "", "", [])) == "FIELD_REQUIRED"
    assert _reason(lambda: domain.order_draft("r", "DRIVE_THRU", "", "", [])) == "INVALID_ENUM"
    assert _reason(lambda: domain.order_draft("r", "DINE_IN", "t" * 33, "", [])) == "FIELD_TOO_LONG"


def test_huge_notes_and_too_many_lines_are_refused() -> None:
    assert _reason(lambda: domain.order_draft("r", "TAKEAWAY", "", "n" * 1001, [])) == "FIELD_TOO_LONG"
    lines = [LineInput(ITEM_ID, 1)] * 101
    assert _reason(lambda: domain.order_draft("r", "TAKEAWAY", "", "", lines)) == "TOO_MANY_LINES"


def test_version_zero_means_missing() -> None:
    assert _reason(lambda: domain.expected_version(0)) == "FIELD_REQUIRED"
    assert domain.expected_version(3) == 3


def test_menu_values_are_range_checked() -> None:
    assert _reason(lambda: domain.price(-1)) == "VALUE_OUT_OF_RANGE"
    assert _reason(lambda: domain.price(1_000_000_001)) == "VALUE_OUT_OF_RANGE"
    assert _reason(lambda: domain.tax_rate(1_000_001)) == "VALUE_OUT_OF_RANGE"
    assert _reason(lambda: domain.tax_rate(-5)) == "VALUE_OUT_OF_RANGE"
    assert _reason(lambda: domain.menu_item_name("")) == "FIELD_REQUIRED"
    assert _reason(lambda: domain.category_name("c" * 101)) == "FIELD_TOO_LONG"


# -- idempotency --------------------------------------------------------------------------------

def test_the_same_body_has_the_same_fingerprint_and_any_change_alters_it() -> None:
    base = domain.order_draft("r", "DINE_IN", "4", "", [LineInput(ITEM_ID, 2, "", ("a",))])
    same = domain.order_draft("r", "DINE_IN", " 4 ", "", [LineInput(ITEM_ID, 2, "", ("a",))])
    assert domain.fingerprint(base) == domain.fingerprint(same)
    variants = [
        domain.order_draft("r", "DINE_IN", "5", "", [LineInput(ITEM_ID, 2, "", ("a",))]),
        domain.order_draft("r", "DINE_IN", "4", "", [LineInput(ITEM_ID, 3, "", ("a",))]),
        domain.order_draft("r", "DINE_IN", "4", "", [LineInput(ITEM_ID, 2, "x", ("a",))]),
        domain.order_draft("r", "DINE_IN", "4", "", [LineInput(ITEM_ID, 2, "", ("b",))]),
        domain.order_draft("r", "DINE_IN", "4", "hi", [LineInput(ITEM_ID, 2, "", ("a",))]),
        domain.order_draft("r", "TAKEAWAY", "", "", [LineInput(ITEM_ID, 2, "", ("a",))]),
    ]
    assert len({domain.fingerprint(v) for v in variants} | {domain.fingerprint(base)}) == 7


def test_idempotency_mismatch_is_a_409_reason_naming_the_order() -> None:
    error = domain.idempotency_mismatch("req-1", "o-9")
    assert isinstance(error, FailedPrecondition)
    assert error.reason == "IDEMPOTENCY_MISMATCH"
    assert error.metadata == {"request_id": "req-1", "order_id": "o-9"}


# -- menu changes -------------------------------------------------------------------------------

def test_a_patch_changes_only_what_was_sent_and_reprices_in_the_restaurant_currency() -> None:
    item = menu_item(price=450, currency="GBP")
    changed = domain.patched_menu_item(item, domain.MenuItemPatch(price_minor=500), "EUR")
    assert (changed.price_minor, changed.currency, changed.name, changed.version) == (
        500, "EUR", item.name, 2)
    uncategorised = domain.patched_menu_item(replace(item, category_id="c-1"),
                                             domain.MenuItemPatch(category_id=""), "GBP")
    assert uncategorised.category_id is None


def test_a_new_item_needs_a_name_and_a_price_and_is_available_by_default() -> None:
    assert _reason(lambda: domain.new_menu_item(item_id="i", restaurant_id="r", currency="GBP",
                                                patch=domain.MenuItemPatch(price_minor=1))) == "FIELD_REQUIRED"
    assert _reason(lambda: domain.new_menu_item(item_id="i", restaurant_id="r", currency="GBP",
                                                patch=domain.MenuItemPatch(name="x"))) == "FIELD_REQUIRED"
    item = domain.new_menu_item(item_id="i", restaurant_id="r", currency="GBP",
                                patch=domain.MenuItemPatch(name="x", price_minor=0))
    assert (item.available, item.tax_rate_ppm, item.version) == (True, 0, 1)
