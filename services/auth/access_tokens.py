"""Signing access tokens with the key ring's current key (ES256, `kid` header)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

from posmesh.common import approvals
from posmesh.common.settings import Settings
from services.auth.keys import KeyRing


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    token: str
    jti: str
    expires_at: int  # unix seconds


class AccessTokenIssuer:
    def __init__(self, settings: Settings, keyring: KeyRing) -> None:
        self._keyring = keyring
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self.ttl_seconds = settings.access_token_ttl_seconds

    def issue(self, *, user_id: str, session_id: str, restaurant_id: str, role: str,
              now: float | None = None, device_id: str = "", device_type: str = "",
              ttl_seconds: int | None = None) -> IssuedAccessToken:
        """A person's token (`user_id`), a device's own (`device_id`, no user) or a staff
        session's on a device (both). `ttl_seconds` shortens the lifetime (a staff session's
        idle lock)."""
        moment = time.time() if now is None else now
        key = self._keyring.signing_key(moment)  # the exact time: a key may start mid-second
        issued_at = int(moment)
        jti = str(uuid.uuid4())
        expires_at = issued_at + min(self.ttl_seconds, ttl_seconds or self.ttl_seconds)
        claims = {
            "iss": self._issuer, "aud": self._audience, "sub": user_id, "sid": session_id,
            "restaurant_id": restaurant_id, "role": role, "jti": jti,
            "iat": issued_at, "exp": expires_at,
        }
        if device_id:
            claims["device_id"], claims["device_type"] = device_id, device_type
        token = jwt.encode(claims, key.private_key, algorithm=key.algorithm,
                           headers={"kid": key.kid, "typ": "JWT"})
        return IssuedAccessToken(token, jti, expires_at)

    def issue_approval(self, *, action: str, resource_id: str, approver: str, restaurant_id: str,
                       device_id: str, session_id: str, ttl_seconds: int,
                       now: float | None = None) -> IssuedAccessToken:
        """A manager's approval of one action (posmesh.common.approvals)."""
        moment = time.time() if now is None else now
        key = self._keyring.signing_key(moment)
        jti = str(uuid.uuid4())
        expires_at = int(moment) + ttl_seconds
        claims = {
            "iss": self._issuer, "aud": approvals.audience(self._audience), "jti": jti,
            "iat": int(moment), "exp": expires_at, "action": action, "resource_id": resource_id,
            "approver": approver, "restaurant_id": restaurant_id, "device_id": device_id,
            "sid": session_id,
        }
        token = jwt.encode(claims, key.private_key, algorithm=key.algorithm,
                           headers={"kid": key.kid, "typ": approvals.TYPE})
        return IssuedAccessToken(token, jti, expires_at)
