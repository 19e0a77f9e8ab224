"""The mail sender: one per service process, delivering the committed mails of its schema's
outbox over SMTP.

- Wakes on NOTIFY after a commit (channel `mail_outbox_<schema>`) and polls every
  MAIL_POLL_SECONDS as a safety net; a mail waiting for its retry is picked up when it is due.
- Several processes may run one each: a mail is claimed (`FOR UPDATE SKIP LOCKED`, attempts + 1,
  a lease of twice MAIL_SEND_TIMEOUT_SECONDS) before it is sent, so no two senders take it at
  once. Only a process that dies between the server's "250 OK" and recording it sends a mail
  twice (after the lease); the stable Message-ID lets a receiver tell.
- Failures are retried with exponential backoff and jitter; after MAIL_MAX_ATTEMPTS (or at once,
  when the server refuses the recipient or message with a 5xx) the mail is marked failed, logged
  as an error and kept in the table. While the server is unreachable the sender pauses (the same
  backoff, at most a minute) instead of trying every waiting mail: nothing is lost, rows wait.
- Sent and failed mails older than MAIL_RETENTION_DAYS are purged.
- Counters for metrics: `sent`, `failed`, `retries` (this process), `pending` and
  `oldest_pending_age_seconds` (the whole outbox, as of the last round).
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta
from email.utils import parseaddr
from typing import Callable

import aiosmtplib
from sqlalchemy.ext.asyncio import AsyncEngine

from posmesh.common.mail.message import compose
from posmesh.common.mail.outbox import ClaimedMail, OutboxState, OutboxStore, channel
from posmesh.common.mail.smtp import DeliveryFailure, FailureKind, SmtpTarget, classify
from posmesh.common.pg_listen import PgListener
from posmesh.common.settings import Settings

log = logging.getLogger(__name__)

PURGE_INTERVAL_SECONDS = 3600.0
PURGE_BATCH = 1000
STOP_GRACE_SECONDS = 3.0
MARK_SENT_TRIES = 4
# An unreachable server is tried again at least this often, so mail flows soon after it is back.
UNREACHABLE_PAUSE_MAX_SECONDS = 60.0
MIN_WAIT_SECONDS = 0.05


def retry_delay(attempts: int, *, base: float, cap: float,
                rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the `attempts`-th failure: base · 2^(attempts-1), at most `cap`,
    scaled by a random 0.5–1 so senders that failed together do not retry together."""
    exponential = min(cap, base * 2 ** min(max(attempts - 1, 0), 32))
    return exponential * (0.5 + rand() / 2)


def _recipient_domain(address: str) -> str:
    # Logs name the domain only: addresses are personal data, the id finds the row.
    return address.rpartition("@")[2]


