"""Whom each role may manage, and what each role sees of a colleague's record."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone

import pytest

from services.staff import rules
from services.staff.models import Employee

NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)


def employee(role: str, user_id: str | None = None) -> Employee:
    return Employee(
        id=uuid.uuid4(), restaurant_id=uuid.uuid4(), user_id=uuid.UUID(user_id) if user_id else uuid.uuid4(),
        first_name="Ada", last_name="Lovelace", email="ada@example.com", phone="+44 20 7946 0958",
        access_role=role, job_title="cashier", hourly_rate_minor=1450, start_date=date(2024, 5, 1),
        active=True, version=3, create_time=NOW, update_time=NOW, deactivate_time=None)


@pytest.mark.parametrize("target", ["owner", "manager", "staff"])
@pytest.mark.parametrize("new_role", [None, "owner", "manager", "staff"])
def test_owners_may_manage_anyone_and_grant_any_role(target, new_role):
    assert rules.role_denial("owner", "staff.UpdateEmployee", target_role=target, new_role=new_role) is None


def test_managers_manage_staff_role_employees():
    assert rules.role_denial("manager", "staff.UpdateEmployee", target_role="staff") is None
    assert rules.role_denial("manager", "staff.CreateEmployee", new_role="staff") is None


@pytest.mark.parametrize("target, new_role", [
    ("owner", None), ("manager", None), ("staff", "manager"), ("staff", "owner"), (None, "manager"),
    (None, "owner"), ("manager", "staff"),
])
def test_managers_cannot_touch_or_create_owners_and_managers(target, new_role):
    denial = rules.role_denial("manager", "staff.UpdateEmployee", target_role=target, new_role=new_role)
    assert denial is not None
    assert denial.reason == "ROLE_FORBIDDEN"
    assert "staff.UpdateEmployee" in denial.message and "your role in this restaurant is manager" in denial.message
    assert denial.metadata["permission"] == "staff.UpdateEmployee"
    assert denial.metadata["role"] == "manager"


def test_the_denial_says_which_role_would_be_needed():
    denial = rules.role_denial("manager", "staff.CreateEmployee", new_role="manager")
    assert "granting the manager role needs role owner" in denial.message


def test_staff_manage_nobody():
    assert rules.role_denial("staff", "staff.UpdateEmployee", target_role="staff") is not None


def test_owners_see_every_field():
    record = employee("manager")
    assert rules.view(record, viewer_role="owner", viewer_user_id=str(uuid.uuid4())) == record


def test_staff_see_only_the_directory_of_others():
    seen = rules.view(employee("staff"), viewer_role="staff", viewer_user_id=str(uuid.uuid4()))
    assert (seen.first_name, seen.last_name, seen.access_role, seen.job_title, seen.active) == (
        "Ada", "Lovelace", "staff", "cashier", True)
    assert (seen.email, seen.phone, seen.hourly_rate_minor, seen.start_date) == (None, None, None, None)


def test_everyone_sees_their_own_full_record():
    me = str(uuid.uuid4())
    record = employee("staff", me)
    assert rules.view(record, viewer_role="staff", viewer_user_id=me) == record


def test_managers_see_contacts_but_not_the_pay_of_managers_and_owners():
    seen = rules.view(employee("owner"), viewer_role="manager", viewer_user_id=str(uuid.uuid4()))
    assert seen.email == "ada@example.com" and seen.phone is not None
    assert seen.hourly_rate_minor is None
    staff_seen = rules.view(employee("staff"), viewer_role="manager", viewer_user_id=str(uuid.uuid4()))
    assert staff_seen.hourly_rate_minor == 1450


def test_last_owner_is_a_failed_precondition_naming_the_permission():
    error = rules.last_owner("staff.DeleteEmployee")
    assert error.reason == "LAST_OWNER" and "staff.DeleteEmployee" in error.message
