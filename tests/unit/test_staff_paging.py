"""Page tokens: opaque, bound to their query, and refused clearly when tampered with."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone

import pytest

from posmesh.common.errors import InvalidArgument
from services.staff import paging

WHEN = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=timezone.utc)
ROW = uuid.uuid4()


def test_a_token_round_trips_the_keyset_position_to_the_microsecond():
    token = paging.encode(WHEN, ROW, "employees:r1:None:active")
    assert paging.decode(token, "employees:r1:None:active") == (WHEN, ROW)


def test_an_empty_token_means_the_first_page():
    assert paging.decode("", "anything") is None


def test_a_token_from_another_query_is_refused():
    token = paging.encode(WHEN, ROW, "employees:r1:None:active")
    with pytest.raises(InvalidArgument) as caught:
        paging.decode(token, "employees:r1:staff:active")
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    assert "same filters" in caught.value.message


@pytest.mark.parametrize("token", [
    "not-a-token", "!!!!", "a" * 600,
    base64.urlsafe_b64encode(b'{"v": 1}').decode(),
    base64.urlsafe_b64encode(json.dumps({"v": 2, "t": WHEN.isoformat(), "i": str(ROW), "s": ""}).encode()).decode(),
    base64.urlsafe_b64encode(json.dumps({"v": 1, "t": "2025-03-01T12:00:00", "i": str(ROW), "s": ""}).encode()).decode(),
    base64.urlsafe_b64encode(json.dumps([1, 2]).encode()).decode(),
])
def test_malformed_tokens_are_invalid_page_token(token):
    with pytest.raises(InvalidArgument) as caught:
        paging.decode(token, "scope")
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


def test_page_size_defaults_clamps_and_refuses_negatives():
    assert paging.page_size(0) == paging.DEFAULT_PAGE_SIZE
    assert paging.page_size(7) == 7
    assert paging.page_size(10_000) == paging.MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument) as caught:
        paging.page_size(-1)
    assert caught.value.reason == "INVALID_PAGE_SIZE"
