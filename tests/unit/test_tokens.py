"""posmesh.common.tokens: local verification against a JWKS, with an algorithm allowlist, and the
names of the revocation marker and channel. Pure logic: keys are generated in memory. (The
revocation check itself: test_revocations.py.)"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from posmesh.common.errors import Unauthenticated
from posmesh.common.tokens import (
    MAX_TOKEN_BYTES,
    REVOCATIONS_CHANNEL,
    JwksRefresher,
    KeySet,
    TokenVerifier,
    revoked_key,
)
from services.auth.keys import public_jwk

ISSUER, AUDIENCE, LEEWAY = "https://auth.test", "posmesh-test", 10


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def keyset(key) -> KeySet:
    keys = KeySet()
    keys.load_jwks({"keys": [public_jwk("k1", key.public_key())]})
    return keys


@pytest.fixture
def verifier(keyset) -> TokenVerifier:
    return TokenVerifier(keyset, issuer=ISSUER, audience=AUDIENCE, leeway_seconds=LEEWAY)


def claims(**overrides) -> dict:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(uuid.uuid4()), "sid": str(uuid.uuid4()),
            "restaurant_id": str(uuid.uuid4()), "role": "staff", "jti": str(uuid.uuid4()),
            "iat": now, "exp": now + 900}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def sign(key, payload: dict, kid: str = "k1", alg: str = "ES256") -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def reason_of(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    return caught.value.reason


def test_a_valid_token_yields_its_claims(verifier, key):
    payload = claims()
    verified = verifier.verify(sign(key, payload))
    assert (verified.sub, verified.sid, verified.restaurant_id, verified.role, verified.jti) == (
        payload["sub"], payload["sid"], payload["restaurant_id"], payload["role"], payload["jti"])
    assert verified.iss == ISSUER and verified.aud == AUDIENCE and verified.exp == payload["exp"]


def test_alg_none_is_refused(verifier):
    header = _b64(json.dumps({"alg": "none", "kid": "k1"}).encode())
    body = _b64(json.dumps(claims()).encode())
    assert reason_of(verifier, f"{header}.{body}.") == "TOKEN_INVALID"


def test_hs256_signed_with_the_public_key_is_refused(verifier, key):
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = _b64(json.dumps(claims()).encode())
    signature = _b64(hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest())
    assert reason_of(verifier, f"{header}.{body}.{signature}") == "TOKEN_INVALID"


def test_an_unknown_kid_is_refused_and_asks_for_a_key_refresh(keyset, key):
    asked = []
    verifier = TokenVerifier(keyset, issuer=ISSUER, audience=AUDIENCE, leeway_seconds=LEEWAY,
                             on_unknown_kid=asked.append)
    assert reason_of(verifier, sign(key, claims(), kid="k9")) == "TOKEN_INVALID"
    assert asked == ["k9"]


def test_a_foreign_key_under_a_known_kid_is_refused(verifier):
    stranger = ec.generate_private_key(ec.SECP256R1())
    assert reason_of(verifier, sign(stranger, claims())) == "TOKEN_INVALID"


def test_an_algorithm_other_than_the_keys_own_is_refused(keyset):
    edkey = ed25519.Ed25519PrivateKey.generate()
    verifier = TokenVerifier(keyset, issuer=ISSUER, audience=AUDIENCE, leeway_seconds=LEEWAY)
    assert reason_of(verifier, sign(edkey, claims(), alg="EdDSA")) == "TOKEN_INVALID"


@pytest.mark.parametrize("override", [{"aud": "other-api"}, {"iss": "https://evil.test"},
                                      {"sid": None}, {"sub": None}, {"exp": None}, {"jti": None}])
def test_wrong_audience_issuer_or_missing_claims_are_refused(verifier, key, override):
    assert reason_of(verifier, sign(key, claims(**override))) == "TOKEN_INVALID"


def test_expiry_allows_the_leeway_and_no_more(verifier, key):
    now = int(time.time())
    assert verifier.verify(sign(key, claims(iat=now - 1000, exp=now - LEEWAY + 2)))
    assert reason_of(verifier, sign(key, claims(iat=now - 1000, exp=now - LEEWAY - 2))) == "TOKEN_EXPIRED"


def test_a_token_not_yet_valid_is_refused(verifier, key):
    now = int(time.time())
    assert reason_of(verifier, sign(key, claims(nbf=now + 3600))) == "TOKEN_INVALID"
    assert reason_of(verifier, sign(key, claims(iat=now + 3600, exp=now + 7200))) == "TOKEN_INVALID"


def test_a_tampered_payload_is_refused(verifier, key):
    header, _, signature = sign(key, claims(role="staff")).split(".")
    forged = _b64(json.dumps(claims(role="owner")).encode())
    assert reason_of(verifier, f"{header}.{forged}.{signature}") == "TOKEN_INVALID"


@pytest.mark.parametrize("token", ["", "x", "a.b", "a.b.c.d", "not a token at all"])
def test_garbage_is_refused(verifier, token):
    assert reason_of(verifier, token) == "TOKEN_INVALID"


def test_truncated_and_overlong_tokens_are_refused(verifier, key):
    good = sign(key, claims())
    assert reason_of(verifier, good[:-10]) == "TOKEN_INVALID"
    assert reason_of(verifier, sign(key, claims(pad="x" * MAX_TOKEN_BYTES))) == "TOKEN_INVALID"
    assert reason_of(verifier, "a" * 100_000) == "TOKEN_INVALID"


def test_a_jwks_entry_with_an_unlisted_algorithm_is_ignored(key):
    keys = KeySet()
    rs_entry = {**public_jwk("k2", key.public_key()), "alg": "RS256"}
    enc_entry = {**public_jwk("k3", key.public_key()), "use": "enc"}
    keys.load_jwks({"keys": [public_jwk("k1", key.public_key()), rs_entry, enc_entry]})
    assert keys.kids() == ["k1"]


def test_the_marker_and_channel_keep_their_names_for_other_readers():
    assert revoked_key("s1") == "auth:revoked:s1" and REVOCATIONS_CHANNEL == "auth:revocations"


async def test_the_refresher_loads_keys_and_refetches_soon_after_an_unknown_kid(key):
    other = ec.generate_private_key(ec.SECP256R1())
    published = [public_jwk("k1", key.public_key())]
    fetches = []

    async def fetch() -> dict:
        fetches.append(time.monotonic())
        return {"keys": list(published)}

    keys = KeySet()
    refresher = JwksRefresher(keys, fetch, interval_seconds=3600, min_gap_seconds=0.05)
    await refresher.start()
    try:
        assert keys.kids() == ["k1"]
        published.append(public_jwk("k2", other.public_key()))
        verifier = TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE, leeway_seconds=LEEWAY,
                                 on_unknown_kid=refresher.request_refresh)
        token = sign(other, claims(), kid="k2")
        assert reason_of(verifier, token) == "TOKEN_INVALID"
        for _ in range(50):
            if "k2" in keys.kids():
                break
            await asyncio.sleep(0.02)
        assert verifier.verify(token).sid
    finally:
        await refresher.stop()


def test_a_repeated_token_is_answered_from_memory_without_a_second_signature_check(verifier, key, monkeypatch):
    token = sign(key, claims())
    first = verifier.verify(token)
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: pytest.fail("verified the signature twice"))

    assert verifier.verify(token) == first


def test_a_remembered_token_stops_verifying_once_it_expires(keyset, key):
    strict = TokenVerifier(keyset, issuer=ISSUER, audience=AUDIENCE, leeway_seconds=0)
    expires = int(time.time()) + 1
    token = sign(key, claims(iat=expires - 100, exp=expires))
    strict.verify(token)
    time.sleep(max(0.0, expires + 0.2 - time.time()))

    assert reason_of(strict, token) == "TOKEN_EXPIRED"


def test_a_remembered_token_stops_verifying_once_its_key_is_withdrawn(key):
    keys = KeySet()
    keys.load_jwks({"keys": [public_jwk("k1", key.public_key())]})
    verifier = TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE, leeway_seconds=LEEWAY)
    token = sign(key, claims())
    verifier.verify(token)
    keys.load_jwks({"keys": [public_jwk("k2", ec.generate_private_key(ec.SECP256R1()).public_key())]})

    assert reason_of(verifier, token) == "TOKEN_INVALID"


def test_the_memory_of_verified_tokens_is_bounded(verifier, key, monkeypatch):
    monkeypatch.setattr(TokenVerifier, "CACHE_SIZE", 3)
    tokens = [sign(key, claims()) for _ in range(5)]
    for token in tokens:
        verifier.verify(token)

    assert list(verifier._verified) == tokens[-3:]


def test_a_refused_token_is_not_remembered(verifier, key):
    header, _, signature = sign(key, claims(role="staff")).split(".")
    forged = f"{header}.{_b64(json.dumps(claims(role='owner')).encode())}.{signature}"
    for _ in range(2):
        assert reason_of(verifier, forged) == "TOKEN_INVALID"
    assert forged not in verifier._verified
