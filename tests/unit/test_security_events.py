"""posmesh.common.security_events: one API that logs and stores, never blocks, and never lets
client input break or bloat the record."""

from __future__ import annotations

import asyncio

from posmesh.common import security_events


class MemorySink:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[security_events.SecurityEvent] = []
        self.fail = fail

    async def write(self, event: security_events.SecurityEvent) -> None:
        if self.fail:
            raise ConnectionError("auth is down")
        self.events.append(event)


async def recorded(sink: MemorySink, **fields) -> list[security_events.SecurityEvent]:
    security_events.configure(sink)
    try:
        security_events.record("TENANT_MISMATCH", **fields)
        await security_events.flush()
    finally:
        security_events.configure(None)
    return sink.events


async def test_an_event_reaches_the_sink_with_its_fields():
    [event] = await recorded(MemorySink(), ip="203.0.113.7", user_id="u1", restaurant_id="r1",
                             requested_restaurant_id="r2")
    assert (event.type, event.ip, event.user_id, event.restaurant_id) == (
        "TENANT_MISMATCH", "203.0.113.7", "u1", "r1")
    assert event.details == {"requested_restaurant_id": "r2"}


async def test_client_supplied_values_are_capped_so_the_record_stays_small():
    [event] = await recorded(MemorySink(), restaurant_id="r" * 50_000, requested_restaurant_id="x" * 50_000)
    assert len(event.restaurant_id) < 400
    assert len(event.details["requested_restaurant_id"]) < 400
    assert event.details["requested_restaurant_id"].startswith("x" * 256)


async def test_a_nul_character_cannot_keep_an_event_out_of_the_store():
    [event] = await recorded(MemorySink(), requested_restaurant_id="r1\x00' OR 1=1")
    assert "\x00" not in event.details["requested_restaurant_id"]
    assert event.details["requested_restaurant_id"] == "r1\\x00' OR 1=1"


async def test_a_failing_sink_never_raises_into_the_request(caplog):
    events = await recorded(MemorySink(fail=True), user_id="u1")
    assert events == []
    assert "could not store security event TENANT_MISMATCH" in caplog.text


async def test_recording_returns_before_the_sink_finishes():
    class SlowSink(MemorySink):
        async def write(self, event):
            await asyncio.sleep(0.5)
            await super().write(event)

    sink = SlowSink()
    security_events.configure(sink)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        security_events.record("ACCESS_DENIED", user_id="u1")
        assert loop.time() - started < 0.05
        assert sink.events == []
        await security_events.flush()
        assert len(sink.events) == 1
    finally:
        security_events.configure(None)
