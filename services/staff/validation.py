"""Field rules for restaurants and employees: each check returns the normalised value or raises
InvalidArgument with a reason naming what is wrong and metadata naming the field."""

from __future__ import annotations

import re
import unicodedata
import uuid
import zoneinfo
from datetime import date
from functools import lru_cache

import iso3166
import iso4217

from posmesh.common.errors import InvalidArgument
from posmesh.common.permissions import ROLES

RESTAURANT_NAME_MAX = 120
PERSON_NAME_MAX = 100
EMAIL_MAX = 254
PHONE_MAX = 32
JOB_TITLE_MAX = 50
ADDRESS_LINE_MAX = 200
ADDRESS_PART_MAX = 100
POSTAL_CODE_MAX = 20
# 1,000,000.00 an hour in a two-digit currency: anything above is a typo, not a wage.
HOURLY_RATE_MAX = 100_000_000
EARLIEST_START_DATE = date(1900, 1, 1)
LATEST_START_DATE = date(2100, 12, 31)

# What existing POS apps send as an employee's "role". Any other title is kept as free text.
KNOWN_JOB_TITLES = (
    "cashier", "server", "cook", "chef", "sous chef", "line cook", "prep cook", "bartender",
    "barista", "host", "busser", "runner", "expeditor", "dishwasher", "delivery driver",
    "supervisor", "shift lead", "manager", "owner",
)

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s.]{2,}$")
_PHONE_CHARS = re.compile(r"^\+?[0-9 ().\-]+$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _invalid(reason: str, field: str, message: str) -> InvalidArgument:
    return InvalidArgument(reason, f"{field}: {message}", field=field)


def text(value: str | None, field: str, *, max_length: int, required: bool) -> str | None:
    """Trimmed single-line text; None when absent or blank and not required."""
    cleaned = (value or "").strip()
    if not cleaned:
        if required:
            raise _invalid("FIELD_REQUIRED", field, "is required")
        return None
    if len(cleaned) > max_length:
        raise _invalid("FIELD_TOO_LONG", field,
                       f"is {len(cleaned)} characters long; at most {max_length} are allowed")
    if any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in cleaned):
        raise _invalid("INVALID_TEXT", field, "must not contain control characters or line breaks")
    return cleaned


def required_text(value: str | None, field: str, *, max_length: int) -> str:
    result = text(value, field, max_length=max_length, required=True)
    assert result is not None
    return result


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    # "localtime" and "Factory" are artefacts of the tz database, not places.
    return frozenset(zoneinfo.available_timezones()) - {"localtime", "Factory"}


def timezone(value: str | None, field: str = "timezone") -> str:
    name = required_text(value, field, max_length=64)
    if name not in _timezones():
        raise _invalid("INVALID_TIMEZONE", field,
                       f"{name!r} is not an IANA time zone name such as 'Europe/London'")
    return name


def _currency(code: str) -> iso4217.Currency | None:
    try:
        currency = iso4217.Currency(code)
    except ValueError:
        return None
    # Funds, precious metals and test codes (XAU, XDR, XTS, ...) have no minor units: not money
    # a restaurant prices in.
    return currency if currency.exponent is not None else None


def currency(value: str | None, field: str = "currency") -> str:
    code = (value or "").strip().upper()
    if not code:
        raise _invalid("FIELD_REQUIRED", field, "is required")
    if len(code) != 3 or _currency(code) is None:
        raise _invalid("INVALID_CURRENCY", field,
                       f"{code[:16]!r} is not an ISO 4217 currency code such as 'GBP' or 'EUR'")
    return code


def currency_minor_units(code: str) -> int:
    found = _currency(code)
    return int(found.exponent) if found is not None else 2


def country(value: str | None, field: str) -> str | None:
    code = (value or "").strip().upper()
    if not code:
        return None
    if code not in iso3166.countries_by_alpha2:
        raise _invalid("INVALID_COUNTRY", field,
                       f"{code[:16]!r} is not an ISO 3166-1 alpha-2 country code such as 'GB'")
    return code


def email(value: str | None, field: str = "email") -> str:
    address = required_text(value, field, max_length=EMAIL_MAX).lower()
    if not _EMAIL.match(address):
        raise _invalid("INVALID_EMAIL", field, f"{address[:64]!r} is not an email address")
    return address


def phone(value: str | None, field: str = "phone") -> str | None:
    number = text(value, field, max_length=PHONE_MAX, required=False)
    if number is None:
        return None
    digits = sum(char.isdigit() for char in number)
    if not _PHONE_CHARS.match(number) or not 6 <= digits <= 15:
        raise _invalid("INVALID_PHONE", field,
                       "must be a phone number of 6 to 15 digits, optionally starting with '+'")
    return number


def access_role(value: str | None, field: str = "access_role") -> str:
    role = (value or "").strip().lower()
    if role not in ROLES:
        raise _invalid("INVALID_ROLE", field,
                       f"{role[:32]!r} is not an access role; use one of {', '.join(ROLES)}")
    return role


def job_title(value: str | None, field: str = "job_title") -> str | None:
    title = text(value, field, max_length=JOB_TITLE_MAX, required=False)
    if title is None:
        return None
    canonical = " ".join(title.lower().split())
    return canonical if canonical in KNOWN_JOB_TITLES else title


def hourly_rate(value: int | None, field: str = "hourly_rate_minor") -> int | None:
    if value is None:
        return None
    if value < 0:
        raise _invalid("INVALID_HOURLY_RATE", field, "must be 0 or more (minor currency units)")
    if value > HOURLY_RATE_MAX:
        raise _invalid("INVALID_HOURLY_RATE", field, f"must be at most {HOURLY_RATE_MAX}")
    return value


def start_date(value: str | None, field: str = "start_date") -> date | None:
    raw = (value or "").strip()
    if not raw:
        return None
    try:
        parsed = date.fromisoformat(raw) if _ISO_DATE.match(raw) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise _invalid("INVALID_START_DATE", field, f"{value[:40]!r} is not a date in YYYY-MM-DD form")
    if not EARLIEST_START_DATE <= parsed <= LATEST_START_DATE:
        raise _invalid("INVALID_START_DATE", field, "must be between 1900-01-01 and 2100-12-31")
    return parsed


def resource_id(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except (ValueError, AttributeError):
        raise _invalid("INVALID_ID", field, f"{value[:40]!r} is not a valid id") from None
