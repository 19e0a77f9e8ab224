"""Field rules of restaurants and employees: normalised values or a 400 reason naming the field."""

from __future__ import annotations

from datetime import date

import pytest

from posmesh.common.errors import InvalidArgument
from services.staff import validation


def reason_of(call, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        call(*args, **kwargs)
    return caught.value.reason, caught.value.metadata.get("field", "")


@pytest.mark.parametrize("zone", ["Europe/London", "America/New_York", "Asia/Kolkata", "UTC"])
def test_iana_time_zones_are_accepted(zone):
    assert validation.timezone(zone) == zone


@pytest.mark.parametrize("zone", ["Mars/Olympus", "europe/london", "GMT+25", "localtime", "../etc/passwd"])
def test_anything_else_is_an_invalid_timezone(zone):
    assert reason_of(validation.timezone, zone, "restaurant.timezone") == (
        "INVALID_TIMEZONE", "restaurant.timezone")


def test_a_missing_timezone_is_required():
    assert reason_of(validation.timezone, "", "restaurant.timezone")[0] == "FIELD_REQUIRED"


@pytest.mark.parametrize("code, expected", [("GBP", "GBP"), ("eur", "EUR"), (" jpy ", "JPY"), ("KWD", "KWD")])
def test_iso_4217_currencies_are_normalised_to_upper_case(code, expected):
    assert validation.currency(code) == expected


@pytest.mark.parametrize("code", ["XXX", "XAU", "ABC", "EURO", "US", "$", "x" * 500])
def test_unknown_codes_funds_and_metals_are_not_currencies(code):
    assert reason_of(validation.currency, code)[0] == "INVALID_CURRENCY"


def test_currency_minor_units_come_from_iso_4217():
    assert validation.currency_minor_units("GBP") == 2
    assert validation.currency_minor_units("JPY") == 0
    assert validation.currency_minor_units("KWD") == 3


def test_countries_are_iso_3166_alpha_2():
    assert validation.country("gb", "restaurant.address.country") == "GB"
    assert validation.country("", "restaurant.address.country") is None
    assert reason_of(validation.country, "ZZ", "restaurant.address.country")[0] == "INVALID_COUNTRY"


@pytest.mark.parametrize("address", ["Ada@Example.COM", "  ada@example.com  "])
def test_emails_are_trimmed_and_lower_cased(address):
    assert validation.email(address) == "ada@example.com"


@pytest.mark.parametrize("address", ["ada", "ada@", "@example.com", "ada@example", "a da@example.com",
                                     "ada@@example.com"])
def test_malformed_emails_are_refused(address):
    assert reason_of(validation.email, address, "employee.email") == ("INVALID_EMAIL", "employee.email")


def test_an_email_longer_than_254_characters_is_too_long():
    assert reason_of(validation.email, "a" * 250 + "@example.com")[0] == "FIELD_TOO_LONG"


@pytest.mark.parametrize("number", ["+44 20 7946 0958", "(555) 123-4567", "0123456"])
def test_phone_numbers_keep_their_format(number):
    assert validation.phone(number) == number


@pytest.mark.parametrize("number", ["call me", "12345", "+1 2345 6789 0123 4567", "+44 20 7946 0958 ext 2"])
def test_bad_phone_numbers_are_refused(number):
    assert reason_of(validation.phone, number)[0] == "INVALID_PHONE"


@pytest.mark.parametrize("role", ["owner", "Manager", " STAFF "])
def test_access_roles_are_normalised(role):
    assert validation.access_role(role) == role.strip().lower()


@pytest.mark.parametrize("role", ["admin", "superuser", "", "cashier"])
def test_unknown_access_roles_are_refused(role):
    assert reason_of(validation.access_role, role)[0] == "INVALID_ROLE"


def test_known_job_titles_are_canonical_and_others_are_kept_as_written():
    assert validation.job_title("  Line   COOK ") == "line cook"
    assert validation.job_title("Sommelier") == "Sommelier"
    assert validation.job_title("") is None
    assert reason_of(validation.job_title, "x" * 51)[0] == "FIELD_TOO_LONG"


def test_hourly_rates_are_non_negative_and_bounded():
    assert validation.hourly_rate(0) == 0
    assert validation.hourly_rate(1250) == 1250
    assert validation.hourly_rate(None) is None
    assert reason_of(validation.hourly_rate, -1)[0] == "INVALID_HOURLY_RATE"
    assert reason_of(validation.hourly_rate, validation.HOURLY_RATE_MAX + 1)[0] == "INVALID_HOURLY_RATE"


def test_start_dates_are_strict_yyyy_mm_dd():
    assert validation.start_date("2024-02-29") == date(2024, 2, 29)
    assert validation.start_date("") is None
    for bad in ("2023-02-29", "20240101", "01/02/2024", "2024-1-5", "1850-01-01", "tomorrow"):
        assert reason_of(validation.start_date, bad)[0] == "INVALID_START_DATE", bad


def test_text_is_trimmed_and_bounded_and_single_line():
    assert validation.text("  Ada  ", "f", max_length=10, required=True) == "Ada"
    assert validation.text("   ", "f", max_length=10, required=False) is None
    assert reason_of(validation.text, "", "f", max_length=10, required=True) == ("FIELD_REQUIRED", "f")
    assert reason_of(validation.text, "x" * 11, "f", max_length=10, required=True)[0] == "FIELD_TOO_LONG"
    assert reason_of(validation.text, "a\nb", "f", max_length=10, required=True)[0] == "INVALID_TEXT"
    assert reason_of(validation.text, "a\x00b", "f", max_length=10, required=True)[0] == "INVALID_TEXT"


def test_ids_must_be_uuids():
    assert str(validation.resource_id("6F9619FF-8B86-D011-B42D-00C04FC964FF", "employee_id")) == (
        "6f9619ff-8b86-d011-b42d-00c04fc964ff")
    assert reason_of(validation.resource_id, "1 OR 1=1", "employee_id") == ("INVALID_ID", "employee_id")
