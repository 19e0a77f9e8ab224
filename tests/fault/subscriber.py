"""A screen that behaves like the app under faults: it keeps a socket open through the edge, and
whenever the socket dies it reconnects and resumes with the last event id it processed. Every
event it receives is kept, so a test can check for gaps and duplicates afterwards.

    screen = await ResumingScreen.start(stack, party.staff)
    ...
    await screen.wait_for_orders(order_ids, timeout=20)
    screen.assert_no_gap_no_duplicate()
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.realtime import signed_in
from tests.support.ws_client import AppSocket

EVENT_TYPES = ("order.created", "order.updated", "order.status_changed", "menu.updated")


@dataclass
class ResumingScreen:
    stack: object
    member: object
    connection_type: str = "kitchen"
    events: list[dict] = field(default_factory=list)
    reconnects: int = 0
    resyncs: int = 0
    close_codes: list[int | None] = field(default_factory=list)
    connect_errors: list[str] = field(default_factory=list)

    @classmethod
    async def start(cls, stack, member, connection_type: str = "kitchen") -> "ResumingScreen":
        screen = cls(stack, member, connection_type)
        screen._sock = await signed_in(stack, member, connection_type)
        screen._task = asyncio.ensure_future(screen._run())
        return screen

    @property
    def last_event_id(self) -> str | None:
        return self.events[-1]["id"] if self.events else None

    async def _connect(self) -> AppSocket:
        """Reconnects until it works (the app retries with a short backoff)."""
        delay = 0.1
        while True:
            try:
                return await signed_in(self.stack, self.member, self.connection_type,
                                       last_event_id=self.last_event_id)
            except (OSError, ConnectionClosed, InvalidStatus, TimeoutError, AssertionError,
                    asyncio.TimeoutError) as exc:
                self.connect_errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _run(self) -> None:
        sock = self._sock
        while True:
            try:
                message = await sock.next(*EVENT_TYPES, "resync_required", timeout=3600)
                if message["type"] == "resync_required":
                    self.resyncs += 1
                else:
                    self.events.append(message)
            except (ConnectionClosed, OSError, asyncio.TimeoutError, TimeoutError):
                frame = sock.ws.protocol.close_rcvd
                self.close_codes.append(frame.code if frame is not None else None)
                with contextlib.suppress(Exception):
                    await sock.close()
                self.reconnects += 1
                sock = self._sock = await self._connect()

    def order_ids(self, kind: str = "order.created") -> list[str]:
        return [e["data"]["order"]["id"] for e in self.events if e["type"] == kind]

    async def wait_for_orders(self, order_ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wanted = set(order_ids)
        while not wanted <= set(self.order_ids()):
            if time.monotonic() > deadline:
                missing = wanted - set(self.order_ids())
                raise AssertionError(
                    f"{len(missing)} of {len(wanted)} order.created events never arrived "
                    f"(reconnects {self.reconnects}, closes {self.close_codes}, resyncs "
                    f"{self.resyncs}, connect errors {self.connect_errors[-3:]})")
            await asyncio.sleep(0.1)

    def assert_no_gap_no_duplicate(self) -> None:
        ids = [int(e["id"]) for e in self.events]
        assert self.resyncs == 0, "the screen was told to resync: events were lost"
        assert len(ids) == len(set(ids)), f"duplicate events: {sorted(i for i in ids if ids.count(i) > 1)}"
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"gap or disorder in {ids}"

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        with contextlib.suppress(Exception):
            await self._sock.close()
