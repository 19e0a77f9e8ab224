"""Access tokens made by tests: signed with the test stack's real signing key, or deliberately
broken in every way the verifier must refuse.

    token = mint_token(stack, sub=user_id, sid=session_id, exp=int(time.time()) + 3)
    for case in malformed_tokens(stack, good_token):
        reply = await edge.get("/api/v1/auth/me", headers=bearer(case.token))
        assert error_reason(reply) == case.reason
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.auth.keys import KeyRing, SigningKey

_UNSET = object()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64json(value: dict) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def current_signing_key(stack) -> SigningKey:
    """The key the stack's auth service signs with right now."""
    keyring = KeyRing(stack.settings)
    keyring.load()
    return keyring.signing_key()


def claims_for(stack, **overrides: Any) -> dict[str, Any]:
    """A complete, valid claim set; an override of None removes that claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": stack.settings.jwt_issuer, "aud": stack.settings.jwt_audience,
        "sub": str(uuid.uuid4()), "sid": str(uuid.uuid4()), "restaurant_id": "", "role": "",
        "jti": str(uuid.uuid4()), "iat": now, "exp": now + stack.settings.access_token_ttl_seconds,
    }
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def mint_token(stack, *, key: SigningKey | None = None, headers: dict | None = None,
               **overrides: Any) -> str:
    """A token signed by the stack's current signing key (or `key`), with `overrides` applied
    to a valid claim set. Use the claims of a real login (sub, sid, ...) for a live session."""
    key = key or current_signing_key(stack)
    return jwt.encode(claims_for(stack, **overrides), key.private_key, algorithm=key.algorithm,
                      headers={"kid": key.kid, "typ": "JWT", **(headers or {})})


def resign(stack, token: str, **overrides: Any) -> str:
    """`token`'s own claims with `overrides`, signed again by the current key."""
    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update({name: value for name, value in overrides.items() if value is not None})
    for name in [name for name, value in overrides.items() if value is None]:
        claims.pop(name, None)
    key = current_signing_key(stack)
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm,
                      headers={"kid": key.kid, "typ": "JWT"})


def foreign_key(kid: str = "unknown-kid") -> SigningKey:
    """A well-formed ES256 key the stack has never published."""
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


@dataclass(frozen=True)
class MalformedToken:
    name: str
    token: str
    reason: str  # what the API answers: TOKEN_INVALID or TOKEN_EXPIRED


def malformed_tokens(stack, valid: str) -> list[MalformedToken]:
    """The catalogue of tokens that must never be accepted, made from a valid one so that only
    the one defect differs."""
    header_b64, payload_b64, signature_b64 = valid.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    claims = jwt.decode(valid, options={"verify_signature": False})
    key = current_signing_key(stack)
    now = int(time.time())
    leeway = stack.settings.jwt_leeway_seconds

    def with_claims(**changes: Any) -> str:
        return resign(stack, valid, **changes)

    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_header = _b64json({"alg": "HS256", "typ": "JWT", "kid": header["kid"]})
    hs_signing_input = f"{hs_header}.{payload_b64}".encode()
    hs256_with_public_key = (f"{hs_header}.{payload_b64}."
                             + _b64(hmac.new(public_pem, hs_signing_input, hashlib.sha256).digest()))

    tampered = dict(claims, role="owner" if claims.get("role") != "owner" else "staff",
                    sub=str(uuid.uuid4()))
    cases = [
        ("alg_none", f"{_b64json({'alg': 'none', 'typ': 'JWT', 'kid': header['kid']})}.{payload_b64}.",
         "TOKEN_INVALID"),
        ("alg_none_no_signature_part",
         f"{_b64json({'alg': 'none', 'typ': 'JWT'})}.{payload_b64}", "TOKEN_INVALID"),
        ("hs256_signed_with_public_key", hs256_with_public_key, "TOKEN_INVALID"),
        ("unknown_kid", jwt.encode(claims, foreign_key().private_key, algorithm="ES256",
                                   headers={"kid": "unknown-kid"}), "TOKEN_INVALID"),
        ("known_kid_foreign_key", jwt.encode(claims, foreign_key().private_key, algorithm="ES256",
                                             headers={"kid": header["kid"]}), "TOKEN_INVALID"),
        ("wrong_audience", with_claims(aud="someone-else"), "TOKEN_INVALID"),
        ("wrong_issuer", with_claims(iss="https://evil.example"), "TOKEN_INVALID"),
        ("expired", with_claims(iat=now - 7200, exp=now - 3600), "TOKEN_EXPIRED"),
        ("not_yet_valid", with_claims(nbf=now + 3600 + leeway), "TOKEN_INVALID"),
        ("tampered_payload", f"{header_b64}.{_b64json(tampered)}.{signature_b64}", "TOKEN_INVALID"),
        ("truncated", valid[: len(valid) - 12], "TOKEN_INVALID"),
        ("garbage", "not-a-jwt", "TOKEN_INVALID"),
        ("missing_sid", with_claims(sid=None), "TOKEN_INVALID"),
        ("too_long_100kb", with_claims(padding="x" * 100_000), "TOKEN_INVALID"),
    ]
    return [MalformedToken(name, token, reason) for name, token, reason in cases]
