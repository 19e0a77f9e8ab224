"""Order events from the orders service to the sockets of this process.

One upstream `OrderFeedService.WatchRestaurantOrders` stream per restaurant that has at least one
local socket (`RestaurantFeed`), whatever the number of sockets. Each event is serialised once
(protocol.order_event_frame) and written to every live socket of the restaurant. When the
upstream stream breaks (orders restarted, network), it reconnects from the last sequence it saw,
so nothing is lost; a `resync_required` from upstream is passed on to every socket.

Every subscriber carries `delivered`, the last sequence it was sent, so a sequence is never sent
to a socket twice and the switch from a catch-up stream to the shared one needs no locking:

- no `last_event_id`: live from now;
- `last_event_id` equal to the feed's position: live at once;
- a small gap still in the feed's ring of recent frames: replayed from memory, then live;
- otherwise a private catch-up stream from `last_event_id`, while live events are held in the
  socket's bounded pending queue; once the catch-up reaches the first held event (or the feed's
  position), the held events are flushed and the socket joins the shared feed. A held queue that overflows
  closes the socket as a slow consumer (it can resume again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

import grpc

from opentelemetry import trace

from posmesh.common import telemetry
from posmesh.common.metrics import FAST_BUCKETS, LoopHistogram, register
from services.realtime import protocol
from services.realtime.protocol import CloseCode

log = logging.getLogger(__name__)

_tracer = trace.get_tracer("posmesh.realtime.hub")
FANOUT_SECONDS = register(LoopHistogram(
    "posmesh_realtime_fanout_seconds", "Time to queue one order event on every live socket of "
    "its restaurant in this process.", (), FAST_BUCKETS))

RING_SIZE = 128  # recent frames kept per restaurant for cheap resumes
LINGER_SECONDS = 30.0  # keep a feed this long after its last socket leaves (quick reconnects)
READY_TIMEOUT_SECONDS = 3.0
MAX_CATCHUP_STREAMS = 64
RECONNECT_BACKOFF_MIN, RECONNECT_BACKOFF_MAX = 0.1, 3.0


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One message of an upstream stream. `frame` is the event as it goes on every socket (a
    complete WebSocket frame, from GrpcFeedSource). `sequence` is the event's; on a heartbeat
    the stream's position, on a resync the restaurant's newest event (None when not said)."""

    sequence: int | None = None
    frame: bytes = b""
    heartbeat: bool = False
    resync: bool = False
    traceparent: str = ""  # the trace of the request that caused the event ('' if none)


class FeedError(Exception):
    """Upstream ended a stream with an error message; the stream is reopened."""


class FeedSource(Protocol):
    def watch(self, restaurant_id: str, after: int | None) -> AsyncIterator[FeedItem]: ...

    async def head(self, restaurant_id: str) -> int | None: ...


class Subscriber(Protocol):
    """What the hub needs from a socket (connection.Connection implements it)."""

    delivered: int
    pending: deque | None
    catchup: asyncio.Task | None
    closed: bool

    def push_event(self, frame: bytes) -> bool: ...  # False when the socket cannot take it
    def send_resync(self) -> None: ...
    def drop(self, code: int, reason: str) -> None: ...


def _resync_error(exc: grpc.aio.AioRpcError) -> bool:
    """Whether an upstream error says the gap is too old (reason RESYNC_REQUIRED)."""
    if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE):
        return False
    if "RESYNC_REQUIRED" in (exc.details() or ""):
        return True
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes) and b"RESYNC_REQUIRED" in value:
            return True
    return False


def _event_id(text: str) -> int | None:
    return int(text) if text.isdigit() else None


