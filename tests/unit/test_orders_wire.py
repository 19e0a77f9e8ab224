"""Orders on the wire: documents round-trip, events carry their sequence, requests validate,
page tokens are opaque and bound to their query, the restaurant directory caches and degrades."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timezone

import grpc
import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from posmesh.common.errors import InvalidArgument, NotFound, Unavailable
from posmesh.orders.v1 import orders_pb2 as pb
from services.orders import domain, paging, wire
from services.orders.domain import Actor, OrderStatus, OrderType, RestaurantProfile
from services.orders.restaurants import RestaurantDirectory, valid_timezone

pytestmark = pytest.mark.unit

NOW = datetime(2025, 11, 21, 12, 30, 15, 123456, tzinfo=timezone.utc)
ACTOR = Actor(user_id="u-1", restaurant_id="11111111-1111-1111-1111-111111111111")


def sample_order() -> domain.Order:
    line = domain.OrderLine(id="l-1", menu_item_id="i-1", name="Tea", quantity=2,
                            unit_price_minor=250, tax_rate_ppm=88_750, notes="hot",
                            modifiers=("lemon",), line_total_minor=500, tax_minor=44)
    draft = domain.OrderDraft("req-1", OrderType.DINE_IN, "7", "window", ())
    return domain.new_order(order_id="o-1", actor=ACTOR, draft=draft, lines=(line,), currency="USD",
                            ticket_number=42, business_date=date(2025, 11, 21), now=NOW)


@pytest.mark.parametrize("token", ["", "next-page-" + "t" * 200])
@pytest.mark.parametrize("count", [0, 1, 3])
def test_a_page_built_from_stored_documents_is_what_protobuf_would_send(count, token) -> None:
    # One document with a note long enough that its length needs a two-byte varint.
    documents = []
    for n in range(count):
        message = pb.Order.FromString(wire.encode_order(sample_order()))
        message.notes = "n" * 150 * n
        documents.append(message.SerializeToString())
    expected = pb.ListActiveOrdersResponse(orders=[pb.Order.FromString(d) for d in documents],
                                           next_page_token=token)
    sent = wire.order_page_bytes(documents, token)
    assert sent == expected.SerializeToString()
    assert pb.ListOrdersResponse.FromString(sent).orders == expected.orders


def test_an_order_document_round_trips_exactly() -> None:
    order = sample_order()
    assert wire.decode_order(wire.encode_order(order)) == order
    message = pb.Order.FromString(wire.encode_order(order))
    assert (message.status, message.order_type) == (pb.OPEN, pb.DINE_IN)
    assert (message.total_minor, message.tax_minor, message.business_date) == (544, 44, "2025-11-21")
    assert message.lines[0].tax_rate_ppm == 88_750


def test_an_event_gets_its_sequence_as_id_and_its_commit_time() -> None:
    order = sample_order()
    payload = wire.event_payload(ACTOR.restaurant_id, domain.EventDraft(
        domain.ORDER_STATUS_CHANGED, order=order, previous_status=OrderStatus.OPEN))
    event = wire.finished_event(payload, 17, NOW)
    assert (event.id, event.sequence, event.type) == ("17", 17, "order.status_changed")
    assert event.previous_status == pb.OPEN
    assert event.restaurant_id == ACTOR.restaurant_id
    assert event.order.id == "o-1"
    assert wire.from_timestamp(event.create_time) == NOW


def test_a_menu_event_carries_the_change_and_the_item() -> None:
    item = domain.MenuItem(id="i-1", restaurant_id=ACTOR.restaurant_id, category_id=None, name="Tea",
                           description="", price_minor=250, currency="GBP", tax_rate_ppm=0,
                           available=False, version=3)
    event = wire.finished_event(wire.event_payload(ACTOR.restaurant_id, domain.EventDraft(
        domain.MENU_UPDATED, menu_change="item.updated", menu_item=item)), 1, NOW)
    assert (event.type, event.menu_change, event.menu_item.available) == (
        "menu.updated", "item.updated", False)
    assert not event.HasField("order")


def test_only_the_fields_sent_are_in_a_menu_item_patch() -> None:
    patch = wire.menu_item_patch(pb.MenuItem(price_minor=0, available=False))
    assert patch == domain.MenuItemPatch(price_minor=0, available=False)
    cleared = wire.menu_item_patch(pb.MenuItem(category_id=""))
    assert cleared.category_id == ""
    with pytest.raises(InvalidArgument) as caught:
        wire.menu_item_patch(pb.MenuItem(category_id="nope"))
    assert caught.value.reason == "INVALID_ID"


def test_unknown_and_missing_enum_numbers_are_invalid() -> None:
    with pytest.raises(InvalidArgument) as unknown:
        wire.status_input(99)
    with pytest.raises(InvalidArgument) as missing:
        wire.status_input(0)
    assert (unknown.value.reason, missing.value.reason) == ("INVALID_ENUM", "FIELD_REQUIRED")
    assert wire.status_input(pb.READY) is OrderStatus.READY


# -- page tokens --------------------------------------------------------------------------------

def test_a_page_token_round_trips_within_its_query_only() -> None:
    token = paging.encode(NOW, "22222222-2222-2222-2222-222222222222", "r|active")
    assert paging.decode(token, "r|active") == (NOW, "22222222-2222-2222-2222-222222222222")
    with pytest.raises(InvalidArgument) as other_query:
        paging.decode(token, "r|list||")
    assert other_query.value.reason == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize("garbage", ["x", "!!!!", "e30", "A" * 600])
def test_a_forged_page_token_is_invalid(garbage: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        paging.decode(garbage, "r|active")
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


def test_page_sizes_default_cap_and_refuse_negatives() -> None:
    assert paging.page_size(0, default=50, maximum=200) == 50
    assert paging.page_size(10_000, default=50, maximum=200) == 200
    with pytest.raises(InvalidArgument):
        paging.page_size(-1, default=50, maximum=200)


# -- the restaurant directory -------------------------------------------------------------------

class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="staff says no")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_profile_is_fetched_once_per_ttl_and_shared_by_concurrent_callers() -> None:
    calls = 0

    async def fetch(restaurant_id: str, token: str) -> RestaurantProfile:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return RestaurantProfile(restaurant_id, "GBP", "Europe/London")

    clock = Clock()
    directory = RestaurantDirectory(fetch, ttl_seconds=60, clock=clock)
    profiles = await asyncio.gather(*(directory.profile("r", "t") for _ in range(20)))
    assert {p.currency for p in profiles} == {"GBP"} and calls == 1
    clock.now = 59
    await directory.profile("r", "t")
    assert calls == 1
    clock.now = 61
    await directory.profile("r", "t")
    assert calls == 2


async def test_a_stale_profile_is_used_while_staff_is_down_and_none_means_unavailable() -> None:
    answer: object = RestaurantProfile("r", "EUR", "UTC")

    async def fetch(restaurant_id: str, token: str) -> RestaurantProfile:
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    clock = Clock()
    directory = RestaurantDirectory(fetch, ttl_seconds=1, clock=clock)
    await directory.profile("r", "t")
    answer = FakeRpcError(grpc.StatusCode.UNAVAILABLE)
    clock.now = 5
    assert (await directory.profile("r", "t")).currency == "EUR"
    with pytest.raises(Unavailable) as caught:
        await directory.profile("other", "t")
    assert caught.value.reason == "RESTAURANT_DIRECTORY_UNAVAILABLE"


async def test_a_restaurant_staff_does_not_know_is_not_found() -> None:
    async def fetch(restaurant_id: str, token: str) -> RestaurantProfile:
        raise FakeRpcError(grpc.StatusCode.NOT_FOUND)

    with pytest.raises(NotFound) as caught:
        await RestaurantDirectory(fetch, ttl_seconds=1).profile("r", "t")
    assert caught.value.reason == "RESTAURANT_NOT_FOUND"


def test_an_unknown_time_zone_falls_back_to_utc() -> None:
    assert valid_timezone("Europe/London") == "Europe/London"
    assert valid_timezone("Mars/Olympus") == "UTC"
    assert valid_timezone("") == "UTC"


# -- a user's watch stream ends with their session ----------------------------------------------

def caller(session: str = "s-1", expires_in: float = 600):
    import time

    from posmesh.common.context import Caller

    return Caller(user_id="u-1", session_id=session, restaurant_id=ACTOR.restaurant_id,
                  role="staff", token_id="t", expires_at=int(time.time() + expires_in))


async def test_a_user_stream_ends_when_the_token_expires_or_the_session_is_revoked() -> None:
    from posmesh.common.errors import Unauthenticated
    from services.orders import servicer as servicer_module

    from posmesh.common.revocations import RevocationSet, SessionRevocation

    revocations = RevocationSet(lifetime_seconds=910, max_entries=1000)
    revocations.add(SessionRevocation("s-revoked", "u-1", ACTOR.restaurant_id, "LOGOUT"))
    service = servicer_module.OrderServicer(None, None, revocations, 10)  # type: ignore[arg-type]
    await service._session_guard(caller())()  # noqa: SLF001  (valid: passes)
    with pytest.raises(Unauthenticated) as expired:
        await service._session_guard(caller(expires_in=-11))()  # noqa: SLF001
    assert expired.value.reason == "TOKEN_EXPIRED"
    # Within the leeway the token is still accepted.
    await service._session_guard(caller(expires_in=-5))()  # noqa: SLF001
    with pytest.raises(Unauthenticated) as revoked:
        await service._session_guard(caller("s-revoked"))()  # noqa: SLF001
    assert revoked.value.reason == "SESSION_REVOKED"


# -- bad input never becomes a 500 ----------------------------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
_lines = st.lists(st.tuples(st.one_of(_text, st.uuids().map(str)),
                            st.integers(-(2**31), 2**31 - 1),
                            st.one_of(_text, st.text(min_size=490, max_size=520)),
                            st.lists(_text, max_size=22)), max_size=4)


@pytest.mark.fuzz
@hypothesis_settings(max_examples=150, deadline=None)
@given(request_id=_text, order_type=st.integers(-3, 9), table=_text, notes=_text, lines=_lines)
def test_any_create_request_is_a_valid_draft_or_invalid_argument(request_id, order_type, table,
                                                                 notes, lines) -> None:
    request = pb.CreateOrderRequest(
        request_id=request_id, order_type=order_type, table_number=table, notes=notes,
        lines=[pb.OrderLineInput(menu_item_id=item, quantity=quantity, notes=line_notes,
                                 modifiers=modifiers)
               for item, quantity, line_notes, modifiers in lines])
    try:
        draft = wire.order_draft_input(request)
    except InvalidArgument as error:
        assert error.reason and error.metadata.get("field")
        return
    assert draft.request_id == request_id and draft.order_type.value in ("DINE_IN", "TAKEAWAY")
    assert all(1 <= line.quantity <= 999 for line in draft.lines)


def test_an_out_of_range_timestamp_is_invalid_argument() -> None:
    from google.protobuf import timestamp_pb2

    with pytest.raises(InvalidArgument) as caught:
        wire.timestamp_input(timestamp_pb2.Timestamp(seconds=2**62), "created_after")
    assert caught.value.reason == "VALUE_OUT_OF_RANGE"
