"""The auth service's rules, with no I/O: input validation, the errors its use cases raise, and
the plain results they return. The use cases are signin.py (sign-in, tokens, sessions),
accounts.py (registration, verified email, passwords) and memberships.py (for other services).
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from posmesh.common import security_events
from posmesh.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from posmesh.common.permissions import ROLES
from posmesh.common.tokens import Claims
from services.auth.store import MembershipRecord, UserRecord

log = logging.getLogger(__name__)

MAX_EMAIL_LENGTH = 254
MAX_PASSWORD_LENGTH = 1024
MAX_NAME_LENGTH = 200
MAX_BATCH_USERS = 1000
MAX_EVENT_DETAILS_BYTES = 16384
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
SEVERITIES = (security_events.INFO, security_events.WARNING, security_events.CRITICAL)

# Why a session ended (stored with it, sent on the revocation channel).
LOGOUT, LOGOUT_ALL = "LOGOUT", "LOGOUT_ALL"
REFRESH_REUSED = "REFRESH_REUSED"
RESTAURANT_SWITCHED = "RESTAURANT_SWITCHED"
ROLE_CHANGED, MEMBERSHIP_REVOKED = "ROLE_CHANGED", "MEMBERSHIP_REVOKED"
ADMIN_REVOKED = "ADMIN_REVOKED"
SESSION_ENDED, OTHER_SESSIONS_ENDED = "SESSION_ENDED", "OTHER_SESSIONS_ENDED"
PASSWORD_CHANGED, PASSWORD_RESET = "PASSWORD_CHANGED", "PASSWORD_RESET"
# An unverified account taken over by the person who proved they own its address.
ACCOUNT_CLAIMED = "ACCOUNT_CLAIMED"


# --- results ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ContextUser:
    id: str
    email: str
    full_name: str
    role: str
    restaurant_id: str
    restaurant_name: str


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    user: ContextUser
    device_id: str = ""  # a device's own credential or a staff session on it
    device_type: str = ""

    @property
    def restaurant_id(self) -> str:
        return self.user.restaurant_id

    @property
    def role(self) -> str:
        return self.user.role


@dataclass(frozen=True, slots=True)
class Introspection:
    valid: bool
    reason: str = ""
    claims: Claims | None = None
    user: ContextUser | None = None


@dataclass(frozen=True, slots=True)
class Me:
    user: UserRecord
    memberships: list[MembershipRecord]
    restaurant_id: str
    role: str
    session_id: str


# --- input rules -----------------------------------------------------------------------------

def invalid(field: str, message: str) -> InvalidArgument:
    return InvalidArgument("INVALID_ARGUMENT", message, field=field)


def normalise_email(raw: str) -> str:
    return raw.strip().lower()


def valid_email(raw: str) -> str:
    email = normalise_email(raw)
    if not email:
        raise invalid("email", "email is required")
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.match(email):
        raise invalid("email", "email is not a valid address")
    return email


def check_password_policy(password: str, *, email: str, min_length: int) -> None:
    if len(password) < min_length:
        raise InvalidArgument("WEAK_PASSWORD",
                              f"the password must be at least {min_length} characters long",
                              min_length=min_length)
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidArgument("WEAK_PASSWORD",
                              f"the password must be at most {MAX_PASSWORD_LENGTH} characters long",
                              max_length=MAX_PASSWORD_LENGTH)
    if password.strip().lower() == email or len(set(password)) < 3:
        raise InvalidArgument("WEAK_PASSWORD",
                              "the password is too easy to guess (it repeats one or two characters "
                              "or is the email address)")


def valid_name(raw: str, field: str, *, required: bool) -> str:
    name = " ".join(raw.split())
    if not name and required:
        raise invalid(field, f"{field} is required")
    if len(name) > MAX_NAME_LENGTH:
        raise invalid(field, f"{field} must be at most {MAX_NAME_LENGTH} characters long")
    if CONTROL_CHARACTERS.search(name):
        raise invalid(field, f"{field} must not contain control characters")
    return name


def valid_uuid(raw: str, field: str) -> str:
    try:
        return str(uuid.UUID(raw.strip()))
    except (ValueError, AttributeError):
        raise invalid(field, f"{field} must be a UUID") from None


def valid_role(raw: str) -> str:
    role = raw.strip().lower()
    if role not in ROLES:
        raise invalid("role", f"role must be one of {', '.join(ROLES)}")
    return role


def valid_code(raw: str, field: str, *, default: str) -> str:
    code = raw.strip() or default
    if not _CODE.match(code):
        raise invalid(field, f"{field} must be an UPPER_SNAKE code of at most 64 characters")
    return code


# --- errors ----------------------------------------------------------------------------------

def invalid_credentials() -> Unauthenticated:
    # One error for unknown email and wrong password: the answer must not reveal accounts.
    return Unauthenticated("INVALID_CREDENTIALS", "the email or password is incorrect")


def refresh_invalid() -> Unauthenticated:
    return Unauthenticated("TOKEN_INVALID", "the refresh token is not valid; sign in again",
                           action="LOGIN")


def refresh_expired() -> Unauthenticated:
    return Unauthenticated("REFRESH_EXPIRED", "the session has expired; sign in again",
                           action="LOGIN")


def refresh_reused() -> Unauthenticated:
    return Unauthenticated(
        "REFRESH_REUSED",
        "this refresh token was already used, so the session has been ended to protect the "
        "account; sign in again", action="LOGIN")


def not_a_member(restaurant_id: str) -> PermissionDenied:
    return PermissionDenied("NOT_A_MEMBER", f"you are not a member of restaurant {restaurant_id}",
                            restaurant_id=restaurant_id)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def seconds_until(moment: datetime, now: datetime) -> int:
    return max(0, int((moment - now).total_seconds()))


# --- identity: email links, verified addresses, passwords --------------------------------------

# What an email token is for (the `purpose` column), and the prefix of its text.
VERIFY_EMAIL, CHANGE_EMAIL, RESET_PASSWORD = "verify_email", "change_email", "reset_password"
EMAIL_TOKEN_PREFIX = "pmet_"


@dataclass(frozen=True, slots=True)
class EmailTokenState:
    """An email token as stored: what it is for and whether it can still be used."""
    id: str
    user_id: str
    purpose: str
    email: str  # the address it was mailed to (the new address of an email change)
    expires_at: datetime
    used_at: datetime | None
    superseded_at: datetime | None


def usable_email_token(token: EmailTokenState | None, purposes: tuple[str, ...],
                       now: datetime) -> EmailTokenState:
    """The token when it may be used now for one of `purposes`; else the error that says why."""
    if token is None or token.purpose not in purposes or token.superseded_at is not None:
        raise InvalidArgument("EMAIL_TOKEN_INVALID",
                              "this link is not valid (a newer one may have been sent); ask for "
                              "a new one", field="token")
    if token.used_at is not None:
        raise email_token_used()
    if now >= token.expires_at:
        raise FailedPrecondition("EMAIL_TOKEN_EXPIRED", "this link has expired; ask for a new one",
                                 field="token")
    return token


def email_token_used() -> FailedPrecondition:
    return FailedPrecondition("EMAIL_TOKEN_USED", "this link was used already", field="token")


def email_not_verified(action: str) -> FailedPrecondition:
    return FailedPrecondition(
        "EMAIL_NOT_VERIFIED",
        f"{action} needs a verified email address: use the link we mailed you, or ask for a new "
        "one with POST /api/v1/auth/email:sendVerification", action="VERIFY_EMAIL")


def wrong_password() -> InvalidArgument:
    return InvalidArgument("WRONG_PASSWORD", "the current password is not correct",
                           field="current_password")


def email_taken() -> AlreadyExists:
    return AlreadyExists("EMAIL_TAKEN", "an account with this email already exists; sign in "
                         "instead", field="email")
