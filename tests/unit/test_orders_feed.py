"""The WatchOrders feed logic against an in-memory outbox and Redis stream: replay, the
replay/live seam, gaps, Redis outages, slow subscribers, resync, heartbeats. The same feed runs
over real PostgreSQL and Redis in tests/e2e/test_watch_orders.py."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
import redis.exceptions

from posmesh.common.errors import Unauthenticated
from posmesh.common.settings import Settings
from posmesh.orders.v1 import orders_pb2 as pb
from services.orders import wire
from services.orders.domain import ORDER_CREATED, EventDraft
from services.orders.feed import Feed, LiveTail
from services.orders.relay import EventSignals, stream_key
from services.orders.store import StoredEvent

pytestmark = pytest.mark.unit

RESTAURANT = "11111111-1111-1111-1111-111111111111"
NOW = datetime(2025, 11, 21, tzinfo=timezone.utc)


class FakeOutbox:
    """The store's event reads over a list; `append` commits the next sequence."""

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []
        self.pruned_through = 0

    def append(self) -> int:
        sequence = len(self.events) + 1
        payload = wire.event_payload(RESTAURANT, EventDraft(ORDER_CREATED))
        self.events.append(StoredEvent(RESTAURANT, sequence, payload, NOW))
        return sequence

    def finished(self, sequence: int) -> bytes:
        stored = self.events[sequence - 1]
        return wire.finished_event(stored.payload, stored.sequence, stored.created_at).SerializeToString()

    async def event_head(self, restaurant_id: str) -> int:
        return len(self.events)

    async def oldest_event(self, restaurant_id: str) -> int | None:
        kept = [e.sequence for e in self.events if e.sequence > self.pruned_through]
        return min(kept) if kept else None

    async def events_after(self, restaurant_id, after, limit, through=None):
        upper = through if through is not None else 2**62
        return [e for e in self.events
                if after < e.sequence <= upper and e.sequence > self.pruned_through][:limit]


class FakeRedis:
    """XREAD BLOCK over in-memory streams; `down` makes every call fail like a dead server."""

    def __init__(self) -> None:
        self.streams: dict[str, list[tuple[str, dict]]] = {}
        self.changed = asyncio.Condition()
        self.down = False

    async def xadd(self, key: str, sequence: int, event: bytes) -> None:
        async with self.changed:
            self.streams.setdefault(key, []).append(
                (f"{sequence}-0", {b"seq": str(sequence).encode(), b"event": event}))
            self.changed.notify_all()

    async def xread(self, streams: dict, block: int, count: int):
        deadline = asyncio.get_running_loop().time() + block / 1000
        async with self.changed:
            while True:
                if self.down:
                    raise redis.exceptions.ConnectionError("Connection refused")
                reply = []
                for key, position in streams.items():
                    after = int(position.split("-")[0])
                    entries = [(sid.encode(), fields) for sid, fields in self.streams.get(key, [])
                               if int(sid.split("-")[0]) > after][:count]
                    if entries:
                        reply.append([key.encode(), entries])
                if reply:
                    return reply
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return []
                try:
                    await asyncio.wait_for(self.changed.wait(), remaining)
                except asyncio.TimeoutError:
                    return []


def settings(**overrides) -> Settings:
    values = {"ORDER_WATCH_HEARTBEAT_SECONDS": 5.0, "ORDER_WATCH_POLL_SECONDS": 0.05,
              "ORDER_WATCH_RELAY_GRACE_SECONDS": 0.1, "ORDER_EVENT_REPLAY_LIMIT": 100}
    values.update(overrides)
    return Settings(**values)


class Rig:
    def __init__(self, **overrides) -> None:
        self.outbox = FakeOutbox()
        self.redis = FakeRedis()
        self.signals = EventSignals()
        self.tail = LiveTail(self.redis, self.signals, block_seconds=0.2)
        self.feed = Feed(settings(**overrides), self.outbox, self.tail)  # type: ignore[arg-type]

    async def commit_and_publish(self, count: int = 1) -> list[int]:
        sequences = []
        for _ in range(count):
            sequence = self.outbox.append()
            await self.redis.xadd(stream_key(RESTAURANT), sequence, self.outbox.finished(sequence))
            sequences.append(sequence)
        return sequences

    def watch(self, after: str = "", guard=None):
        return self.feed.watch(RESTAURANT, after, guard)


async def take(stream, count: int, timeout: float = 3.0) -> list[pb.WatchOrdersResponse]:
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append(await anext(stream))
    return got


