"""Refresh-token secrets and the sealed successor pair of the grace window."""

from __future__ import annotations

import hashlib
import base64

from services.auth import refresh_tokens
from services.auth.refresh_tokens import SealedPair

PAIR = SealedPair(access_token="header.payload.signature", access_expires_at=1_800_000_900,
                  refresh_token=refresh_tokens.new_secret().token)


def test_a_refresh_token_is_256_random_bits_stored_only_as_its_sha256():
    secret = refresh_tokens.new_secret()
    raw = base64.urlsafe_b64decode(secret.token.removeprefix("pmrt_") + "=")
    assert len(raw) == 32 and secret.digest == hashlib.sha256(raw).digest()
    assert refresh_tokens.digest_of(secret.token) == secret.digest
    assert refresh_tokens.new_secret().token != secret.token


def test_malformed_refresh_tokens_have_no_digest():
    good = refresh_tokens.new_secret().token
    for token in ["", "pmrt_", good[:-1], good + "A", "xxxx_" + good[5:], "pmrt_" + "!" * 43,
                  "pmrt_" + "=" * 43]:
        assert refresh_tokens.digest_of(token) is None, token


def test_the_sealed_pair_opens_with_the_old_token_only():
    old = refresh_tokens.new_secret().token
    sealed = refresh_tokens.seal(old, "row-1", PAIR)
    assert refresh_tokens.unseal(old, "row-1", sealed) == PAIR
    assert refresh_tokens.unseal(refresh_tokens.new_secret().token, "row-1", sealed) is None
    assert refresh_tokens.unseal(old, "row-2", sealed) is None, "bound to its row"


def test_the_sealed_pair_reveals_nothing_and_detects_tampering():
    old = refresh_tokens.new_secret().token
    sealed = refresh_tokens.seal(old, "row-1", PAIR)
    assert PAIR.refresh_token.encode() not in sealed and PAIR.access_token.encode() not in sealed
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    assert refresh_tokens.unseal(old, "row-1", flipped) is None
    assert refresh_tokens.unseal(old, "row-1", b"short") is None
    assert refresh_tokens.seal(old, "row-1", PAIR) != sealed, "a fresh nonce every time"
