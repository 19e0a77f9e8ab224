"""The local revocation set every process checks tokens against: the sessions revoked within the
revocation lifetime, with their reason, in memory. `is_revoked(sid)` is a dict lookup: no I/O on
the request path. posmesh.common.revocation_follower keeps it current (the `auth:revocations`
channel, and the auth service's ListRevokedSessions when the channel cannot be trusted).

A revocation matters only while an access token of its session can still be valid, so each entry
expires `revocation_lifetime_seconds` after the revocation and the set never holds more than the
revocations of that window (and never more than `max_entries`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Callable

from posmesh.common.settings import Settings

log = logging.getLogger(__name__)

# Clock skew allowed between the auth service (which stamps revocations) and the others.
CLOCK_SKEW_SECONDS = 60
DEFAULT_REASON = "REVOKED"


def revocation_lifetime_seconds(settings: Settings) -> int:
    """After this long no access token of a revoked session can still be valid anywhere: its
    lifetime, the verifiers' leeway and a minute of clock skew. The `auth:revoked:{sid}` marker
    lives exactly as long."""
    return settings.access_token_ttl_seconds + settings.jwt_leeway_seconds + CLOCK_SKEW_SECONDS


@dataclass(frozen=True, slots=True)
class SessionRevocation:
    session_id: str
    user_id: str
    restaurant_id: str  # "" when the session had none
    reason: str
    # When it was revoked (seconds since the epoch, the auth service's clock); None for a channel
    # message, which is taken as "just now".
    revoked_at: float | None = None


def parse_message(payload: bytes | str) -> SessionRevocation | None:
    """A message of the `auth:revocations` channel, `{"sid", "user_id", "restaurant_id",
    "reason"}`; None when malformed or naming neither a session nor a user."""
    try:
        body = json.loads(payload)
    except (ValueError, TypeError):
        return None
    if not isinstance(body, dict):
        return None

    def text(name: str) -> str:
        value = body.get(name)
        return value.strip() if isinstance(value, str) else ""

    revocation = SessionRevocation(text("sid"), text("user_id"), text("restaurant_id"),
                                   text("reason"))
    if not revocation.session_id and not revocation.user_id:
        return None
    return revocation


class RevocationSet:
    """Session id -> (expiry, reason), in insertion order.

    Revocations arrive roughly in the order they expire (the channel in real time, loads oldest
    first), so `purge` drops expired entries from the front and stops at the first live one; an
    entry that arrived out of order is dropped a little later, and a lookup never trusts an
    expired entry meanwhile. Beyond `max_entries` the oldest entries are forgotten first (they
    are the nearest to expiry), which is logged and reported by `forgotten_until`.
    """

    def __init__(self, *, lifetime_seconds: float, max_entries: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.lifetime_seconds = lifetime_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, str]] = {}
        self.forgotten = 0
        # While the clock is before this, a forgotten revocation may still matter.
        self.forgotten_until = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def reason(self, session_id: str) -> str | None:
        """Why the session was revoked, or None while it is not known to be."""
        entry = self._entries.get(session_id)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    def is_revoked(self, session_id: str) -> bool:
        return self.reason(session_id) is not None

    def add(self, revocation: SessionRevocation) -> bool:
        """Records a revocation; True when it was not known yet (callers act on new ones only)."""
        if not revocation.session_id:
            return False
        now = self._clock()
        revoked_at = now if revocation.revoked_at is None else min(revocation.revoked_at, now)
        expires_at = revoked_at + self.lifetime_seconds
        if expires_at <= now:
            return False
        known = self._entries.pop(revocation.session_id, None)
        if known is not None and known[0] > now:
            # Known already: keep the later expiry, and move it back where that expiry belongs.
            self._entries[revocation.session_id] = (max(known[0], expires_at), known[1])
            return False
        self._entries[revocation.session_id] = (
            expires_at, sys.intern(revocation.reason or DEFAULT_REASON))
        if len(self._entries) > self.max_entries:
            self._forget_oldest(len(self._entries) - self.max_entries + self.max_entries // 100)
        return True

    def purge(self) -> int:
        """Drops expired entries from the front; returns how many."""
        now = self._clock()
        expired = []
        for session_id, (expires_at, _) in self._entries.items():
            if expires_at > now:
                break
            expired.append(session_id)
        for session_id in expired:
            del self._entries[session_id]
        return len(expired)

    def _forget_oldest(self, count: int) -> None:
        # In one pass: popping the first key one at a time rescans the dict's deleted slots.
        oldest = []
        for session_id, (expires_at, _) in self._entries.items():
            if len(oldest) >= count:
                break
            oldest.append((session_id, expires_at))
        for session_id, _ in oldest:
            del self._entries[session_id]
        live = [expires_at for _, expires_at in oldest if expires_at > self._clock()]
        if live:
            self.forgotten += len(live)
            self.forgotten_until = max(self.forgotten_until, max(live))
            log.error("the revocation set is full (%d entries): forgot the %d revocations nearest "
                      "their expiry, whose tokens are accepted again until then; raise "
                      "REVOCATION_SET_MAX_ENTRIES", self.max_entries, len(live))

    def forgetting(self) -> bool:
        """Whether a revocation forgotten for lack of room may still matter."""
        return self.forgotten_until > self._clock()
