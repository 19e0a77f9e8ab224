"""Opaque page tokens for keyset pagination on (create_time, id).

A token names the last row a client has seen, not an offset, so rows inserted while a client
pages never shift the pages: no row is returned twice and no row that existed when paging began
is skipped. A token is bound to the query it came from (restaurant or user, filters): reusing it
with other filters is INVALID_PAGE_TOKEN rather than a silently wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from datetime import datetime

from posmesh.common.errors import InvalidArgument
from services.staff.models import PageRequest

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
_TOKEN_MAX = 512
_VERSION = 1


def _scope_digest(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


def encode(create_time: datetime, row_id: uuid.UUID, scope: str) -> str:
    payload = {"v": _VERSION, "t": create_time.isoformat(), "i": str(row_id), "s": _scope_digest(scope)}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad_token(message: str) -> InvalidArgument:
    return InvalidArgument("INVALID_PAGE_TOKEN", f"page_token: {message}", field="page_token")


def decode(token: str, scope: str) -> tuple[datetime, uuid.UUID] | None:
    if not token:
        return None
    if len(token) > _TOKEN_MAX:
        raise _bad_token("is not a token this API issued")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        if not isinstance(payload, dict) or payload.get("v") != _VERSION:
            raise ValueError("unknown token version")
        position = (datetime.fromisoformat(payload["t"]), uuid.UUID(payload["i"]))
        digest = payload["s"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise _bad_token("is not a token this API issued") from None
    if position[0].tzinfo is None:
        raise _bad_token("is not a token this API issued")
    if digest != _scope_digest(scope):
        raise _bad_token("belongs to a different query; keep the same filters while paging")
    return position


def page_size(value: int) -> int:
    if value < 0:
        raise InvalidArgument("INVALID_PAGE_SIZE", "page_size: must not be negative", field="page_size")
    # AIP-158: zero means the default, and sizes above the maximum are coerced down.
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def request(size: int, token: str, scope: str) -> PageRequest:
    return PageRequest(size=page_size(size), after=decode(token, scope))


def page_of(rows: list, size: int, key, scope: str) -> tuple[list, str]:
    """The first `size` of `rows` (a page plus one) and the next page's token ("" on the last).
    `key(row)` is the row's keyset position (create_time, id)."""
    if len(rows) <= size:
        return rows, ""
    items = rows[:size]
    create_time, row_id = key(items[-1])
    return items, encode(create_time, row_id, scope)
