"""The revocation follower (posmesh.common.revocation_follower): how a process's revocation set is
kept current from the channel and from the revocation source, and what it says when it cannot
be. The channel and the source are in-memory fakes; polls are fast; no servers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timedelta, timezone

import pytest

from posmesh.common.revocation_follower import (
    LIVE,
    POLL_OVERLAP,
    POLLING,
    STALE,
    RevocationBatch,
    RevocationFollower,
)
from posmesh.common.revocations import RevocationSet, SessionRevocation
from posmesh.common.tokens import REVOCATIONS_CHANNEL

POLL = 0.05


class FakeListener:
    """The ChannelListener interface, driven by the test: subscribe, lose, publish."""

    def __init__(self) -> None:
        self.handlers = {}
        self.on_subscribed, self.on_lost = [], []
        self.subscribed = asyncio.Event()
        self.started = False

    def handle(self, channel, handler) -> None:
        self.handlers[channel] = handler

    def when_subscribed(self, callback) -> None:
        self.on_subscribed.append(callback)

    def when_lost(self, callback) -> None:
        self.on_lost.append(callback)

    def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    def subscribe(self) -> None:
        self.subscribed.set()
        for callback in self.on_subscribed:
            callback()

    def lose(self) -> None:
        self.subscribed.clear()
        for callback in self.on_lost:
            callback()

    def publish(self, sid: str, reason: str = "LOGOUT", user_id: str = "u-1") -> None:
        if self.subscribed.is_set():
            self.handlers[REVOCATIONS_CHANNEL](json.dumps(
                {"sid": sid, "user_id": user_id, "restaurant_id": "r-1", "reason": reason}))


class FakeSource:
    """The auth service's revocations: a list, and a switch that makes it unreachable."""

    def __init__(self) -> None:
        self.revocations: list[SessionRevocation] = []
        self.down = False
        self.asked: list[datetime | None] = []

    def revoke(self, sid: str, reason: str = "LOGOUT") -> None:
        self.revocations.append(SessionRevocation(sid, "u-1", "r-1", reason, time.time()))

    async def revoked_since(self, since: datetime | None) -> RevocationBatch:
        self.asked.append(since)
        if self.down:
            raise ConnectionError("auth is unreachable")
        floor = since.timestamp() if since is not None else 0
        return RevocationBatch([r for r in self.revocations if r.revoked_at >= floor],
                               datetime.now(timezone.utc))


@pytest.fixture
def parts():
    revocations = RevocationSet(lifetime_seconds=970, max_entries=1000)
    listener, source = FakeListener(), FakeSource()
    follower = RevocationFollower(revocations, source, listener, poll_seconds=POLL,
                                  resync_seconds=60, owns_listener=True)
    handed_over: list[SessionRevocation] = []
    follower.on_revoked(handed_over.append)
    return follower, revocations, listener, source, handed_over


async def until(check, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.01)


async def test_a_process_knows_recent_revocations_when_start_returns(parts):
    follower, revocations, listener, source, handed_over = parts
    source.revoke("s-before-restart", "MEMBERSHIP_REVOKED")

    await follower.start()
    try:
        assert revocations.reason("s-before-restart") == "MEMBERSHIP_REVOKED"
        assert [r.session_id for r in handed_over] == ["s-before-restart"]
        assert listener.started and source.asked == [None]  # the whole lifetime the first time
    finally:
        await follower.stop()


async def test_a_revocation_on_the_channel_is_refused_at_once_and_handed_over_once(parts):
    follower, revocations, listener, source, handed_over = parts
    await follower.start()
    listener.subscribe()
    try:
        listener.publish("s-1")
        assert revocations.is_revoked("s-1")
        listener.publish("s-1")
        assert [r.session_id for r in handed_over] == ["s-1"]
    finally:
        await follower.stop()


async def test_a_message_naming_only_a_user_is_handed_over_without_entering_the_set(parts):
    follower, revocations, listener, source, handed_over = parts
    await follower.start()
    listener.subscribe()
    try:
        listener.publish("", user_id="u-9")
        assert [r.user_id for r in handed_over] == ["u-9"] and len(revocations) == 0
    finally:
        await follower.stop()


async def test_after_a_resubscription_a_load_makes_up_for_what_the_channel_missed(parts):
    follower, revocations, listener, source, handed_over = parts
    await follower.start()
    listener.subscribe()
    try:
        await until(lambda: follower.state == LIVE)
        listener.lose()
        source.revoke("s-missed")  # published while the subscription was down: lost
        listener.subscribe()
        await until(lambda: revocations.is_revoked("s-missed"))
        await until(lambda: follower.state == LIVE)
    finally:
        await follower.stop()


async def test_while_the_channel_is_down_revocations_arrive_within_the_poll_interval(parts):
    follower, revocations, listener, source, handed_over = parts
    await follower.start()  # never subscribed: Redis is down
    try:
        source.revoke("s-during-outage")
        started = time.monotonic()
        await until(lambda: revocations.is_revoked("s-during-outage"))
        assert time.monotonic() - started < POLL * 10
        assert follower.state == POLLING and follower.problem() is None
        assert [r.session_id for r in handed_over] == ["s-during-outage"]
    finally:
        await follower.stop()


async def test_polls_ask_only_for_what_is_new_with_an_overlap_for_late_commits(parts):
    follower, revocations, listener, source, handed_over = parts
    await follower.start()
    try:
        await until(lambda: len(source.asked) >= 3)
        later = [since for since in source.asked[1:] if since is not None]
        assert later, source.asked
        assert all(datetime.now(timezone.utc) - since < POLL_OVERLAP + timedelta(seconds=5)
                   for since in later)
    finally:
        await follower.stop()


async def test_with_the_channel_and_the_source_down_known_revocations_are_still_refused_and_it_says_so(
        parts, caplog):
    follower, revocations, listener, source, handed_over = parts
    source.revoke("s-known")
    await follower.start()
    listener.subscribe()
    await until(lambda: follower.state == LIVE)
    try:
        with caplog.at_level(logging.ERROR, logger="posmesh.common.revocation_follower"):
            source.down = True
            listener.lose()
            source.revocations.append(SessionRevocation("s-unseen", "u-2", "r-1", "LOGOUT",
                                                        time.time()))
            await until(lambda: follower.state == STALE)
            await until(lambda: "STALE" in caplog.text)
        assert revocations.is_revoked("s-known")
        assert not revocations.is_revoked("s-unseen")  # allowed: nothing can know it yet
        assert "refusing only the 1 revocations known" in follower.problem()
        assert follower.status()["state"] == STALE
        # Either one coming back is enough to catch up.
        source.down = False
        await until(lambda: revocations.is_revoked("s-unseen"))
        assert follower.problem() is None
    finally:
        await follower.stop()


async def test_start_gives_up_waiting_for_an_unreachable_source_and_keeps_trying(parts):
    follower, revocations, listener, source, handed_over = parts
    source.down = True
    started = time.monotonic()
    await follower.start(wait_seconds=0.2)
    try:
        assert time.monotonic() - started < 2
        assert follower.state == STALE and follower.problem()
        source.down = False
        source.revoke("s-1")
        await until(lambda: revocations.is_revoked("s-1"))
        assert follower.state == POLLING
    finally:
        await follower.stop()