class GrpcFeedSource:
    """The orders service's internal feed, over the shared channel to it."""

    # An id beyond any restaurant's newest event (orders accepts up to 18 digits): a watch after
    # it is answered at once with resync_required carrying the newest event id.
    BEYOND_HEAD = "9" * 18
    HEAD_TIMEOUT_SECONDS = 3.0

    def __init__(self, channel: grpc.aio.Channel) -> None:
        from posmesh.orders.v1 import orders_pb2, orders_pb2_grpc

        self._pb = orders_pb2
        self._stub = orders_pb2_grpc.OrderFeedServiceStub(channel)

    async def watch(self, restaurant_id: str, after: int | None) -> AsyncIterator[FeedItem]:
        request = self._pb.WatchRestaurantOrdersRequest(
            restaurant_id=restaurant_id, after_event_id="" if after is None else str(after))
        call = self._stub.WatchRestaurantOrders(request)
        try:
            async for response in call:
                if response.HasField("event"):
                    event = response.event
                    sequence = event.sequence or int(event.id or 0)
                    yield FeedItem(sequence=sequence, frame=protocol.wire_text_frame(
                        protocol.order_event_frame(event)), traceparent=response.traceparent)
                elif response.resync_required:
                    yield FeedItem(sequence=_event_id(response.last_event_id), resync=True)
                    return
                elif response.HasField("error"):
                    raise FeedError(f"{response.error.code}: {response.error.message}")
                else:
                    yield FeedItem(sequence=_event_id(response.last_event_id), heartbeat=True)
        except grpc.aio.AioRpcError as exc:
            if _resync_error(exc):
                yield FeedItem(resync=True)
                return
            raise
        finally:
            call.cancel()

    async def head(self, restaurant_id: str) -> int | None:
        """The restaurant's newest event id, so a new feed starts at a known position (and an
        event committed right after a socket's auth_success cannot slip past it)."""
        request = self._pb.WatchRestaurantOrdersRequest(restaurant_id=restaurant_id,
                                                        after_event_id=self.BEYOND_HEAD)
        call = self._stub.WatchRestaurantOrders(request, timeout=self.HEAD_TIMEOUT_SECONDS)
        try:
            async for response in call:
                if response.resync_required:
                    return _event_id(response.last_event_id)
                return None
        except grpc.aio.AioRpcError as exc:
            log.info("could not read the newest event of %s: %s", restaurant_id, exc.code().name)
        finally:
            call.cancel()
        return None


class HubStats:
    __slots__ = ("events_received", "deliveries", "upstream_reconnects", "resyncs",
                 "catchups_started", "ring_replays")

    def __init__(self) -> None:
        self.events_received = 0
        self.deliveries = 0
        self.upstream_reconnects = 0
        self.resyncs = 0
        self.catchups_started = 0
        self.ring_replays = 0


