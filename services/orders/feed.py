"""The event feed behind WatchOrders and WatchRestaurantOrders.

A watch first replays from PostgreSQL the events after the client's `after_event_id`, then
follows the restaurant's Redis stream. Sequence numbers are contiguous per restaurant (see
store.Transaction.append_event), so a watcher knows exactly which event comes next: it skips
what it already sent (the replay/live seam, duplicates) and reads any gap from PostgreSQL
(a trimmed or restarted stream, a subscriber that fell behind). Every event goes out once, in
order. While Redis cannot be read, watchers poll PostgreSQL (woken early by NOTIFY); when an
event has been committed for a while but is not on the stream (a stalled relay), it is read from
PostgreSQL too.

One reader task per process follows the streams of every restaurant watched in this process with
a single multi-stream XREAD BLOCK, and hands entries to that restaurant's subscriptions.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

import redis.exceptions

from posmesh.common.errors import InvalidArgument, Unavailable
from posmesh.common.settings import Settings
from posmesh.orders.v1 import orders_pb2 as pb
from services.orders import wire
from services.orders.relay import EventSignals, entry_id, stream_key
from services.orders.store import OrdersStore

log = logging.getLogger(__name__)

REPLAY_PAGE = 500
SUBSCRIPTION_QUEUE = 1000
READ_COUNT = 1000
_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


@dataclass(eq=False)
class Subscription:
    """A watcher's view of one restaurant's live stream."""

    restaurant_id: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(SUBSCRIPTION_QUEUE))
    overflowed: bool = False  # entries were dropped: catch up from PostgreSQL
    poked: bool = False  # NOTIFY said something committed

    def push(self, sequence: int, event: bytes, traceparent: str = "") -> None:
        try:
            self.queue.put_nowait((sequence, event, traceparent))
        except asyncio.QueueFull:
            self.overflowed = True
        self.wake.set()

    def drain(self) -> list[tuple[int, bytes, str]]:
        entries = []
        while not self.queue.empty():
            entries.append(self.queue.get_nowait())
        return entries


class LiveTail:
    """The process's one reader of the restaurants' Redis streams."""

    def __init__(self, redis, signals: EventSignals, *, block_seconds: float) -> None:
        self._redis = redis
        self._block_ms = max(1, int(block_seconds * 1000))
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._positions: dict[str, str] = {}  # restaurant -> last stream id read
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.healthy = True  # False while Redis cannot be read
        signals.add(self._poke)

    def subscribe(self, restaurant_id: str, from_sequence: int) -> Subscription:
        """Live entries after `from_sequence` (a watcher replays up to it itself)."""
        subscription = Subscription(restaurant_id)
        subscribers = self._subscriptions.setdefault(restaurant_id, set())
        if not subscribers:
            self._positions[restaurant_id] = entry_id(from_sequence)
            self._changed.set()
        subscribers.add(subscription)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="orders-live-tail")
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscriptions.get(subscription.restaurant_id)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if not subscribers:
            # The stream drops out of the next XREAD; no need to interrupt the current one.
            del self._subscriptions[subscription.restaurant_id]
            self._positions.pop(subscription.restaurant_id, None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake_all(self) -> None:
        for subscribers in self._subscriptions.values():
            for subscription in subscribers:
                subscription.wake.set()

    def _poke(self, restaurant_id: str) -> None:
        targets = (self._subscriptions.values() if restaurant_id == "*"
                   else [self._subscriptions.get(restaurant_id, ())])
        for subscribers in targets:
            for subscription in subscribers:
                subscription.poked = True
                subscription.wake.set()

    def _set_health(self, healthy: bool) -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        if healthy:
            log.info("order event streams readable again")
        else:
            log.warning("order event streams unreadable; watchers poll PostgreSQL")
        for subscribers in self._subscriptions.values():
            for subscription in subscribers:
                subscription.wake.set()

    async def _run(self) -> None:
        backoff = 0.1
        while self._subscriptions:
            self._changed.clear()
            streams = {stream_key(restaurant): position
                       for restaurant, position in self._positions.items()}
            read = asyncio.ensure_future(
                self._redis.xread(streams, block=self._block_ms, count=READ_COUNT))
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                done, _ = await asyncio.wait({read, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
            if read not in done:
                # Another restaurant to follow: restart the blocking read with it included
                # (redis-py drops the connection of a cancelled command, so none is corrupted).
                read.cancel()
                await asyncio.gather(read, return_exceptions=True)
                continue
            try:
                reply = read.result()
            except asyncio.CancelledError:
                raise
            except _REDIS_ERRORS as exc:
                self._set_health(False)
                log.debug("XREAD failed: %r", exc)
                await asyncio.sleep(backoff * (1 + random.random() / 2))
                backoff = min(backoff * 2, 2.0)
                continue
            except redis.exceptions.ResponseError as exc:
                self._set_health(False)
                log.warning("XREAD refused: %r", exc)
                await asyncio.sleep(1.0)
                continue
            backoff = 0.1
            self._set_health(True)
            self._dispatch(reply or [])

    def _dispatch(self, reply) -> None:
        # RESP2 answers [[key, entries], ...]; RESP3 {key: [entries]}.
        pairs = reply.items() if isinstance(reply, dict) else reply
        for key, entries in pairs:
            restaurant_id = (key.decode() if isinstance(key, bytes) else key).rsplit(":", 1)[-1]
            subscribers = self._subscriptions.get(restaurant_id)
            if not subscribers:
                continue
            for stream_id, fields in entries:
                self._positions[restaurant_id] = (
                    stream_id.decode() if isinstance(stream_id, bytes) else stream_id)
                try:
                    sequence = int(fields[b"seq"])
                    event = fields[b"event"]
                    traceparent = fields.get(b"tp", b"").decode("ascii")
                except (KeyError, ValueError):
                    log.error("malformed entry on %s: %r", key, stream_id)
                    continue
                for subscription in subscribers:
                    subscription.push(sequence, event, traceparent)


class ResyncRequired(Exception):
    def __init__(self, head: int, why: str) -> None:
        super().__init__(why)
        self.head = head


def parse_event_id(value: str) -> int | None:
    raw = (value or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidArgument("INVALID_EVENT_ID",
                              f"after_event_id: {raw[:40]!r} is not an event id (a decimal number "
                              "from a previous event's id)", field="after_event_id")
    return int(raw)


# A check run before each message: raises an ApiError to end the stream (e.g. expired token).
StreamGuard = Callable[[], Awaitable[None]]


class Feed:
    def __init__(self, settings: Settings, store: OrdersStore, tail: LiveTail) -> None:
        self.store = store
        self.tail = tail
        self.replay_limit = settings.order_event_replay_limit
        self.heartbeat_seconds = settings.order_watch_heartbeat_seconds
        self.poll_seconds = settings.order_watch_poll_seconds
        self.grace_seconds = settings.order_watch_relay_grace_seconds
        self.closing = False

    def close(self) -> None:
        """Ends every watch with SERVICE_SHUTTING_DOWN (sent as a last message), so clients
        reconnect elsewhere at once instead of waiting for the server's drain to cut them."""
        self.closing = True
        self.tail.wake_all()

    async def watch(self, restaurant_id: str, after_event_id: str,
                    guard: StreamGuard | None = None, *, with_trace: bool = False
                    ) -> AsyncIterator[pb.WatchOrdersResponse]:
        """`with_trace`: events carry the trace context that caused them (the internal stream
        realtime reads; never the public WatchOrders)."""
        after = parse_event_id(after_event_id)
        head = await self.store.event_head(restaurant_id)
        if after is None:
            after = head
        else:
            why = await self._replay_refusal(restaurant_id, after, head)
            if why:
                log.info("watch needs a resync: %s", why, extra={"restaurant_id": restaurant_id})
                yield _resync(head)
                return
        subscription = self.tail.subscribe(restaurant_id, head)
        try:
            async for message in _Watcher(self, subscription, after, guard, with_trace).run():
                yield message
        except ResyncRequired as resync:
            log.info("watch needs a resync: %s", resync, extra={"restaurant_id": restaurant_id})
            yield _resync(resync.head)
        finally:
            self.tail.unsubscribe(subscription)

    async def _replay_refusal(self, restaurant_id: str, after: int, head: int) -> str:
        if after > head:
            return f"after_event_id {after} is beyond the newest event {head}"
        if head - after > self.replay_limit:
            return f"{head - after} events missed; at most {self.replay_limit} are replayed"
        if after < head:
            oldest = await self.store.oldest_event(restaurant_id)
            if oldest is None or oldest > after + 1:
                return f"events after {after} are no longer kept"
        return ""


