"""Revocations as the sockets see them: the auth service revokes a session (signed out, revoked,
membership revoked, user deactivated, role changed) and the gateway closes the matching sockets of
this process at once. The process's revocation follower (posmesh.common.revocation_follower)
hands each revocation over the moment it learns of it: from the `auth:revocations` channel within
milliseconds, or from the auth service's ListRevokedSessions within REVOCATION_POLL_SECONDS while
Redis is down.
"""

from __future__ import annotations

from dataclasses import dataclass

from posmesh.common.revocations import SessionRevocation
from services.realtime.protocol import CloseCode

# Reasons that are about the user's place in the restaurant rather than the session itself
# close with 4003; everything else (logout, session revoked, refresh token reuse...) with 4001.
_FORBIDDEN_MARKERS = ("membership", "role", "deactivat", "disabled", "removed", "suspend",
                      "employee", "delete")


@dataclass(frozen=True, slots=True)
class Revocation:
    sid: str
    user_id: str
    restaurant_id: str
    reason: str

    @classmethod
    def of(cls, revocation: SessionRevocation) -> "Revocation":
        return cls(revocation.session_id, revocation.user_id, revocation.restaurant_id,
                   revocation.reason)

    @property
    def close_code(self) -> int:
        reason = self.reason.lower()
        if any(marker in reason for marker in _FORBIDDEN_MARKERS):
            return CloseCode.FORBIDDEN
        return CloseCode.UNAUTHENTICATED

    @property
    def close_reason(self) -> str:
        """A short UPPER_SNAKE reason for the close frame (at most 123 bytes)."""
        text = "".join(ch if ch.isalnum() else "_" for ch in (self.reason or "revoked")).upper()
        return (text.strip("_") or "REVOKED")[:60]

