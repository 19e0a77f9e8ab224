"""Keeps a process's RevocationSet current, whether Redis is up or not.

- The `auth:revocations` channel (pub/sub) brings each revocation within milliseconds.
- A load from the revocation source (the auth service's ListRevokedSessions, PostgreSQL behind
  it; the auth service reads its own database) fills the set at start, again after every
  (re)subscription (messages published while the subscription was down are lost), every
  REVOCATION_POLL_SECONDS while the channel is down, and every REVOCATION_RESYNC_SECONDS while it
  is up (a safety net for a message lost without the subscription noticing).

States: LIVE (subscribed, and loaded since subscribing), POLLING (the channel is down or not
caught up, the source answered within the last few polls), STALE (neither answers: the set still
refuses every revocation it knows and allows everything else — logged as an error, repeated
every minute, and reported by health). Each transition is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Protocol

from posmesh.common.pubsub import ChannelListener
from posmesh.common.revocations import RevocationSet, SessionRevocation, parse_message
from posmesh.common.tokens import REVOCATIONS_CHANNEL

log = logging.getLogger(__name__)

LIVE, POLLING, STALE = "LIVE", "POLLING", "STALE"
# A poll asks again for this much before the previous read time: a revocation is stamped just
# before its transaction commits, so one committed after a read may carry an earlier time.
POLL_OVERLAP = timedelta(seconds=60)
# Without an answer for this many poll intervals, the set is STALE.
STALE_AFTER_POLLS = 3
REMIND_STALE_SECONDS = 60.0
START_RETRY_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class RevocationBatch:
    revocations: list[SessionRevocation]
    read_time: datetime  # the source's clock when it read them


class RevocationSource(Protocol):
    async def revoked_since(self, since: datetime | None) -> RevocationBatch:
        """Sessions revoked at or after `since` (None: within the whole revocation lifetime)."""


OnRevoked = Callable[[SessionRevocation], None]


class RevocationFollower:
    def __init__(self, revocations: RevocationSet, source: RevocationSource,
                 listener: ChannelListener, *, poll_seconds: float, resync_seconds: float,
                 owns_listener: bool) -> None:
        self.revocations = revocations
        self._source = source
        self._listener = listener
        self._owns_listener = owns_listener
        self._poll_seconds = poll_seconds
        self._resync_seconds = resync_seconds
        self._stale_after = poll_seconds * STALE_AFTER_POLLS
        self._subscription = 0  # counts (re)subscriptions
        self._synced_subscription = -1  # the subscription the newest successful load ran under
        self._watermark: datetime | None = None
        self._last_sync: float | None = None  # monotonic
        self._started_at = time.monotonic()
        self._failure = ""
        self._on_revoked: list[OnRevoked] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._reported = ""
        self._reported_at = 0.0
        listener.handle(REVOCATIONS_CHANNEL, self._on_message)
        listener.when_subscribed(self._on_subscribed)
        listener.when_lost(self._on_lost)

    def on_revoked(self, callback: OnRevoked) -> None:
        """`callback(revocation)` for each revocation this process learns of (at most once per
        session), and for channel messages that name only a user."""
        self._on_revoked.append(callback)

    # --- state -------------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return self._listener.subscribed.is_set() and \
            self._synced_subscription == self._subscription

    @property
    def state(self) -> str:
        if self.live:
            return LIVE
        if self._last_sync is not None and time.monotonic() - self._last_sync <= self._stale_after:
            return POLLING
        return STALE

    def status(self) -> dict:
        """For health pages: the state, how many revocations are known, the last load's age."""
        synced = None if self._last_sync is None else round(time.monotonic() - self._last_sync, 1)
        return {"state": self.state, "known": len(self.revocations),
                "subscribed": self._listener.subscribed.is_set(),
                "synced_seconds_ago": synced, "error": self.problem() or ""}

    def problem(self) -> str | None:
        """Why revocations may be missed right now; None while they are not."""
        if self.state == STALE:
            quiet = time.monotonic() - (self._last_sync or self._started_at)
            return (f"neither the revocation channel nor the revocation source has answered for "
                    f"{quiet:.0f}s ({self._failure or 'no load yet'}); refusing only the "
                    f"{len(self.revocations)} revocations known")
        if self.revocations.forgetting():
            return (f"the revocation set is full: {self.revocations.forgotten} revocations were "
                    f"forgotten before their expiry")
        return None

    # --- the channel -------------------------------------------------------------------------

    def _on_message(self, payload: bytes | str) -> None:
        revocation = parse_message(payload)
        if revocation is None:
            log.warning("ignoring a malformed revocation message")
            return
        if self.revocations.add(revocation) or not revocation.session_id:
            self._notify([revocation])

    def _on_subscribed(self) -> None:
        self._subscription += 1
        self._wake.set()

    def _on_lost(self) -> None:
        self._wake.set()

    def _notify(self, revocations: list[SessionRevocation]) -> None:
        for callback in self._on_revoked:
            for revocation in revocations:
                try:
                    callback(revocation)
                except Exception:
                    log.exception("acting on a revocation failed")

    # --- loads -------------------------------------------------------------------------------

    async def sync(self) -> bool:
        """Loads what the source has since the previous load (everything the first time)."""
        async with self._lock:
            subscription = self._subscription if self._listener.subscribed.is_set() else None
            since = self._watermark - POLL_OVERLAP if self._watermark is not None else None
            try:
                batch = await self._source.revoked_since(since)
            except Exception as exc:  # the source is down: report it, keep what is known
                self._failure = _describe(exc)
                return False
            fresh = [revocation for revocation in batch.revocations
                     if self.revocations.add(revocation)]
            self._watermark = batch.read_time
            self._last_sync = time.monotonic()
            self._failure = ""
            if subscription is not None and subscription == self._subscription:
                self._synced_subscription = subscription
        if fresh:
            if self._reported == LIVE:
                log.warning("%d revocation(s) reached this process by a load, not the channel",
                            len(fresh))
            else:
                log.info("loaded %d revocation(s) from the revocation source", len(fresh))
            self._notify(fresh)
        return True

    async def _run(self) -> None:
        while True:
            delay = self._resync_seconds if self.live else self._poll_seconds
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self.sync()
            self.revocations.purge()
            self._report()

    def _report(self) -> None:
        state, now = self.state, time.monotonic()
        if state == self._reported and not (
                state == STALE and now - self._reported_at >= REMIND_STALE_SECONDS):
            return
        known = len(self.revocations)
        if state == LIVE:
            log.info("revocations live: subscribed to %s, %d known", REVOCATIONS_CHANNEL, known)
        elif state == POLLING:
            log.warning("revocation channel unavailable: loading revocations every %gs instead "
                        "(%d known)", self._poll_seconds, known)
        else:
            log.error("revocations STALE: %s; tokens of every other session are accepted until "
                      "the channel or the source answers", self.problem())
        self._reported, self._reported_at = state, now

    async def start(self, *, wait_seconds: float = 10.0) -> None:
        """Subscribes (when it owns the listener), loads once — retrying up to `wait_seconds`, so
        a process knows recent revocations before it serves — and follows from then on."""
        if self._owns_listener:
            self._listener.start()
        deadline = time.monotonic() + wait_seconds
        while not await self.sync() and time.monotonic() < deadline:
            await asyncio.sleep(START_RETRY_SECONDS)
        if self._last_sync is None:
            log.error("could not load recent revocations at start (%s); retrying every %gs",
                      self._failure, self._poll_seconds)
        self._task = asyncio.create_task(self._run(), name="revocations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._owns_listener:
            await self._listener.stop()


def _describe(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    if callable(code):  # grpc.aio.AioRpcError
        try:
            return f"{code().name}: {exc.details()}"  # type: ignore[attr-defined]
        except Exception:
            pass
    return repr(exc)
