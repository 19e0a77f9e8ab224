"""PINs and short codes: the rules for a new PIN, and their keyed hashing.

Why not argon2 as for passwords: a PIN has 10^4..10^8 values, so no slow hash protects a stolen
table (10^8 argon2 guesses are days on one GPU, 10^4 are seconds), and argon2's cost would land on
the till's busiest path and queue behind new passwords (enrollment_hashing.py paces those to a
few per second). What protects a PIN is that guessing needs the server: online, guesses are
throttled per device and per person (rate_limits.py); offline, every stored PIN and code is an
HMAC-SHA256 under a secret key (the "pepper") that lives in the keys folder next to the signing
keys, never in the database, so a copy of the database alone cannot test a single guess. A
random salt per PIN keeps two people's equal PINs from having equal hashes.

    pmpin1$<salt b64url>$<mac b64url>
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from posmesh.common.errors import InvalidArgument

PIN_MIN_DIGITS, PIN_MAX_DIGITS = 4, 8
PEPPER_FILE = "pin-pepper.key"
_SCHEME = "pmpin1"


def check_new_pin(pin: str, field: str = "pin") -> str:
    """4-8 ASCII digits, not one repeated digit, not a run up or down (1234, 9876, 7890)."""
    if not (PIN_MIN_DIGITS <= len(pin) <= PIN_MAX_DIGITS) or not pin.isascii() or not pin.isdigit():
        raise InvalidArgument("WEAK_PIN", f"a PIN is {PIN_MIN_DIGITS} to {PIN_MAX_DIGITS} digits",
                              field=field)
    if is_trivial(pin):
        raise InvalidArgument("WEAK_PIN", "this PIN is too easy to guess (one repeated digit, or "
                              "digits in a row such as 1234 or 9876); choose another",
                              field=field)
    return pin


def is_trivial(pin: str) -> bool:
    digits = [int(ch) for ch in pin]
    steps = {(b - a) % 10 for a, b in zip(digits, digits[1:])}
    # 0: repeated; 1: ascending (with 9->0 wrapping: 7890); 9: descending (3210, 1098).
    return len(steps) == 1 and steps <= {0, 1, 9}


def load_pepper(keys_dir: Path) -> bytes:
    """The secret key of PIN and code hashes; made on first run (0600), shared by replicas."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    path = keys_dir / PEPPER_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32).hex().encode())
    for _ in range(50):  # another replica may be writing it right now
        text = path.read_text().strip()
        if len(text) == 64:
            return bytes.fromhex(text)
        time.sleep(0.02)
    raise RuntimeError(f"{path} is not a 32-byte hex key")


class KeyedHashing:
    """HMAC-SHA256 under the pepper: `hash_pin`/`verify_pin` (salted), `code_digest` (for random
    single-use codes, which need no salt: a digest is looked up directly)."""

    def __init__(self, pepper: bytes) -> None:
        self._pepper = pepper

    def hash_pin(self, pin: str) -> str:
        salt = secrets.token_bytes(16)
        return f"{_SCHEME}${_b64(salt)}${_b64(self._mac(b'pin', salt, pin))}"

    def verify_pin(self, stored: str | None, pin: str) -> bool:
        if not stored:
            return False
        try:
            scheme, salt, mac = stored.split("$")
            salt_bytes, mac_bytes = _unb64(salt), _unb64(mac)
        except ValueError:
            return False
        return scheme == _SCHEME and hmac.compare_digest(mac_bytes, self._mac(b"pin", salt_bytes, pin))

    def code_digest(self, purpose: str, code: str) -> bytes:
        return self._mac(purpose.encode(), b"", code)

    def _mac(self, purpose: bytes, salt: bytes, value: str) -> bytes:
        return hmac.new(self._pepper, purpose + b"\0" + salt + b"\0" + value.encode(),
                        hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
