"""The auth service's own metrics (the platform's, RED per RPC and the rest, are common)."""

from __future__ import annotations

from prometheus_client import Counter

# outcome: OK, or the ErrorInfo reason of the refusal (INVALID_CREDENTIALS, TOO_MANY_ATTEMPTS,
# NOT_A_MEMBER, ...): a fixed catalogue, so the label stays bounded.
LOGINS = Counter("posmesh_auth_logins", "Sign-ins by outcome (OK or the refusal's reason).",
                 ["outcome"])
LOCKOUTS = Counter("posmesh_auth_lockouts", "Sign-ins that locked an account or a client "
                   "address out, by what was locked.", ["locked"])
REFRESH_REUSE = Counter("posmesh_auth_refresh_reuse_detections", "Rotated refresh tokens "
                        "presented again after the grace window (the session was ended).")
