"""Refresh-token secrets and the sealed successor pair of the refresh grace window.

A refresh token is an opaque token (posmesh.common.opaque_tokens) sent as `pmrt_<base64url>`;
only its SHA-256 is stored.

The grace window: when a token is rotated, its successor pair (access + refresh token) is stored
next to the old token's row, encrypted with AES-256-GCM under a key derived (HKDF) from the *old
refresh token itself*. Only a caller presenting that old token can open it, the database alone
cannot (it holds a SHA-256 of the token, not the HKDF output), and the ciphertext is wiped once
the window has passed. So concurrent refreshes from one app all receive the same pair without
the server keeping any decryptable copy of a live token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from posmesh.common import opaque_tokens
from posmesh.common.opaque_tokens import OpaqueToken

PREFIX = "pmrt_"
_HKDF_INFO = b"posmesh refresh grace v1"

RefreshSecret = OpaqueToken


@dataclass(frozen=True, slots=True)
class SealedPair:
    """The successor pair handed out by a rotation (what the grace window hands out again)."""
    access_token: str
    access_expires_at: int  # unix seconds
    refresh_token: str


def new_secret() -> RefreshSecret:
    return opaque_tokens.issue(PREFIX)


def digest_of(token: str) -> bytes | None:
    """The stored digest of a well-formed token; None for anything malformed."""
    return opaque_tokens.digest_of(token, PREFIX)


def _sealing_key(old_token: str, token_id: str) -> bytes:
    raw = opaque_tokens.decode(old_token, PREFIX)
    if raw is None:
        raise ValueError("not a refresh token")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=token_id.encode(),
                info=_HKDF_INFO).derive(raw)


def seal(old_token: str, token_id: str, pair: SealedPair) -> bytes:
    nonce = os.urandom(12)
    body = json.dumps({"a": pair.access_token, "e": pair.access_expires_at,
                       "r": pair.refresh_token}).encode()
    return nonce + AESGCM(_sealing_key(old_token, token_id)).encrypt(nonce, body, token_id.encode())


def unseal(old_token: str, token_id: str, sealed: bytes) -> SealedPair | None:
    """The pair sealed by `seal`, or None when it cannot be opened."""
    try:
        body = AESGCM(_sealing_key(old_token, token_id)).decrypt(sealed[:12], sealed[12:],
                                                                 token_id.encode())
        data = json.loads(body)
        return SealedPair(data["a"], int(data["e"]), data["r"])
    except (InvalidTag, ValueError, KeyError, TypeError):
        return None
