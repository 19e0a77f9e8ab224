"""The outbox relay against fakes: what gets published, marked, skipped and retried."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import datetime, timezone

import pytest
import redis.exceptions

from posmesh.common.settings import Settings
from posmesh.orders.v1 import orders_pb2 as pb
from services.orders import wire
from services.orders.domain import ORDER_CREATED, EventDraft
from services.orders.relay import EventSignals, Relay, entry_id, stream_key
from services.orders.store import StoredEvent

pytestmark = pytest.mark.unit

RESTAURANT = "11111111-1111-1111-1111-111111111111"
NOW = datetime(2025, 11, 21, tzinfo=timezone.utc)


def stored(sequence: int) -> StoredEvent:
    return StoredEvent(RESTAURANT, sequence, wire.event_payload(RESTAURANT, EventDraft(ORDER_CREATED)),
                       NOW)


class FakeRound:
    def __init__(self, store: "FakeStore") -> None:
        self._store = store

    async def unpublished(self, limit: int) -> list[StoredEvent]:
        return [e for e in self._store.events if e.sequence not in self._store.published][:limit]

    async def mark_published(self, events) -> None:
        self._store.pending_marks = [e.sequence for e in events]


class FakeStore:
    def __init__(self, count: int) -> None:
        self.events = [stored(n) for n in range(1, count + 1)]
        self.published: set[int] = set()
        self.pending_marks: list[int] = []
        self.locked_elsewhere = False

    @asynccontextmanager
    async def relay_round(self):
        self.pending_marks = []
        yield None if self.locked_elsewhere else FakeRound(self)
        # Commit: only reached when the body did not raise.
        self.published.update(self.pending_marks)


class FakePipeline:
    def __init__(self, redis: "FakeRedis") -> None:
        self._redis = redis
        self._commands: list[tuple] = []

    def xadd(self, key, fields, id, maxlen, approximate):
        self._commands.append((key, fields, id, maxlen, approximate))

    async def execute(self, raise_on_error: bool = True):
        if self._redis.down:
            raise redis.exceptions.ConnectionError("Connection refused")
        results = []
        for key, fields, entry, maxlen, approximate in self._commands:
            stream = self._redis.streams.setdefault(key, [])
            if stream and int(stream[-1][0].split("-")[0]) >= int(entry.split("-")[0]):
                results.append(redis.exceptions.ResponseError(
                    "The ID specified in XADD is equal or smaller than the target stream top item"))
                continue
            stream.append((entry, fields))
            self._redis.maxlens.add((maxlen, approximate))
            results.append(entry.encode())
        return results


class FakeRedis:
    def __init__(self) -> None:
        self.streams: dict[str, list] = {}
        self.maxlens: set = set()
        self.down = False

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        assert transaction is False
        return FakePipeline(self)


def relay(store, fake_redis, **settings) -> Relay:
    values = {"ORDER_RELAY_BATCH_SIZE": 3, "ORDER_EVENT_STREAM_MAXLEN": 777}
    values.update(settings)
    return Relay(Settings(**values), store, fake_redis, EventSignals())  # type: ignore[arg-type]


async def test_events_are_published_in_order_with_their_sequence_as_entry_id_then_marked():
    store, fake_redis = FakeStore(5), FakeRedis()
    worker = relay(store, fake_redis)
    assert await worker.publish_round() is True  # a full batch of 3: more may wait
    assert await worker.publish_round() is False
    stream = fake_redis.streams[stream_key(RESTAURANT)]
    assert [entry for entry, _ in stream] == [entry_id(n) for n in range(1, 6)]
    assert [int(fields["seq"]) for _, fields in stream] == [1, 2, 3, 4, 5]
    event = pb.OrderEvent.FromString(stream[0][1]["event"])
    assert (event.id, event.sequence, event.type) == ("1", 1, "order.created")
    assert store.published == {1, 2, 3, 4, 5}
    assert fake_redis.maxlens == {(777, True)}


async def test_nothing_is_marked_while_redis_is_down_and_everything_goes_out_after():
    store, fake_redis = FakeStore(2), FakeRedis()
    worker = relay(store, fake_redis)
    fake_redis.down = True
    with pytest.raises(redis.exceptions.ConnectionError):
        await worker.publish_round()
    assert store.published == set()
    fake_redis.down = False
    await worker.publish_round()
    assert store.published == {1, 2}
    assert len(fake_redis.streams[stream_key(RESTAURANT)]) == 2


async def test_an_event_already_on_the_stream_is_not_added_twice_but_is_marked():
    # A relay XADDed events 1..2 and died before marking them published.
    store, fake_redis = FakeStore(3), FakeRedis()
    await relay(store, fake_redis).publish_round()
    store.published.clear()
    await relay(store, fake_redis).publish_round()
    assert [entry for entry, _ in fake_redis.streams[stream_key(RESTAURANT)]] == ["1-0", "2-0", "3-0"]
    assert store.published == {1, 2, 3}


async def test_a_round_is_skipped_while_another_process_holds_the_relay_lock():
    store, fake_redis = FakeStore(2), FakeRedis()
    store.locked_elsewhere = True
    assert await relay(store, fake_redis).publish_round() is False
    assert fake_redis.streams == {} and store.published == set()