class RestaurantFeed:
    def __init__(self, hub: OrderHub, restaurant_id: str) -> None:
        self.hub = hub
        self.restaurant_id = restaurant_id
        self.live: set[Subscriber] = set()
        self.catching: set[Subscriber] = set()
        self.position: int | None = None  # highest sequence received; None until the first event
        self.ring: deque[tuple[int, bytes]] = deque(maxlen=RING_SIZE)
        self.connected = False  # the current upstream call has answered
        self.ready = asyncio.Event()  # position known, or upstream has answered
        self.reserved = 0  # sockets between prepare() and start()
        self._task: asyncio.Task | None = None
        self._linger: asyncio.TimerHandle | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def subscribers(self) -> int:
        return len(self.live) + len(self.catching)

    def run(self) -> None:
        self._task = asyncio.create_task(self._follow(), name=f"feed-{self.restaurant_id}")

    def _schedule_linger(self) -> None:
        if self.subscribers == 0 and self.reserved == 0 and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(
                self.hub.linger_seconds, self.hub._retire, self)

    def _cancel_linger(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    async def stop(self) -> None:
        self._cancel_linger()
        for conn in list(self.catching):
            if conn.catchup is not None:
                conn.catchup.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # --- upstream --------------------------------------------------------------------------

    async def _anchor(self) -> None:
        """Learn the newest event id before the first socket is told auth_success."""
        try:
            head = await self.hub.source.head(self.restaurant_id)
        except Exception as exc:
            log.info("no head for %s yet: %r", self.restaurant_id, exc)
            return
        if head is not None and self.position is None:
            self.position = head
            self.ready.set()

    async def _follow(self) -> None:
        backoff = RECONNECT_BACKOFF_MIN
        while True:
            if self.position is None:
                await self._anchor()
            try:
                async for item in self.hub.source.watch(self.restaurant_id, self.position):
                    if not self.connected:
                        self.connected = True
                        self.ready.set()
                        backoff = RECONNECT_BACKOFF_MIN
                    if item.resync:
                        self._resync_all(item.sequence)
                        break  # reconnect from the newest event
                    if item.heartbeat:
                        if self.position is None and item.sequence is not None:
                            self.position = item.sequence  # a live-from-now stream's start
                    elif item.sequence is not None:
                        self.publish(item.sequence, item.frame, item.traceparent)
            except asyncio.CancelledError:
                raise
            except (grpc.aio.AioRpcError, FeedError) as exc:
                log.warning("order feed for %s broke: %s; reconnecting after sequence %s",
                            self.restaurant_id,
                            exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else exc,
                            self.position)
            except Exception:
                log.exception("order feed for %s failed; reconnecting", self.restaurant_id)
            self.connected = False
            self.hub.stats.upstream_reconnects += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX)

    def _resync_all(self, head: int | None) -> None:
        """Upstream cannot replay from our position: everyone reloads, then live from `head`."""
        log.warning("order feed for %s needs a resync after sequence %s", self.restaurant_id,
                    self.position)
        self.hub.stats.resyncs += 1
        self.position = head
        self.ring.clear()
        for conn in list(self.catching):
            if conn.catchup is not None:
                conn.catchup.cancel()
                conn.catchup = None
            self.catching.discard(conn)
            conn.pending = None
            self.live.add(conn)
        for conn in list(self.live):
            conn.delivered = head or 0
            conn.send_resync()

    def publish(self, sequence: int, frame: bytes, traceparent: str = "") -> None:
        """One event to every live socket (serialised once), and to the held queues. With the
        trace context of the request that caused it, the delivery is a span of that trace."""
        if self.position is not None and sequence <= self.position:
            return  # already delivered (a reconnect replayed it)
        parent = telemetry.context_of(traceparent)
        if parent is None:
            self._publish(sequence, frame)
            return
        with _tracer.start_as_current_span(
                "realtime.deliver", context=parent, kind=trace.SpanKind.CONSUMER,
                attributes={"messaging.system": "websocket", "messaging.operation.type": "deliver",
                            "posmesh.event.sequence": sequence}) as span:
            delivered = self._publish(sequence, frame)
            span.set_attribute("posmesh.sockets", delivered)

    def _publish(self, sequence: int, frame: bytes) -> int:
        if self.position is not None and sequence != self.position + 1:
            log.warning("order feed for %s jumped from %s to %s", self.restaurant_id,
                        self.position, sequence)
        self.position = sequence
        self.ring.append((sequence, frame))
        stats = self.hub.stats
        stats.events_received += 1
        delivered = 0
        started = time.perf_counter()
        for conn in tuple(self.live):
            if conn.delivered < sequence:
                conn.delivered = sequence
                if conn.push_event(frame):
                    delivered += 1
        FANOUT_SECONDS.observe((), time.perf_counter() - started)
        stats.deliveries += delivered
        self._hold_for_catching_up(sequence, frame)
        return delivered

    def _hold_for_catching_up(self, sequence: int, frame: bytes) -> None:
        for conn in tuple(self.catching):
            if sequence > conn.delivered and conn.pending is not None:
                conn.pending.append((sequence, frame))
                if len(conn.pending) > self.hub.pending_limit:
                    self.catching.discard(conn)
                    if conn.catchup is not None:
                        conn.catchup.cancel()
                    conn.drop(CloseCode.SLOW_CONSUMER, "SLOW_CONSUMER")
                    continue
            self._try_go_live(conn)

    # --- subscribers -----------------------------------------------------------------------

    def start(self, conn: Subscriber, after: int | None) -> None:
        """Attach a socket (after its auth_success was written); see the module docstring."""
        self.reserved = max(0, self.reserved - 1)
        self._cancel_linger()
        if after is None:
            conn.delivered = self.position or 0
            self.live.add(conn)
            return
        if self.position is not None and after == self.position:
            conn.delivered = after
            self.live.add(conn)
            return
        if (self.position is not None and after < self.position and self.ring
                and self.ring[0][0] <= after + 1):
            self.hub.stats.ring_replays += 1
            conn.delivered = after
            for sequence, frame in tuple(self.ring):
                if sequence > conn.delivered:
                    conn.delivered = sequence
                    if not conn.push_event(frame):
                        return
            self.live.add(conn)
            return
        # A private stream from `after`; the client's id is never used to position the feed.
        self.hub.stats.catchups_started += 1
        conn.delivered = after
        conn.pending = deque()
        self.catching.add(conn)
        conn.catchup = asyncio.create_task(self._catch_up(conn), name="catch-up")

    def leave(self, conn: Subscriber) -> None:
        self.live.discard(conn)
        self.catching.discard(conn)
        if conn.catchup is not None:
            conn.catchup.cancel()
            conn.catchup = None
        conn.pending = None
        self._schedule_linger()

    def unreserve(self) -> None:
        self.reserved = max(0, self.reserved - 1)
        self._schedule_linger()

    def _go_live(self, conn: Subscriber) -> None:
        self.catching.discard(conn)
        pending, conn.pending = conn.pending or (), None
        conn.catchup = None
        for sequence, frame in pending:
            if sequence > conn.delivered:
                conn.delivered = sequence
                if not conn.push_event(frame):
                    return
        if not conn.closed:
            self.live.add(conn)

    def _try_go_live(self, conn: Subscriber) -> bool:
        """Join the shared feed once nothing can fall between the catch-up and it."""
        if conn not in self.catching:
            return False
        if conn.pending:
            ready = conn.pending[0][0] <= conn.delivered + 1
        else:
            ready = self.position is not None and conn.delivered >= self.position
        if ready:
            task = conn.catchup
            self._go_live(conn)
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        return ready

    async def _catch_up(self, conn: Subscriber) -> None:
        backoff = RECONNECT_BACKOFF_MIN
        try:
            async with self.hub.catchup_slots:
                while conn in self.catching and not conn.closed:
                    try:
                        async for item in self.hub.source.watch(self.restaurant_id, conn.delivered):
                            if conn not in self.catching or conn.closed:
                                return
                            if item.resync:
                                # Too old to replay: reload, then what is newer than the head.
                                self.hub.stats.resyncs += 1
                                conn.send_resync()
                                head = item.sequence if item.sequence is not None else self.position
                                conn.delivered = head or 0
                                self._go_live(conn)
                                return
                            if item.heartbeat:
                                # Heartbeats may come before, during or after a replay, so they
                                # say nothing about having caught up. This stream is complete
                                # by itself: it stays until the shared feed's next event joins.
                                continue
                            if item.sequence is not None and item.sequence > conn.delivered:
                                conn.delivered = item.sequence
                                if not conn.push_event(item.frame):
                                    return
                            if self._try_go_live(conn):
                                return
                    except (grpc.aio.AioRpcError, FeedError) as exc:
                        log.info("catch-up stream for %s broke: %r", self.restaurant_id, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("catch-up for %s failed", self.restaurant_id)
            self.catching.discard(conn)
            conn.drop(CloseCode.GOING_AWAY, "CATCH_UP_FAILED")


class OrderHub:
    def __init__(self, source: FeedSource, *, pending_limit: int,
                 linger_seconds: float = LINGER_SECONDS,
                 ready_timeout: float = READY_TIMEOUT_SECONDS) -> None:
        self.source = source
        self.pending_limit = pending_limit
        self.linger_seconds = linger_seconds
        self.ready_timeout = ready_timeout
        self.feeds: dict[str, RestaurantFeed] = {}
        self.catchup_slots = asyncio.Semaphore(MAX_CATCHUP_STREAMS)
        self.stats = HubStats()

    async def prepare(self, restaurant_id: str) -> RestaurantFeed:
        """The restaurant's feed, started if needed and (within a bound) connected upstream, so
        an event committed after the client's auth_success reaches it. Pair with `start` or
        `unreserve`."""
        feed = self.feeds.get(restaurant_id)
        if feed is None:
            feed = self.feeds[restaurant_id] = RestaurantFeed(self, restaurant_id)
            feed.run()
        feed.reserved += 1
        feed._cancel_linger()
        if not feed.ready.is_set():
            try:
                await asyncio.wait_for(feed.ready.wait(), self.ready_timeout)
            except asyncio.TimeoutError:
                log.warning("order feed for %s is not connected yet; attaching anyway",
                            restaurant_id)
        return feed

    def _retire(self, feed: RestaurantFeed) -> None:
        feed._linger = None
        if feed.subscribers or feed.reserved:
            return
        if self.feeds.get(feed.restaurant_id) is feed:
            del self.feeds[feed.restaurant_id]
        asyncio.get_running_loop().create_task(feed.stop())

    def catching_up(self) -> int:
        return sum(len(feed.catching) for feed in self.feeds.values())

    async def stop(self) -> None:
        feeds, self.feeds = list(self.feeds.values()), {}
        await asyncio.gather(*(feed.stop() for feed in feeds), return_exceptions=True)
