"""The realtime hub: one upstream stream per restaurant fanned out to its sockets, resumes with no
gap and no duplicate, reconnects from the last sequence, resyncs and slow catch-ups.

The upstream is a scripted fake of WatchRestaurantOrders; subscribers are plain objects that
record what they were sent. No servers.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque

import grpc
import pytest

from services.realtime.hub import FeedItem, OrderHub
from services.realtime.protocol import CloseCode

RESTAURANT = "r-1"
END = object()


def frame(sequence: int) -> bytes:
    return json.dumps({"id": str(sequence), "type": "order.created"}).encode()


def event(sequence: int) -> FeedItem:
    return FeedItem(sequence=sequence, frame=frame(sequence))


class FakeStream:
    def __init__(self, after: int | None) -> None:
        self.after = after
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def put(self, *items) -> None:
        for item in items:
            self.queue.put_nowait(item)


class FakeSource:
    """Each watch() call is a stream the test feeds; END ends it, an exception breaks it."""

    def __init__(self) -> None:
        self.streams: list[FakeStream] = []
        self.opened = asyncio.Event()
        self.newest: int | None = None  # what head() answers (None: upstream did not say)

    async def head(self, restaurant_id: str) -> int | None:
        return self.newest

    async def watch(self, restaurant_id: str, after: int | None):
        stream = FakeStream(after)
        self.streams.append(stream)
        self.opened.set()
        try:
            while True:
                item = await stream.queue.get()
                if item is END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stream.closed = True

    async def next_stream(self, count: int) -> FakeStream:
        for _ in range(200):
            if len(self.streams) >= count:
                return self.streams[count - 1]
            await asyncio.sleep(0.005)
        raise AssertionError(f"stream {count} was never opened")


class Screen:
    """A subscriber that records the sequences it was sent."""

    def __init__(self) -> None:
        self.delivered = 0
        self.pending: deque | None = None
        self.catchup: asyncio.Task | None = None
        self.closed = False
        self.received: list[int] = []
        self.resyncs = 0
        self.dropped: tuple[int, str] | None = None

    def push_event(self, data: bytes) -> bool:
        if self.closed:
            return False
        self.received.append(int(json.loads(data)["id"]))
        return True

    def send_resync(self) -> None:
        self.resyncs += 1

    def drop(self, code: int, reason: str) -> None:
        self.dropped = (code, reason)
        self.closed = True


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)


async def live_feed(hub: OrderHub, source: FakeSource, *, heartbeat: bool = True):
    """A feed whose upstream has answered (the normal state)."""
    preparing = asyncio.create_task(hub.prepare(RESTAURANT))
    stream = await source.next_stream(1)
    if heartbeat:
        stream.put(FeedItem(heartbeat=True))
    feed = await preparing
    return feed, stream


def unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                grpc.aio.Metadata(), details="orders restarting")


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def hub(source: FakeSource) -> OrderHub:
    return OrderHub(source, pending_limit=8, linger_seconds=0.05, ready_timeout=0.5)


async def test_one_upstream_stream_serves_every_socket_of_a_restaurant(hub, source):
    feed, stream = await live_feed(hub, source)
    screens = [Screen() for _ in range(3)]
    for screen in screens:
        feed.start(screen, None)
        await hub.prepare(RESTAURANT)  # later sockets reuse the same feed
    stream.put(event(1), event(2), event(3))
    await settle()
    assert len(source.streams) == 1
    assert source.streams[0].after is None
    for screen in screens:
        assert screen.received == [1, 2, 3]
    assert hub.stats.deliveries == 9
    await hub.stop()


async def test_an_event_is_never_sent_twice_when_upstream_repeats_it(hub, source):
    feed, stream = await live_feed(hub, source)
    screen = Screen()
    feed.start(screen, None)
    stream.put(event(1), event(2), event(2), event(1), event(3))
    await settle()
    assert screen.received == [1, 2, 3]
    await hub.stop()


async def test_upstream_break_reconnects_after_the_last_sequence_and_loses_nothing(hub, source):
    feed, stream = await live_feed(hub, source)
    screen = Screen()
    feed.start(screen, None)
    stream.put(event(1), event(2), unavailable())
    second = await source.next_stream(2)
    assert second.after == 2
    # The new stream replays from after 2 (a duplicate too, to be sure it is filtered).
    second.put(event(2), event(3), event(4))
    await settle()
    assert screen.received == [1, 2, 3, 4]
    assert hub.stats.upstream_reconnects == 1
    await hub.stop()


async def test_resume_at_the_feeds_position_goes_live_without_a_catch_up(hub, source):
    feed, stream = await live_feed(hub, source)
    first = Screen()
    feed.start(first, None)
    stream.put(event(1), event(2))
    await settle()
    resumed = Screen()
    feed.start(resumed, 2)
    stream.put(event(3))
    await settle()
    assert resumed.received == [3]
    assert len(source.streams) == 1
    await hub.stop()


async def test_resume_inside_the_ring_replays_from_memory(hub, source):
    feed, stream = await live_feed(hub, source)
    feed.start(Screen(), None)
    stream.put(*(event(n) for n in range(1, 11)))
    await settle()
    resumed = Screen()
    feed.start(resumed, 6)
    stream.put(event(11))
    await settle()
    assert resumed.received == [7, 8, 9, 10, 11]
    assert len(source.streams) == 1
    assert hub.stats.ring_replays == 1
    await hub.stop()


async def test_resume_beyond_the_ring_catches_up_privately_then_joins_with_no_gap_or_duplicate(
        hub, source):
    feed, stream = await live_feed(hub, source)
    feed.start(Screen(), None)
    feed.ring.clear()  # as if the gap were older than the ring
    stream.put(event(10), event(11))
    await settle()
    feed.ring.clear()
    resumed = Screen()
    feed.start(resumed, 5)
    private = await source.next_stream(2)
    assert private.after == 5
    # Live events arrive while the catch-up is still replaying: they are held.
    stream.put(event(12), event(13))
    await settle()
    assert resumed.received == []
    private.put(*(event(n) for n in range(6, 13)))  # 6..12, overlapping the held 12
    await settle()
    assert resumed.received == list(range(6, 14))
    assert private.closed, "the private stream ends once the socket joins the shared feed"
    stream.put(event(14))
    await settle()
    assert resumed.received == list(range(6, 15))
    assert feed.catching == set() and resumed in feed.live
    await hub.stop()


async def test_a_catch_up_stays_on_its_own_stream_until_the_shared_feed_has_an_event(hub, source):
    feed, stream = await live_feed(hub, source)  # position unknown: no event yet
    resumed = Screen()
    feed.start(resumed, 3)
    private = await source.next_stream(2)
    # A heartbeat says nothing about the replay being over: the socket keeps its own stream.
    private.put(FeedItem(heartbeat=True), event(4), event(5), FeedItem(heartbeat=True))
    await settle()
    assert resumed in feed.catching and resumed.received == [4, 5]
    private.put(event(6))  # a live event reaches the private stream first...
    await settle()
    stream.put(event(6), event(7))  # ...then the shared feed, which the socket joins
    await settle()
    assert resumed in feed.live and private.closed
    assert resumed.received == [4, 5, 6, 7]
    await hub.stop()


async def test_a_resume_too_old_to_replay_gets_resync_required_then_live_events(hub, source):
    feed, stream = await live_feed(hub, source)
    feed.start(Screen(), None)
    stream.put(event(100))
    await settle()
    feed.ring.clear()
    resumed = Screen()
    feed.start(resumed, 1)
    private = await source.next_stream(2)
    private.put(FeedItem(resync=True))
    await settle()
    assert resumed.resyncs == 1
    stream.put(event(101))
    await settle()
    assert resumed.received == [101]
    await hub.stop()


async def test_upstream_resync_tells_every_socket_and_restarts_live(hub, source):
    feed, stream = await live_feed(hub, source)
    screens = [Screen(), Screen()]
    for screen in screens:
        feed.start(screen, None)
    stream.put(event(1), FeedItem(resync=True))
    restarted = await source.next_stream(2)
    assert restarted.after is None
    restarted.put(event(50))
    await settle()
    for screen in screens:
        assert screen.resyncs == 1
        assert screen.received == [1, 50]
    await hub.stop()


async def test_a_catch_up_that_falls_too_far_behind_is_closed_as_a_slow_consumer(hub, source):
    feed, stream = await live_feed(hub, source)
    feed.start(Screen(), None)
    stream.put(event(50))
    await settle()
    feed.ring.clear()
    resumed = Screen()
    feed.start(resumed, 1)
    await source.next_stream(2)  # the private stream never delivers
    stream.put(*(event(n) for n in range(51, 51 + hub.pending_limit + 1)))
    await settle()
    assert resumed.dropped == (CloseCode.SLOW_CONSUMER, "SLOW_CONSUMER")
    assert resumed not in feed.catching
    await hub.stop()


async def test_a_client_id_never_positions_the_shared_feed(hub, source):
    preparing = asyncio.create_task(hub.prepare(RESTAURANT))
    shared = await source.next_stream(1)
    shared.put(FeedItem(heartbeat=True))
    feed = await preparing
    feed.start(Screen(), 10**12)  # a bogus, far-future id
    await source.next_stream(2)
    assert shared.after is None and feed.position is None
    await hub.stop()


async def test_a_feed_stops_after_its_last_socket_leaves_and_the_linger(hub, source):
    feed, stream = await live_feed(hub, source)
    screen = Screen()
    feed.start(screen, None)
    feed.leave(screen)
    await asyncio.sleep(0.15)
    assert RESTAURANT not in hub.feeds
    assert stream.closed
    await hub.stop()


async def test_prepare_does_not_hang_when_upstream_is_silent(hub, source):
    started = asyncio.get_running_loop().time()
    feed = await hub.prepare(RESTAURANT)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert not feed.ready.is_set()
    feed.unreserve()
    await hub.stop()


async def test_a_new_feed_starts_at_the_restaurants_newest_event(hub, source):
    source.newest = 7
    feed = await hub.prepare(RESTAURANT)  # ready at once: no wait for upstream to answer
    stream = await source.next_stream(1)
    assert feed.position == 7 and stream.after == 7
    screen = Screen()
    feed.start(screen, None)
    stream.put(event(8))
    await settle()
    assert screen.received == [8]
    await hub.stop()


async def test_a_heartbeat_tells_a_live_from_now_feed_its_position(hub, source):
    feed, stream = await live_feed(hub, source, heartbeat=False)
    stream.put(FeedItem(heartbeat=True, sequence=12), unavailable())
    reconnected = await source.next_stream(2)
    assert reconnected.after == 12, "an outage before the first event loses nothing either"
    await hub.stop()


async def test_upstream_resync_carrying_the_head_restarts_from_it(hub, source):
    feed, stream = await live_feed(hub, source)
    screen = Screen()
    feed.start(screen, None)
    stream.put(event(1), FeedItem(resync=True, sequence=40))
    restarted = await source.next_stream(2)
    assert restarted.after == 40
    restarted.put(event(41))
    await settle()
    assert screen.resyncs == 1 and screen.received == [1, 41]
    await hub.stop()
