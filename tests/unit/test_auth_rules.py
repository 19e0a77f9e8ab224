"""The auth domain's input rules: emails, passwords, names, ids, roles, codes."""

from __future__ import annotations

import uuid

import pytest

from posmesh.common.errors import InvalidArgument
from services.auth.rules import (
    check_password_policy,
    normalise_email,
    valid_code,
    valid_email,
    valid_name,
    valid_role,
    valid_uuid,
)


def test_emails_are_trimmed_and_compared_case_insensitively():
    assert normalise_email("  Ann.Example@Example.COM \n") == "ann.example@example.com"
    assert valid_email(" Ann@Example.com ") == "ann@example.com"


@pytest.mark.parametrize("email", ["", "   ", "ann", "ann@", "@example.com", "ann@example",
                                   "a b@example.com", "ann@exa mple.com", "x" * 250 + "@e.com"])
def test_invalid_emails_are_refused_with_the_field(email):
    with pytest.raises(InvalidArgument) as caught:
        valid_email(email)
    assert caught.value.reason == "INVALID_ARGUMENT" and caught.value.metadata["field"] == "email"


@pytest.mark.parametrize("password", ["short", "aaaaaaaaaaaa", "abababababab", "x" * 1025,
                                      "ann@example.com"])
def test_weak_passwords_are_refused(password):
    with pytest.raises(InvalidArgument) as caught:
        check_password_policy(password, email="ann@example.com", min_length=10)
    assert caught.value.reason == "WEAK_PASSWORD"


def test_a_reasonable_password_passes():
    check_password_policy("correct horse battery", email="ann@example.com", min_length=10)


def test_names_are_tidied_and_bounded():
    assert valid_name("  Ann   Example ", "full_name", required=True) == "Ann Example"
    assert valid_name("", "restaurant_name", required=False) == ""
    for bad in ["", "   ", "x" * 201, "Ann\x00"]:
        with pytest.raises(InvalidArgument):
            valid_name(bad, "full_name", required=True)


def test_ids_roles_and_codes():
    rid = str(uuid.uuid4())
    assert valid_uuid(f" {rid.upper()} ", "restaurant_id") == rid
    assert valid_role(" Manager ") == "manager"
    assert valid_code("", "reason", default="ADMIN_REVOKED") == "ADMIN_REVOKED"
    for call in (lambda: valid_uuid("r1", "restaurant_id"), lambda: valid_role("chef"),
                 lambda: valid_code("not a code", "reason", default="X")):
        with pytest.raises(InvalidArgument):
            call()
