"""Opaque page tokens for keyset pagination on (created_at, id).

A token names the last order a client saw, not an offset, so orders created or finished while a
client pages never shift a page. A token is bound to its query (restaurant, list, filters):
reusing it elsewhere is INVALID_PAGE_TOKEN, not a silently wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from datetime import datetime

from posmesh.common.errors import InvalidArgument

_VERSION = 1
_TOKEN_MAX = 512


def _digest(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


def encode(created_at: datetime, order_id: str, scope: str) -> str:
    payload = {"v": _VERSION, "t": created_at.isoformat(), "i": order_id, "s": _digest(scope)}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad(message: str) -> InvalidArgument:
    return InvalidArgument("INVALID_PAGE_TOKEN", f"page_token: {message}", field="page_token")


def decode(token: str, scope: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    if len(token) > _TOKEN_MAX:
        raise _bad("is not a token this API issued")
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(payload, dict) or payload.get("v") != _VERSION:
            raise ValueError("unknown version")
        created_at = datetime.fromisoformat(payload["t"])
        order_id = str(uuid.UUID(payload["i"]))
        digest = payload["s"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise _bad("is not a token this API issued") from None
    if created_at.tzinfo is None:
        raise _bad("is not a token this API issued")
    if digest != _digest(scope):
        raise _bad("belongs to a different query; keep the same filters while paging")
    return created_at, order_id


def page_size(value: int, *, default: int, maximum: int) -> int:
    if value < 0:
        raise InvalidArgument("INVALID_PAGE_SIZE", "page_size: must not be negative",
                              field="page_size")
    # AIP-158: zero means the default; larger sizes are coerced down to the maximum.
    return min(value or default, maximum)