def _resync(head: int) -> pb.WatchOrdersResponse:
    return pb.WatchOrdersResponse(resync_required=True, last_event_id=str(head))


class _Watcher:
    """One stream's state: `last`, the sequence of the last event sent."""

    def __init__(self, feed: Feed, subscription: Subscription, last: int,
                 guard: StreamGuard | None, with_trace: bool = False) -> None:
        self._feed = feed
        self._with_trace = with_trace
        self._store = feed.store
        self._sub = subscription
        self._restaurant = subscription.restaurant_id
        self.last = last
        self._guard = guard
        self._relay_check_at: float | None = None

    async def run(self) -> AsyncIterator[pb.WatchOrdersResponse]:
        loop = asyncio.get_running_loop()
        replayed = await self._from_postgres()
        for message in replayed:
            yield message
        if not replayed:
            # Something to send at once: an HTTP client gets its response headers now (not with
            # the first event) and learns the position it is watching from.
            yield pb.WatchOrdersResponse(heartbeat=True, last_event_id=str(self.last))
        last_sent = loop.time()
        while True:
            timeout = self._next_timeout(loop.time(), last_sent)
            if timeout > 0:
                try:
                    await asyncio.wait_for(self._sub.wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
            self._sub.wake.clear()
            if self._feed.closing:
                raise Unavailable("SERVICE_SHUTTING_DOWN",
                                  "the orders service is restarting; reconnect with after_event_id "
                                  f"{self.last}", retryable="true", last_event_id=self.last)
            if self._guard is not None:
                await self._guard()
            messages = await self._step(loop.time())
            for message in messages:
                yield message
            if messages:
                last_sent = loop.time()
            elif loop.time() - last_sent >= self._feed.heartbeat_seconds:
                yield pb.WatchOrdersResponse(heartbeat=True, last_event_id=str(self.last))
                last_sent = loop.time()

    def _next_timeout(self, now: float, last_sent: float) -> float:
        deadlines = [last_sent + self._feed.heartbeat_seconds]
        if not self._feed.tail.healthy:
            deadlines.append(now + self._feed.poll_seconds)
        if self._relay_check_at is not None:
            deadlines.append(self._relay_check_at)
        return max(0.0, min(deadlines) - now)

    async def _step(self, now: float) -> list[pb.WatchOrdersResponse]:
        messages: list[pb.WatchOrdersResponse] = []
        if self._sub.overflowed:
            # This stream fell behind its queue: drop the queue and read from PostgreSQL.
            self._sub.overflowed = False
            self._sub.drain()
            messages += await self._from_postgres()
        for sequence, event, traceparent in self._sub.drain():
            if sequence <= self.last:
                continue  # already sent (replay/live seam, or a duplicate)
            if sequence > self.last + 1:
                messages += await self._from_postgres(through=sequence - 1)
                if self.last != sequence - 1:
                    raise ResyncRequired(sequence, f"events {self.last + 1}..{sequence - 1} are gone")
            messages.append(pb.WatchOrdersResponse(
                event=pb.OrderEvent.FromString(event),
                traceparent=traceparent if self._with_trace else ""))
            self.last = sequence
        poked, self._sub.poked = self._sub.poked, False
        if not self._feed.tail.healthy:
            messages += await self._tolerant_catch_up()
        elif poked and self._relay_check_at is None:
            # Something committed; the relay should put it on the stream within the grace.
            self._relay_check_at = now + self._feed.grace_seconds
        elif self._relay_check_at is not None and now >= self._relay_check_at:
            self._relay_check_at = None
            messages += await self._tolerant_catch_up()
        return messages

    async def _tolerant_catch_up(self) -> list[pb.WatchOrdersResponse]:
        """PostgreSQL catch-up where a database failure only delays delivery: no event can be
        committed while the database is down, so none is missed by waiting."""
        try:
            return await self._from_postgres()
        except Unavailable as exc:
            log.warning("watch could not read PostgreSQL; retrying", extra={"error": exc.reason})
            return []

    async def _from_postgres(self, through: int | None = None) -> list[pb.WatchOrdersResponse]:
        messages = []
        while True:
            events = await self._store.events_after(self._restaurant, self.last, REPLAY_PAGE,
                                                    through)
            for stored in events:
                if stored.sequence != self.last + 1:
                    raise ResyncRequired(stored.sequence,
                                         f"events {self.last + 1}..{stored.sequence - 1} are gone")
                messages.append(pb.WatchOrdersResponse(
                    event=wire.finished_event(stored.payload, stored.sequence, stored.created_at),
                    traceparent=stored.traceparent if self._with_trace else ""))
                self.last = stored.sequence
            if len(events) < REPLAY_PAGE:
                return messages