def sequences(messages) -> list[int]:
    return [m.event.sequence for m in messages if m.HasField("event")]


async def test_replays_what_was_missed_then_streams_live_without_duplicating_the_seam() -> None:
    rig = Rig()
    await rig.commit_and_publish(5)
    stream = rig.watch("2")
    assert sequences(await take(stream, 3)) == [3, 4, 5]
    await rig.commit_and_publish(2)
    live = await take(stream, 2)
    assert sequences(live) == [6, 7]
    assert [m.event.id for m in live] == ["6", "7"]
    await stream.aclose()
    await rig.tail.stop()


async def test_a_stream_with_nothing_to_replay_starts_with_a_heartbeat_at_its_position() -> None:
    rig = Rig()
    await rig.commit_and_publish(3)
    for after in ("", "3"):
        stream = rig.watch(after)
        (first,) = await take(stream, 1, timeout=0.5)
        assert first.heartbeat and first.last_event_id == "3"
        await stream.aclose()
    await rig.tail.stop()


async def test_events_committed_during_the_replay_are_sent_once() -> None:
    rig = Rig()
    await rig.commit_and_publish(3)
    stream = rig.watch("0")
    first = await take(stream, 1)
    # Events 4 and 5 are in the outbox (read by the replay) and also arrive on the stream.
    await rig.commit_and_publish(2)
    rest = await take(stream, 4)
    assert sequences(first + rest) == [1, 2, 3, 4, 5]
    await rig.commit_and_publish(1)
    assert sequences(await take(stream, 1)) == [6]
    await stream.aclose()
    await rig.tail.stop()


async def test_a_gap_on_the_stream_is_filled_from_postgres() -> None:
    rig = Rig()
    stream = rig.watch("")
    received = asyncio.ensure_future(take(stream, 4))  # a first heartbeat, then 3 events
    await asyncio.sleep(0.05)
    rig.outbox.append()  # 1 committed but lost from the stream (e.g. Redis restarted)
    rig.outbox.append()  # 2 committed, never published
    await rig.commit_and_publish(1)  # 3 on the stream
    assert sequences(await received) == [1, 2, 3]
    await stream.aclose()
    await rig.tail.stop()


async def test_while_redis_is_down_postgres_is_polled_and_nothing_is_lost() -> None:
    rig = Rig()
    await rig.commit_and_publish(1)
    stream = rig.watch("0")
    assert sequences(await take(stream, 1)) == [1]
    rig.redis.down = True
    async with rig.redis.changed:
        rig.redis.changed.notify_all()  # the blocked XREAD fails now
    rig.outbox.append()
    rig.outbox.append()
    assert sequences(await take(stream, 2)) == [2, 3]
    rig.redis.down = False
    # Back up: 4 arrives live, and 2..3 published late are not repeated.
    for sequence in (2, 3):
        await rig.redis.xadd(stream_key(RESTAURANT), sequence, rig.outbox.finished(sequence))
    await rig.commit_and_publish(1)
    assert sequences(await take(stream, 1)) == [4]
    await stream.aclose()
    await rig.tail.stop()


async def test_an_event_the_relay_has_not_published_is_read_after_the_grace() -> None:
    rig = Rig()
    stream = rig.watch("")
    received = asyncio.ensure_future(take(stream, 2))
    await asyncio.sleep(0.05)
    rig.outbox.append()
    rig.signals.poke(RESTAURANT)  # NOTIFY arrived; the relay is stalled
    started = asyncio.get_running_loop().time()
    assert sequences(await received) == [1]
    assert asyncio.get_running_loop().time() - started >= 0.09
    await stream.aclose()
    await rig.tail.stop()


async def test_a_subscriber_whose_queue_overflows_catches_up_from_postgres() -> None:
    rig = Rig()
    stream = rig.watch("")
    received = asyncio.ensure_future(take(stream, 2))
    await asyncio.sleep(0.05)
    (subscription,) = rig.tail._subscriptions[RESTAURANT]  # noqa: SLF001
    await rig.commit_and_publish(1)
    assert sequences(await received) == [1]
    for _ in range(3):
        rig.outbox.append()
    subscription.overflowed = True  # entries 2..4 were dropped from its queue
    subscription.wake.set()
    assert sequences(await take(stream, 3)) == [2, 3, 4]
    await stream.aclose()
    await rig.tail.stop()


