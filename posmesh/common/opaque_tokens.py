"""Opaque, single-purpose secrets handed to a client (refresh tokens, email links, invitations):
256 random bits sent as `<prefix><base64url>`; only their SHA-256 is stored. The token is random,
so a slow hash adds nothing, and a stolen table holds nothing that works.

    issued = issue("pmiv_")            # issued.token to the client, issued.digest to the database
    digest = digest_of(presented, "pmiv_")   # None when it is not a token of that kind
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass

SECRET_BYTES = 32
_ENCODED_BYTES = 43  # 32 bytes in unpadded base64url


@dataclass(frozen=True, slots=True)
class OpaqueToken:
    token: str  # what the client holds
    digest: bytes  # what the database stores


def issue(prefix: str) -> OpaqueToken:
    raw = secrets.token_bytes(SECRET_BYTES)
    return OpaqueToken(prefix + base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), _digest(raw))


def decode(token: str, prefix: str) -> bytes | None:
    """The raw secret of a well-formed token of this kind; None for anything else."""
    if len(token) != len(prefix) + _ENCODED_BYTES or not token.startswith(prefix):
        return None
    try:
        raw = base64.urlsafe_b64decode(token[len(prefix):] + "=")
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == SECRET_BYTES else None


def digest_of(token: str, prefix: str) -> bytes | None:
    raw = decode(token.strip(), prefix)
    return _digest(raw) if raw is not None else None


def _digest(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()