class MailSender:
    def __init__(self, settings: Settings, engine: AsyncEngine, schema: str, *,
                 smtp_url: str | None = None) -> None:
        url = smtp_url or settings.smtp_url
        if not url:
            raise RuntimeError("SMTP_URL is not set (`posmesh run` starts a dev mail server and sets it)")
        self.target = SmtpTarget.from_url(url)
        if "@" not in parseaddr(settings.mail_from)[1]:
            raise RuntimeError(f"MAIL_FROM is not an address: {settings.mail_from!r}")
        self.schema = schema
        self._store = OutboxStore(engine)
        self._mail_from = settings.mail_from
        self._max_attempts = settings.mail_max_attempts
        self._base = settings.mail_retry_base_seconds
        self._cap = settings.mail_retry_max_seconds
        self._poll = settings.mail_poll_seconds
        self._send_timeout = settings.mail_send_timeout_seconds
        self._lease = timedelta(seconds=2 * settings.mail_send_timeout_seconds)
        self._retention = timedelta(days=settings.mail_retention_days)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._listener = PgListener(settings, channel(schema), self._wake.set,
                                    application_name=f"posmesh-{schema}-mail")
        self._task: asyncio.Task | None = None
        self._last_purge: float | None = None
        self.sent = 0
        self.failed = 0
        self.retries = 0
        self.pending = 0
        self.oldest_pending_age_seconds = 0.0

    def start(self) -> None:
        self._listener.start()
        self._task = asyncio.create_task(self._run(), name=f"mail-sender-{self.schema}")
        log.info("mail sender for schema %s delivering to %s", self.schema, self.target.redacted())

    async def stop(self) -> None:
        """Lets a delivery in progress finish (briefly), then stops."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_GRACE_SECONDS)
            except asyncio.TimeoutError:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._listener.stop()

    async def _run(self) -> None:
        failures = 0  # consecutive rounds that ended on an unreachable server or database
        while not self._stop.is_set():
            self._wake.clear()
            try:
                reachable = await self.deliver_due()
                state = await self.refresh_metrics()
                await self._purge_if_due()
            except Exception as exc:  # the database is away: back off, the rows wait
                failures += 1
                pause = retry_delay(failures, base=0.2, cap=self._poll)
                log.warning("mail sender round failed; retrying in %.1fs", pause,
                            extra={"error": repr(exc), "schema": self.schema})
                await self._pause(pause)
                continue
            if not reachable:
                failures += 1
                await self._pause(retry_delay(
                    failures, base=self._base, cap=min(self._cap, UNREACHABLE_PAUSE_MAX_SECONDS)))
                continue
            failures = 0
            wait = self._poll
            if state.next_due_in_seconds is not None:
                # A due mail we could not claim is being claimed by another sender right now.
                wait = min(wait, max(state.next_due_in_seconds, MIN_WAIT_SECONDS))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass

    @property
    def listening(self) -> bool:
        """Whether commits wake it now (else only its poll does)."""
        return self._listener.connected.is_set()

    async def refresh_metrics(self) -> OutboxState:
        state = await self._store.state()
        self.pending = state.pending
        self.oldest_pending_age_seconds = state.oldest_pending_age_seconds
        return state

    async def _pause(self, seconds: float) -> None:
        """Sleeps through NOTIFYs (new mails must not end a pause for an unreachable server)."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    async def deliver_due(self) -> bool:
        """Sends every due mail over one SMTP connection. False when the server could not be
        reached or used (the mail that met it is rescheduled)."""
        client: aiosmtplib.SMTP | None = None
        try:
            while not self._stop.is_set():
                claimed = await self._store.claim(self._lease)
                if claimed is None:
                    return True
                try:
                    message = compose(claimed.id, claimed.mail, mail_from=self._mail_from,
                                      created_at=claimed.created_at)
                    async with asyncio.timeout(self._send_timeout):
                        if client is None or not client.is_connected:
                            client = self.target.client(timeout=self._send_timeout)
                            await client.connect()
                        await client.send_message(message)
                except Exception as exc:
                    failure = classify(exc)
                    await self._record_failure(claimed, failure)
                    if failure.kind is FailureKind.TRANSPORT:
                        return False
                    continue
                await self._mark_sent(claimed)
            return True
        finally:
            if client is not None and client.is_connected:
                try:
                    async with asyncio.timeout(5):
                        await client.quit()
                except Exception:
                    client.close()

    async def _mark_sent(self, claimed: ClaimedMail) -> None:
        # The server has the mail: recording that must not give up at the first database hiccup,
        # or the lease runs out and another sender sends it again.
        for attempt in range(1, MARK_SENT_TRIES + 1):
            try:
                await self._store.mark_sent(claimed.id)
                break
            except Exception:
                if attempt == MARK_SENT_TRIES:
                    raise
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        self.sent += 1
        log.info("mail sent", extra={"mail_id": str(claimed.id), "template": claimed.mail.template,
                                     "attempts": claimed.attempts, "schema": self.schema})

    async def _record_failure(self, claimed: ClaimedMail, failure: DeliveryFailure) -> None:
        details = {"mail_id": str(claimed.id), "template": claimed.mail.template,
                   "to_domain": _recipient_domain(claimed.mail.to), "attempts": claimed.attempts,
                   "error": failure.error, "schema": self.schema}
        if failure.kind is FailureKind.PERMANENT or claimed.attempts >= self._max_attempts:
            await self._store.mark_failed(claimed.id, failure.error)
            self.failed += 1
            log.error("MAIL NOT DELIVERED: given up after %d attempt(s) (%s); the row stays in "
                      "%s.mail_outbox", claimed.attempts, failure.kind.value, self.schema,
                      extra=details)
            return
        delay = retry_delay(claimed.attempts, base=self._base, cap=self._cap)
        await self._store.retry_later(claimed.id, timedelta(seconds=delay), failure.error)
        self.retries += 1
        log.warning("mail delivery failed (%s); retrying in %.1fs", failure.kind.value, delay,
                    extra=details)

    async def _purge_if_due(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._last_purge is not None and now - self._last_purge < PURGE_INTERVAL_SECONDS:
            return
        self._last_purge = now
        deleted = PURGE_BATCH
        while deleted == PURGE_BATCH:
            deleted = await self._store.purge(self._retention, PURGE_BATCH)
            if deleted:
                log.info("purged %d sent or failed mails older than %s", deleted, self._retention,
                         extra={"schema": self.schema})
