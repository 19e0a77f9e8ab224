"""The local revocation set (posmesh.common.revocations): what every process checks a token's
session against, with no I/O. A fake clock; no servers."""

from __future__ import annotations

import pytest

from posmesh.common.revocations import (
    RevocationSet,
    SessionRevocation,
    parse_message,
    revocation_lifetime_seconds,
)
from posmesh.common.settings import Settings

LIFETIME = 970.0


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def revoked(sid: str, reason: str = "LOGOUT", at: float | None = None) -> SessionRevocation:
    return SessionRevocation(sid, "u-1", "r-1", reason, at)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def revocations(clock) -> RevocationSet:
    return RevocationSet(lifetime_seconds=LIFETIME, max_entries=1000, clock=clock)


def test_a_revoked_session_is_known_with_its_reason_and_others_are_not(revocations):
    revocations.add(revoked("s-1", "MEMBERSHIP_REVOKED"))

    assert revocations.is_revoked("s-1") and revocations.reason("s-1") == "MEMBERSHIP_REVOKED"
    assert not revocations.is_revoked("s-2") and revocations.reason("s-2") is None


def test_a_revocation_without_a_reason_is_recorded_as_revoked(revocations):
    revocations.add(revoked("s-1", ""))

    assert revocations.reason("s-1") == "REVOKED"


def test_a_revocation_is_forgotten_once_no_token_of_its_session_can_be_valid(revocations, clock):
    revocations.add(revoked("s-1"))

    clock.now += LIFETIME - 1
    assert revocations.is_revoked("s-1")
    clock.now += 1
    assert not revocations.is_revoked("s-1")
    assert revocations.purge() == 1 and len(revocations) == 0


def test_a_loaded_revocation_expires_a_lifetime_after_it_happened_not_after_it_was_loaded(
        revocations, clock):
    revocations.add(revoked("s-old", at=clock.now - 900))
    revocations.add(revoked("s-ancient", at=clock.now - LIFETIME - 1))

    assert revocations.is_revoked("s-old") and not revocations.is_revoked("s-ancient")
    assert len(revocations) == 1
    clock.now += LIFETIME - 900
    assert not revocations.is_revoked("s-old")


def test_a_revocation_stamped_in_the_future_counts_from_now(revocations, clock):
    revocations.add(revoked("s-1", at=clock.now + 3600))  # another machine's clock runs ahead

    clock.now += LIFETIME
    assert not revocations.is_revoked("s-1")


def test_only_new_revocations_are_reported_as_new_and_a_repeat_keeps_the_later_expiry(
        revocations, clock):
    assert revocations.add(revoked("s-1", at=clock.now - 500)) is True
    assert revocations.add(revoked("s-1")) is False  # the channel's copy, "just now"
    assert revocations.add(revoked("s-1", at=clock.now - 800)) is False

    clock.now += LIFETIME - 1
    assert revocations.is_revoked("s-1")


def test_an_expired_entry_is_new_again_when_revoked_again(revocations, clock):
    revocations.add(revoked("s-1"))
    clock.now += LIFETIME

    assert revocations.add(revoked("s-1", "REFRESH_REUSED")) is True
    assert revocations.reason("s-1") == "REFRESH_REUSED"


def test_purge_drops_every_expired_entry_and_keeps_the_live_ones(revocations, clock):
    for n in range(5):
        revocations.add(revoked(f"s-{n}"))
        clock.now += 100
    clock.now += LIFETIME - 250  # the first three are past their lifetime

    assert revocations.purge() == 3
    assert sorted(sid for sid in ("s-0", "s-1", "s-2", "s-3", "s-4")
                  if revocations.is_revoked(sid)) == ["s-3", "s-4"]
    assert len(revocations) == 2


def test_an_entry_loaded_out_of_order_is_never_trusted_after_its_expiry(revocations, clock):
    revocations.add(revoked("s-new"))
    revocations.add(revoked("s-late", at=clock.now - 900))  # expires before s-new
    clock.now += 100

    assert not revocations.is_revoked("s-late")
    assert revocations.is_revoked("s-new")


def test_beyond_its_bound_the_set_forgets_the_oldest_and_says_so_until_they_expire(clock, caplog):
    revocations = RevocationSet(lifetime_seconds=LIFETIME, max_entries=1000, clock=clock)
    for n in range(1001):
        revocations.add(revoked(f"s-{n}"))
        clock.now += 0.1

    assert len(revocations) <= 1000
    assert not revocations.is_revoked("s-0") and revocations.is_revoked("s-1000")
    assert revocations.forgotten >= 1 and revocations.forgetting()
    assert "REVOCATION_SET_MAX_ENTRIES" in caplog.text
    clock.now += LIFETIME
    assert not revocations.forgetting()


def test_the_set_lives_as_long_as_the_redis_marker_a_token_and_its_leeway_plus_a_minute():
    settings = Settings(ACCESS_TOKEN_TTL_SECONDS=900, JWT_LEEWAY_SECONDS=10)

    assert revocation_lifetime_seconds(settings) == 970


def test_a_channel_message_names_the_session_its_user_restaurant_and_reason():
    message = parse_message(b'{"sid": "s-1", "user_id": "u-1", "restaurant_id": "r-1", '
                            b'"reason": "LOGOUT"}')

    assert message == SessionRevocation("s-1", "u-1", "r-1", "LOGOUT", None)
    assert parse_message('{"user_id": "u-1", "reason": "x"}').session_id == ""


@pytest.mark.parametrize("payload", [b"garbage", b"[]", b'{"reason": "x"}', b'{"sid": 5}'])
def test_malformed_channel_messages_are_ignored(payload):
    assert parse_message(payload) is None


@pytest.mark.parametrize("token", ["garbage", "bm90LWEtdG9rZW4", "MjAyNi0wMS0wMXxub3QtYS11dWlk"])
def test_a_page_token_the_listing_did_not_give_is_invalid_argument(token):
    from posmesh.common.errors import InvalidArgument
    from services.auth.revocation_log import _position

    with pytest.raises(InvalidArgument) as error:
        _position(token)
    assert error.value.metadata == {"field": "page_token"}
