"""The outbox relay: moves committed order events to the restaurants' Redis streams.

- Wakes on PostgreSQL NOTIFY (a trigger on order_events fires on commit) and polls every
  ORDER_RELAY_POLL_SECONDS as a safety net.
- One relay publishes at a time across every orders process (a transaction-scoped advisory
  lock; the others skip the round), in sequence order per restaurant.
- Each event is XADDed to `orders:events:{restaurant_id}` with the entry id `{sequence}-0` and
  fields `seq` and `event` (a serialised OrderEvent), trimmed with MAXLEN ~. Redis refuses an id
  that is not above the stream's last one, so an event published twice (a relay that died between
  XADD and marking it published) is stored once.
- Events are marked published in the same transaction only after Redis accepted them. While
  Redis is down nothing is marked, the relay backs off (up to ORDER_RELAY_MAX_BACKOFF_SECONDS)
  and catches up from the table when Redis returns: nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime, timedelta, timezone
from typing import Callable

import asyncpg
import redis.exceptions
from opentelemetry import trace
from prometheus_client import Counter, Gauge

from posmesh.common import telemetry

from posmesh.common.settings import Settings
from services.orders import store as store_module, wire
from services.orders.store import OrdersStore, StoredEvent

log = logging.getLogger(__name__)

PUBLISHED = Counter("posmesh_outbox_published_events",
                    "Order events the relay put on the restaurants' Redis streams.")
ROUNDS = Counter("posmesh_outbox_relay_rounds", "Relay rounds by outcome (published: moved a "
                 "batch; idle: nothing to move; skipped: another process relays; failed).",
                 ["outcome"])
LAG = Gauge("posmesh_outbox_lag_seconds", "Age of the oldest committed order event not yet on "
            "its Redis stream (0 when none waits), sampled every ORDER_RELAY_POLL_SECONDS.")
BACKLOG = Gauge("posmesh_outbox_unpublished_events", "Committed order events not yet on their "
                "Redis stream.")

PRUNE_INTERVAL_SECONDS = 3600.0
PRUNE_BATCH = 5000
_ALREADY_PUBLISHED = "equal or smaller than the target stream top item"


_tracer = trace.get_tracer("posmesh.orders.relay")


def _publish_attributes(event: StoredEvent) -> dict:
    return {"messaging.system": "redis", "messaging.operation.type": "publish",
            "messaging.destination.name": stream_key(event.restaurant_id),
            "posmesh.event.sequence": event.sequence}


def stream_key(restaurant_id: str) -> str:
    return f"orders:events:{restaurant_id}"


def entry_id(sequence: int) -> str:
    return f"{sequence}-0"


class EventSignals:
    """In-process fan-out of "restaurant X has new committed events" (from NOTIFY)."""

    def __init__(self) -> None:
        self._listeners: set[Callable[[str], None]] = set()

    def add(self, listener: Callable[[str], None]) -> None:
        self._listeners.add(listener)

    def remove(self, listener: Callable[[str], None]) -> None:
        self._listeners.discard(listener)

    def poke(self, restaurant_id: str) -> None:
        for listener in list(self._listeners):
            listener(restaurant_id)


class NotificationListener:
    """A dedicated connection LISTENing on the outbox channel; reconnects with backoff."""

    def __init__(self, settings: Settings, signals: EventSignals) -> None:
        self._settings = settings
        self._signals = signals
        self._task: asyncio.Task | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="orders-notify-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            lost = asyncio.Event()
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(
                    store_module.dsn(self._settings), timeout=5,
                    server_settings=store_module.server_settings(self._settings,
                                                                 "posmesh-orders-listener"))
                connection.add_termination_listener(lambda _: lost.set())
                await connection.add_listener(
                    store_module.NOTIFY_CHANNEL,
                    lambda _conn, _pid, _channel, payload: self._signals.poke(payload))
                self.connected.set()
                backoff = 0.2
                # Whatever committed while we were not listening is found by the next poll; poke
                # everyone now so nobody waits for it.
                self._signals.poke("*")
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), timeout=30)
                    except asyncio.TimeoutError:
                        # A silent half-open TCP connection is only noticed by using it.
                        await connection.execute("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox NOTIFY listener lost; relying on polling until it is back",
                            extra={"error": repr(exc)})
            finally:
                self.connected.clear()
                if connection is not None and not connection.is_closed():
                    connection.terminate()
            await asyncio.sleep(backoff * (1 + random.random() / 2))
            backoff = min(backoff * 2, 5.0)


class Relay:
    def __init__(self, settings: Settings, store: OrdersStore, redis, signals: EventSignals) -> None:
        self._store = store
        self._redis = redis
        self._batch = settings.order_relay_batch_size
        self._poll = settings.order_relay_poll_seconds
        self._max_backoff = settings.order_relay_max_backoff_seconds
        self._maxlen = settings.order_event_stream_maxlen
        self._retention = timedelta(days=settings.order_event_retention_days)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._last_prune = 0.0
        self.published = 0  # events this process published (for tests and health)
        signals.add(lambda _restaurant: self._wake.set())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="orders-outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                while await self.publish_round():
                    pass  # a full batch: there may be more
                await self._prune_if_due()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                ROUNDS.labels("failed").inc()
                log.warning("outbox relay round failed; retrying in %.1fs", backoff,
                            extra={"error": repr(exc)})
                await asyncio.sleep(backoff * (1 + random.random() / 2))
                backoff = min(backoff * 2, self._max_backoff)
                self._wake.set()  # retry without waiting for a new event

    async def publish_round(self) -> bool:
        """Publishes one batch; True when the batch was full (more may be waiting)."""
        async with self._store.relay_round() as round_:
            if round_ is None:
                ROUNDS.labels("skipped").inc()
                return False  # another process is relaying
            events = await round_.unpublished(self._batch)
            if not events:
                ROUNDS.labels("idle").inc()
                return False
            await self._publish(events)
            await round_.mark_published(events)
        self.published += len(events)
        PUBLISHED.inc(len(events))
        ROUNDS.labels("published").inc()
        return len(events) == self._batch

    async def _publish(self, events: list[StoredEvent]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        spans = []
        for event in events:
            message = wire.finished_event(event.payload, event.sequence, event.created_at)
            fields = {"seq": str(event.sequence), "event": message.SerializeToString()}
            parent = telemetry.context_of(event.traceparent)
            if parent is not None:
                # A child of the request that wrote the event; the stream entry carries this
                # span on, so realtime's delivery joins the same trace.
                span = _tracer.start_span("orders.relay.publish", context=parent,
                                          kind=trace.SpanKind.PRODUCER,
                                          attributes=_publish_attributes(event))
                spans.append(span)
                with trace.use_span(span):
                    fields["tp"] = telemetry.current_traceparent()
            pipe.xadd(stream_key(event.restaurant_id), fields,
                      id=entry_id(event.sequence), maxlen=self._maxlen, approximate=True)
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, repr(exc))
            raise
        finally:
            for span in spans:
                span.end()
        for event, result in zip(events, results):
            if isinstance(result, redis.exceptions.ResponseError) and _ALREADY_PUBLISHED in str(result):
                continue  # published before a crash; Redis kept the first copy
            if isinstance(result, Exception):
                raise result

    async def _prune_if_due(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_prune < PRUNE_INTERVAL_SECONDS:
            return
        self._last_prune = loop.time()
        cutoff = datetime.now(timezone.utc) - self._retention
        deleted = PRUNE_BATCH
        while deleted == PRUNE_BATCH:
            deleted = await self._store.prune_events(cutoff, PRUNE_BATCH)
            if deleted:
                log.info("pruned %d published order events older than %s", deleted, cutoff)


class OutboxLagProbe:
    """Samples the outbox backlog for the metrics (posmesh_outbox_lag_seconds), apart from the
    relay, so a stuck relay still shows its lag growing. Every orders process samples the same
    table: dashboards and alerts take the max."""

    def __init__(self, store: OrdersStore, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="orders-outbox-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                lag, waiting = await self._store.outbox_backlog()
                LAG.set(lag)
                BACKLOG.set(waiting)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down: nothing commits meanwhile
                log.debug("outbox lag probe failed: %r", exc)
            await asyncio.sleep(self._interval)
