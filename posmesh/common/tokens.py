"""Access-token verification shared by every service: local, against the auth service's JWKS.

No network call per request: keys are parsed once into a KeySet that a background task refreshes.
Only the algorithms in ALLOWED_ALGORITHMS are accepted, and each key is bound to its own
algorithm, so `alg: none` and HS256-signed-with-the-public-key tokens never verify.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable

import jwt

from posmesh.common.errors import Unauthenticated

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS = frozenset({"ES256", "EdDSA"})
MAX_TOKEN_BYTES = 8192
REQUIRED_CLAIMS = ("iss", "aud", "sub", "sid", "jti", "iat", "exp")


def token_expired(message: str = "the access token has expired") -> Unauthenticated:
    return Unauthenticated("TOKEN_EXPIRED", f"{message}; refresh it with POST /api/v1/auth/refresh",
                           action="REFRESH_TOKEN")


def token_invalid(message: str) -> Unauthenticated:
    return Unauthenticated("TOKEN_INVALID", message)


def session_revoked(message: str = "this session has been signed out") -> Unauthenticated:
    return Unauthenticated("SESSION_REVOKED", f"{message}; sign in again", action="LOGIN")


@dataclass(frozen=True, slots=True)
class Claims:
    iss: str
    aud: str
    sub: str
    sid: str
    restaurant_id: str
    role: str
    jti: str
    iat: int
    exp: int
    # A paired device's tokens (its own, with no user: `sub` empty; or a staff session on it).
    device_id: str = ""
    device_type: str = ""

    @property
    def device_only(self) -> bool:
        """A device's own token: no person behind it."""
        return not self.sub and bool(self.device_id)


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str
    algorithm: str
    key: object  # a parsed public key object from cryptography


class KeySet:
    """The public keys tokens may be signed with, by kid. Replaced atomically on refresh."""

    def __init__(self) -> None:
        self._keys: dict[str, VerificationKey] = {}
        self.loaded_at = 0.0

    def get(self, kid: str) -> VerificationKey | None:
        return self._keys.get(kid)

    def kids(self) -> list[str]:
        return sorted(self._keys)

    def load_jwks(self, jwks: dict) -> None:
        keys: dict[str, VerificationKey] = {}
        for entry in jwks.get("keys", []):
            kid, alg = entry.get("kid"), entry.get("alg")
            if not kid or alg not in ALLOWED_ALGORITHMS or entry.get("use", "sig") != "sig":
                log.warning("ignoring unusable JWK", extra={"kid": kid, "alg": alg})
                continue
            keys[kid] = VerificationKey(kid, alg, jwt.PyJWK(entry, algorithm=alg).key)
        self._keys = keys
        self.loaded_at = time.monotonic()


