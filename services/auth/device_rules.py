"""Rules for paired devices, with no I/O: device types, names, pairing and setup codes, the
idle lock's bounds, and the errors the device use cases raise (devices.py)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from posmesh.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from posmesh.common.permissions import DEVICE_TYPES, KITCHEN_SCREEN, MANAGER_TABLET, TILL
from services.auth.rules import CONTROL_CHARACTERS, invalid

PAIRING_CODE_TTL = timedelta(minutes=10)
SETUP_CODE_TTL = timedelta(hours=24)
APPROVAL_TTL_SECONDS = 120
# A device's own credential: each refresh slides it this far; it ends when revoked.
DEVICE_REFRESH_TTL = timedelta(days=90)
DEVICE_ABSOLUTE_TTL = timedelta(days=3650)
# A staff session (a PIN sign-in on a till) lasts a shift at most.
STAFF_ABSOLUTE_TTL = timedelta(hours=16)
# Per restaurant per hour: pairing a restaurant's devices is a handful of codes.
PAIRING_CODES_PER_HOUR = 30
MAX_DEVICE_NAME = 60
IDLE_LOCK_MIN, IDLE_LOCK_MAX, IDLE_LOCK_DEFAULT = 30, 3600, 300
# In tests and demos a restaurant may lock after a few seconds (POSMESH_ENV=development).
IDLE_LOCK_MIN_DEVELOPMENT = 2
# Crockford's base32: no I, L, O, U (read aloud and typed on a screen without confusion).
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CODE_LENGTH = 8
_CONFUSABLE = str.maketrans({"I": "1", "L": "1", "O": "0"})
_NOT_CODE = re.compile(r"[\s\-]")

DEFAULT_NAMES = {TILL: "Till", KITCHEN_SCREEN: "Kitchen screen", MANAGER_TABLET: "Manager tablet"}

# Session kinds (auth.sessions.kind) and why device sessions end.
USER, DEVICE, STAFF = "user", "device", "staff"
DEVICE_REVOKED = "DEVICE_REVOKED"
STAFF_SWITCHED = "STAFF_SWITCHED"  # another person signed in on the till
PIN_RESET = "PIN_RESET"


@dataclass(frozen=True, slots=True)
class NewCode:
    code: str  # shown once
    normalised: str  # what is hashed


def new_pairing_code() -> NewCode:
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(_CODE_LENGTH))
    return NewCode(f"{raw[:4]}-{raw[4:]}", raw)


def normalise_pairing_code(raw: str) -> str:
    code = _NOT_CODE.sub("", raw).upper().translate(_CONFUSABLE)
    if len(code) != _CODE_LENGTH or any(ch not in _ALPHABET for ch in code):
        raise pairing_code_invalid()
    return code


def new_setup_code() -> NewCode:
    code = f"{secrets.randbelow(10 ** 8):08d}"
    return NewCode(code, code)


def normalise_setup_code(raw: str) -> str:
    code = _NOT_CODE.sub("", raw)
    if len(code) != 8 or not code.isascii() or not code.isdigit():
        raise setup_code_invalid()
    return code


def valid_device_type(raw: str) -> str:
    if raw not in DEVICE_TYPES:
        raise invalid("device_type", f"device_type must be one of {', '.join(DEVICE_TYPES)}")
    return raw


def valid_device_name(raw: str, *, default: str = "") -> str:
    name = " ".join(raw.split()) or default
    if not name:
        raise invalid("name", "name is required")
    if len(name) > MAX_DEVICE_NAME:
        raise invalid("name", f"name must be at most {MAX_DEVICE_NAME} characters long")
    if CONTROL_CHARACTERS.search(name):
        raise invalid("name", "name must not contain control characters")
    return name


def valid_idle_lock(seconds: int, *, development: bool) -> int:
    low = IDLE_LOCK_MIN_DEVELOPMENT if development else IDLE_LOCK_MIN
    if not low <= seconds <= IDLE_LOCK_MAX:
        raise invalid("staff_idle_lock_seconds",
                      f"staff_idle_lock_seconds must be between {low} and {IDLE_LOCK_MAX}")
    return seconds


def valid_pin_attempt(pin: str, field: str = "pin") -> str:
    """A PIN presented to sign in: digits of a possible length (else it cannot match anything,
    and is not worth a counted attempt)."""
    if not pin:
        raise invalid(field, f"{field} is required")
    if not (4 <= len(pin) <= 8) or not pin.isascii() or not pin.isdigit():
        raise invalid(field, f"{field} is 4 to 8 digits")
    return pin


# --- errors ----------------------------------------------------------------------------------

def pairing_code_invalid() -> InvalidArgument:
    return InvalidArgument("PAIRING_CODE_INVALID", "this pairing code is not valid; check it, or "
                           "ask a manager for a new one", field="code")


def pairing_code_expired() -> FailedPrecondition:
    return FailedPrecondition("PAIRING_CODE_EXPIRED", "this pairing code has expired (codes last "
                              "10 minutes); ask a manager for a new one", field="code")


def pairing_code_used() -> FailedPrecondition:
    return FailedPrecondition("PAIRING_CODE_USED", "this pairing code was used already; ask a "
                              "manager for a new one", field="code")


def setup_code_invalid() -> InvalidArgument:
    return InvalidArgument("SETUP_CODE_INVALID", "this setup code is not valid for this person, "
                           "has expired or was used; ask a manager for a new one",
                           field="setup_code")


def device_not_found(device_id: str) -> NotFound:
    return NotFound("DEVICE_NOT_FOUND", f"no paired device {device_id} in this restaurant",
                    device_id=device_id)


def pin_invalid() -> Unauthenticated:
    # One answer for a wrong PIN, an unknown person and someone of another restaurant.
    return Unauthenticated("PIN_INVALID", "the PIN is not correct")


def pin_not_set() -> FailedPrecondition:
    return FailedPrecondition("PIN_NOT_SET", "you have no PIN here yet; ask a manager for a setup "
                              "code", action="SETUP_PIN")


def too_many_pin_attempts(seconds: int) -> ResourceExhausted:
    return ResourceExhausted("TOO_MANY_ATTEMPTS", f"too many wrong PINs; try again in {seconds} "
                             "seconds", retry_after_seconds=seconds)
