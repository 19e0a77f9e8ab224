"""A steady open-loop load for fault tests: requests leave on a fixed schedule whatever the
system does, and every reply (or failure, or timeout) is kept for assertions afterwards.

    async with SteadyLoad(edge, party.staff, dish, rate=20) as load:
        await stack.restart_postgres()
    assert not load.hung()
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import httpx

from tests.support.orders import Member, error_reason, line, order_body


@dataclass
class Reply:
    kind: str  # "create" or "list"
    due: float  # monotonic
    latency: float
    status: int | None  # None: no HTTP reply (timeout or transport error)
    reason: str = ""
    error: str = ""
    request_id: str = ""
    order_id: str = ""


@dataclass
class SteadyLoad:
    edge: httpx.AsyncClient
    member: Member
    dish: dict
    rate: float = 20.0
    create_share: float = 0.3
    timeout: float = 20.0
    replies: list[Reply] = field(default_factory=list)

    async def __aenter__(self) -> "SteadyLoad":
        self._stop = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await self._task

    async def _one(self, index: int, due: float) -> None:
        # An even spread: `create_share` of the requests create an order, the rest list.
        create = int((index + 1) * self.create_share) > int(index * self.create_share)
        request_id = str(uuid.uuid4()) if create else ""
        try:
            if create:
                response = await self.edge.post(
                    "/api/v1/orders", headers=self.member.headers, timeout=self.timeout,
                    json=order_body([line(self.dish)], request_id=request_id))
            else:
                response = await self.edge.get("/api/v1/orders/active", headers=self.member.headers,
                                               timeout=self.timeout)
        except (httpx.HTTPError, asyncio.TimeoutError) as exc:
            self.replies.append(Reply("create" if create else "list", due, time.monotonic() - due,
                                      None, error=type(exc).__name__, request_id=request_id))
            return
        order_id = response.json().get("id", "") if create and response.status_code == 200 else ""
        self.replies.append(Reply("create" if create else "list", due, time.monotonic() - due,
                                  response.status_code, error_reason(response),
                                  request_id=request_id, order_id=order_id))

    async def _run(self) -> None:
        pending: set[asyncio.Task] = set()
        start = time.monotonic()
        index = 0
        while not self._stop.is_set():
            due = start + index / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                    break
                except asyncio.TimeoutError:
                    pass
            task = asyncio.ensure_future(self._one(index, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
            index += 1
        if pending:
            await asyncio.wait(pending)

    # --- what the clients saw -------------------------------------------------------------------

    @property
    def creates(self) -> list[Reply]:
        return [r for r in self.replies if r.kind == "create"]

    def failures(self) -> list[Reply]:
        return [r for r in self.replies if r.status != 200]

    def hung(self, limit: float) -> list[Reply]:
        """Replies that took longer than `limit` seconds, or never came."""
        return [r for r in self.replies if r.status is None or r.latency > limit]

    def succeeded_after(self, moment: float) -> list[Reply]:
        return [r for r in self.replies if r.due >= moment and r.status == 200]

    def describe(self, replies: list[Reply]) -> str:
        return "; ".join(f"{r.kind} {r.status} {r.reason or r.error} after {r.latency:.2f}s"
                         for r in replies[:10]) + (f" (+{len(replies) - 10} more)" if len(replies) > 10 else "")