class TokenVerifier:
    """Verifies signature, algorithm, issuer, audience and expiry; CPU only (~0.2 ms).

    A till sends the same access token with every request for its whole lifetime, so verified
    tokens are remembered (exact token string -> claims, bounded LRU): a repeat costs a dict
    lookup instead of an ECDSA verification. A remembered token is used only while it has not
    expired and its key is still in the key set; anything else is verified from scratch.
    """

    CACHE_SIZE = 4096

    def __init__(self, keys: KeySet, *, issuer: str, audience: str, leeway_seconds: int,
                 on_unknown_kid: Callable[[str], None] | None = None) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway_seconds
        self._on_unknown_kid = on_unknown_kid
        self._verified: OrderedDict[str, tuple[Claims, str]] = OrderedDict()

    def verify(self, token: str) -> Claims:
        remembered = self._verified.get(token)
        if remembered is not None:
            claims, kid = remembered
            if claims.exp + self.leeway > time.time() and self.keys.get(kid) is not None:
                self._verified.move_to_end(token)
                return claims
            del self._verified[token]
        claims, kid = self._verify_from_scratch(token)
        self._verified[token] = (claims, kid)
        if len(self._verified) > self.CACHE_SIZE:
            self._verified.popitem(last=False)
        return claims

    def _verify_from_scratch(self, token: str) -> tuple[Claims, str]:
        if not token:
            raise token_invalid("no access token was sent")
        if len(token) > MAX_TOKEN_BYTES:
            raise token_invalid("the access token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise token_invalid("the access token is not a well-formed JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALLOWED_ALGORITHMS:
            raise token_invalid(f"tokens signed with {str(alg)[:16]!r} are not accepted")
        if not isinstance(kid, str) or not kid:
            raise token_invalid("the access token has no key id (kid)")
        key = self.keys.get(kid)
        if key is None:
            if self._on_unknown_kid is not None:
                self._on_unknown_kid(kid)
            raise token_invalid("the access token was signed with an unknown key")
        if key.algorithm != alg:
            raise token_invalid("the access token's algorithm does not match its key")
        try:
            payload = jwt.decode(
                token,
                key=key.key,
                algorithms=[key.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise token_expired() from None
        except jwt.ImmatureSignatureError:
            raise token_invalid("the access token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise token_invalid("the access token is meant for another audience") from None
        except jwt.InvalidIssuerError:
            raise token_invalid("the access token was issued by someone else") from None
        except jwt.MissingRequiredClaimError as exc:
            raise token_invalid(f"the access token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise token_invalid("the access token's signature or payload is invalid") from None
        return _claims(payload), kid


def _claims(payload: dict) -> Claims:
    def text(name: str) -> str:
        value = payload.get(name) or ""
        if not isinstance(value, str):
            raise token_invalid(f"the access token's {name!r} claim is not a string")
        return value

    aud = payload["aud"]
    try:
        return Claims(
            iss=text("iss"),
            aud=aud if isinstance(aud, str) else ",".join(aud),
            sub=text("sub"),
            sid=text("sid"),
            restaurant_id=text("restaurant_id"),
            role=text("role"),
            jti=text("jti"),
            iat=int(payload["iat"]),
            exp=int(payload["exp"]),
            device_id=text("device_id"),
            device_type=text("device_type"),
        )
    except (TypeError, ValueError):
        raise token_invalid("the access token's time claims are not numbers") from None


def revoked_key(session_id: str) -> str:
    """The auth service's Redis marker of a revoked session (for other readers: services check
    their local revocation set, posmesh.common.revocations, with no Redis round trip)."""
    return f"auth:revoked:{session_id}"


REVOCATIONS_CHANNEL = "auth:revocations"


class JwksRefresher:
    """Keeps a KeySet fresh from a JWKS fetcher: periodically, and soon after an unknown kid."""

    def __init__(self, keys: KeySet, fetch: Callable[[], Awaitable[dict]], *,
                 interval_seconds: float, min_gap_seconds: float = 2.0) -> None:
        self.keys = keys
        self._fetch = fetch
        self._interval = interval_seconds
        self._min_gap = min_gap_seconds
        self._wake = asyncio.Event()
        self._last_attempt = 0.0
        self._task: asyncio.Task | None = None

    async def refresh(self) -> bool:
        self._last_attempt = time.monotonic()
        try:
            self.keys.load_jwks(await self._fetch())
            return True
        except Exception as exc:
            log.warning("JWKS refresh failed", extra={"error": repr(exc)})
            return False

    def request_refresh(self, _kid: str = "") -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            delay = self._interval if self.keys.kids() else 1.0
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            gap = time.monotonic() - self._last_attempt
            if gap < self._min_gap:
                await asyncio.sleep(self._min_gap - gap)
            await self.refresh()

    async def start(self, *, wait_seconds: float = 10.0) -> None:
        deadline = time.monotonic() + wait_seconds
        while not await self.refresh() and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        self._task = asyncio.create_task(self._run(), name="jwks-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def jwks_from_http_body(body: bytes) -> dict:
    return json.loads(body)