@pytest.mark.parametrize(("after", "head"), [("10", 5), ("0", 150)])
async def test_too_far_behind_or_ahead_gets_resync_required_and_the_stream_ends(after, head) -> None:
    rig = Rig()
    for _ in range(head):
        rig.outbox.append()
    messages = [m async for m in rig.watch(after)]
    assert len(messages) == 1
    assert messages[0].resync_required and messages[0].last_event_id == str(head)


async def test_events_no_longer_kept_get_resync_required() -> None:
    rig = Rig()
    for _ in range(10):
        rig.outbox.append()
    rig.outbox.pruned_through = 4
    messages = [m async for m in rig.watch("2")]
    assert [m.resync_required for m in messages] == [True]
    # From the oldest kept event on, a replay still works.
    replay = await take(rig.watch("4"), 6)
    assert sequences(replay) == [5, 6, 7, 8, 9, 10]
    await rig.tail.stop()


async def test_a_quiet_stream_sends_heartbeats_with_its_position() -> None:
    rig = Rig(ORDER_WATCH_HEARTBEAT_SECONDS=0.1)
    await rig.commit_and_publish(2)
    stream = rig.watch("1")
    messages = await take(stream, 3)
    assert sequences(messages[:1]) == [2]
    assert all(m.heartbeat and m.last_event_id == "2" for m in messages[1:])
    await stream.aclose()
    await rig.tail.stop()


async def test_a_failing_guard_ends_the_stream_with_its_error() -> None:
    rig = Rig(ORDER_WATCH_HEARTBEAT_SECONDS=0.05)
    calls = 0

    async def guard() -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise Unauthenticated("TOKEN_EXPIRED", "expired")

    stream = rig.watch("", guard)
    with pytest.raises(Unauthenticated):
        await take(stream, 5)
    await rig.tail.stop()


async def test_a_bad_event_id_is_invalid_argument() -> None:
    from posmesh.common.errors import InvalidArgument

    rig = Rig()
    for bad in ("abc", "-1", "1.5", "9" * 30):
        with pytest.raises(InvalidArgument) as caught:
            await anext(rig.watch(bad))
        assert caught.value.reason == "INVALID_EVENT_ID"


async def test_watchers_of_one_restaurant_share_one_reader_and_each_get_every_event() -> None:
    rig = Rig()
    streams = [rig.watch("") for _ in range(3)]
    firsts = [asyncio.ensure_future(take(s, 3)) for s in streams]
    await asyncio.sleep(0.1)
    await rig.commit_and_publish(2)
    for result in await asyncio.gather(*firsts):
        assert sequences(result) == [1, 2]
    assert len(rig.tail._subscriptions[RESTAURANT]) == 3  # noqa: SLF001
    for stream in streams:
        await stream.aclose()
    assert RESTAURANT not in rig.tail._subscriptions  # noqa: SLF001
    await rig.tail.stop()


async def test_closing_the_feed_ends_every_watch_with_service_shutting_down() -> None:
    from posmesh.common.errors import Unavailable

    rig = Rig()
    await rig.commit_and_publish(1)
    stream = rig.watch("0")
    assert sequences(await take(stream, 1)) == [1]
    rig.feed.close()
    with pytest.raises(Unavailable) as caught:
        await take(stream, 1)
    assert caught.value.reason == "SERVICE_SHUTTING_DOWN"
    assert caught.value.metadata["last_event_id"] == "1"
    await rig.tail.stop()


async def test_a_failure_after_the_first_message_is_also_sent_as_a_last_error_message() -> None:
    from google.rpc import error_details_pb2

    from posmesh.common.errors import Unavailable
    from services.orders.servicer import with_final_error

    async def failing():
        yield pb.WatchOrdersResponse(heartbeat=True)
        raise Unavailable("SERVICE_SHUTTING_DOWN", "restarting")

    received = []
    with pytest.raises(Unavailable):
        async for message in with_final_error(failing()):
            received.append(message)
    assert received[0].heartbeat
    error = received[1].error
    info = error_details_pb2.ErrorInfo()
    assert error.details[0].Unpack(info)
    assert (error.code, info.reason) == (14, "SERVICE_SHUTTING_DOWN")


async def test_a_failure_before_the_first_message_is_a_plain_error() -> None:
    from services.orders.servicer import with_final_error

    async def failing():
        raise InvalidArgumentForTest()
        yield  # pragma: no cover

    with pytest.raises(InvalidArgumentForTest):
        async for _ in with_final_error(failing()):
            pass


class InvalidArgumentForTest(Exception):
    pass
