"""The restaurant's currency and time zone, which the staff service owns.

Orders asks the staff service (StaffService.GetRestaurant, with the caller's own token, so staff
applies its membership rule) and caches the answer per restaurant for
ORDERS_RESTAURANT_CACHE_SECONDS. Menu items snapshot the currency when written; an order takes
the currency and the business day (time zone) from here when it is created.

When staff cannot be reached, a cached answer is used even if expired (a currency or time zone
change is rare; a till that cannot take orders is worse). With nothing cached the call fails with
UNAVAILABLE, reason RESTAURANT_DIRECTORY_UNAVAILABLE, and the client retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zoneinfo
from dataclasses import dataclass
from typing import Awaitable, Callable

import grpc

from posmesh.common.errors import NotFound, Unavailable
from services.orders.domain import RestaurantProfile

log = logging.getLogger(__name__)

# (restaurant_id, bearer token) -> profile; raises grpc.aio.AioRpcError as staff answered.
Fetch = Callable[[str, str], Awaitable[RestaurantProfile]]


@dataclass(slots=True)
class _Entry:
    profile: RestaurantProfile
    fetched_at: float


class RestaurantDirectory:
    def __init__(self, fetch: Fetch, *, ttl_seconds: float, clock=time.monotonic) -> None:
        self._fetch = fetch
        self._ttl = ttl_seconds
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        # One fetch per restaurant at a time; concurrent callers share its answer.
        self._inflight: dict[str, asyncio.Future[RestaurantProfile]] = {}

    async def profile(self, restaurant_id: str, bearer_token: str) -> RestaurantProfile:
        entry = self._cache.get(restaurant_id)
        if entry is not None and self._clock() - entry.fetched_at < self._ttl:
            return entry.profile
        pending = self._inflight.get(restaurant_id)
        if pending is None:
            pending = asyncio.ensure_future(self._refresh(restaurant_id, bearer_token, entry))
            self._inflight[restaurant_id] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(restaurant_id, None))
        return await asyncio.shield(pending)

    def forget(self, restaurant_id: str) -> None:
        self._cache.pop(restaurant_id, None)

    async def _refresh(self, restaurant_id: str, bearer_token: str,
                       stale: _Entry | None) -> RestaurantProfile:
        try:
            profile = await self._fetch(restaurant_id, bearer_token)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                self._cache.pop(restaurant_id, None)
                raise NotFound("RESTAURANT_NOT_FOUND",
                               f"restaurant {restaurant_id} is not known to the staff service; "
                               "create it first (POST /api/v1/restaurants)",
                               restaurant_id=restaurant_id) from None
            return self._fallback(restaurant_id, stale, f"{exc.code().name}: {exc.details()}")
        except (asyncio.TimeoutError, OSError) as exc:
            return self._fallback(restaurant_id, stale, repr(exc))
        self._cache[restaurant_id] = _Entry(profile, self._clock())
        return profile

    def _fallback(self, restaurant_id: str, stale: _Entry | None, why: str) -> RestaurantProfile:
        if stale is not None:
            log.warning("staff service unavailable; using the cached restaurant profile",
                        extra={"restaurant_id": restaurant_id, "error": why})
            return stale.profile
        log.warning("staff service unavailable and no cached restaurant profile",
                    extra={"restaurant_id": restaurant_id, "error": why})
        raise Unavailable("RESTAURANT_DIRECTORY_UNAVAILABLE",
                          "the restaurant's currency and time zone cannot be read from the staff "
                          "service right now; retry shortly", retryable="true")


def valid_timezone(name: str) -> str:
    """The name when it is an IANA zone this machine knows; UTC otherwise."""
    try:
        zoneinfo.ZoneInfo(name)
        return name
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        if name:
            log.warning("unknown restaurant time zone; ticket days use UTC", extra={"timezone": name})
        return "UTC"


def staff_fetcher(channel: grpc.aio.Channel, timeout_seconds: float = 3.0) -> Fetch:
    """Fetch through StaffService.GetRestaurant with the caller's token."""
    from posmesh.staff.v1 import staff_pb2, staff_pb2_grpc

    stub = staff_pb2_grpc.StaffServiceStub(channel)

    async def fetch(restaurant_id: str, bearer_token: str) -> RestaurantProfile:
        reply = await stub.GetRestaurant(
            staff_pb2.GetRestaurantRequest(restaurant_id=restaurant_id),
            metadata=(("authorization", f"Bearer {bearer_token}"),),
            timeout=timeout_seconds)
        return RestaurantProfile(restaurant_id=restaurant_id, currency=reply.currency,
                                 timezone=valid_timezone(reply.timezone))

    return fetch
