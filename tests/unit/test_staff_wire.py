"""Messages <-> domain data: PATCH presence, update masks, and hidden fields left absent."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone

import pytest
from google.protobuf import field_mask_pb2, json_format

from posmesh.common.errors import InvalidArgument
from posmesh.staff.v1 import staff_pb2
from services.staff import wire
from services.staff.models import Address, Employee, MemberRestaurant, Restaurant

NOW = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)


def test_employee_patch_without_a_mask_takes_exactly_the_fields_present():
    message = staff_pb2.Employee(phone="", hourly_rate_minor=0, version=4)
    assert wire.employee_changes(message, None) == {"phone": "", "hourly_rate_minor": 0}


def test_employee_patch_from_json_keeps_presence_of_zero_values():
    message = json_format.Parse('{"job_title": "cook", "hourly_rate_minor": "0"}', staff_pb2.Employee())
    assert wire.employee_changes(message, None) == {"job_title": "cook", "hourly_rate_minor": 0}


def test_a_mask_names_the_fields_and_absent_ones_are_cleared():
    message = staff_pb2.Employee(first_name="Ada")
    mask = field_mask_pb2.FieldMask(paths=["first_name", "phone"])
    assert wire.employee_changes(message, mask) == {"first_name": "Ada", "phone": None}


@pytest.mark.parametrize("path", ["version", "active", "user_id", "restaurant_id", "id", "nope"])
def test_a_mask_naming_a_field_that_cannot_change_is_refused(path):
    with pytest.raises(InvalidArgument) as caught:
        wire.employee_changes(staff_pb2.Employee(), field_mask_pb2.FieldMask(paths=[path]))
    assert caught.value.reason == "INVALID_UPDATE_MASK"


def test_restaurant_patch_without_a_mask_takes_non_empty_fields_and_the_whole_address():
    message = staff_pb2.Restaurant(name="New name", address=staff_pb2.Address(city="Leeds"))
    changes = wire.restaurant_changes(message, None)
    assert changes["name"] == "New name" and changes["address.city"] == "Leeds"
    assert changes["address.line1"] == "" and "timezone" not in changes


def test_restaurant_mask_can_name_one_address_field():
    message = staff_pb2.Restaurant(address=staff_pb2.Address(postal_code="LS1 1AA"))
    mask = field_mask_pb2.FieldMask(paths=["address.postal_code"])
    assert wire.restaurant_changes(message, mask) == {"address.postal_code": "LS1 1AA"}
    with pytest.raises(InvalidArgument):
        wire.restaurant_changes(message, field_mask_pb2.FieldMask(paths=["version"]))


def test_hidden_employee_fields_are_absent_from_the_message_and_its_json():
    employee = Employee(
        id=uuid.uuid4(), restaurant_id=uuid.uuid4(), user_id=uuid.uuid4(), first_name="Ada",
        last_name=None, email=None, phone=None, access_role="staff", job_title="cook",
        hourly_rate_minor=None, start_date=date(2024, 1, 31), active=True, version=1,
        create_time=NOW, update_time=NOW, deactivate_time=None)
    message = wire.employee_message(employee)
    assert not message.HasField("email") and not message.HasField("hourly_rate_minor")
    assert message.start_date == "2024-01-31"
    as_json = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True)
    assert "email" not in as_json and "phone" not in as_json and "hourly_rate_minor" not in as_json
    assert as_json["active"] is True and "deactivate_time" not in as_json


def test_a_restaurant_carries_the_callers_role_and_the_currency_minor_units():
    restaurant = Restaurant(id=uuid.uuid4(), name="Sushi", timezone="Asia/Tokyo", currency="JPY",
                            address=Address(city="Tokyo"), version=3, create_time=NOW, update_time=NOW)
    message = wire.restaurant_message(MemberRestaurant(restaurant, "manager"))
    assert (message.role, message.currency_minor_units, message.address.city) == ("manager", 0, "Tokyo")
    assert message.create_time.ToDatetime(tzinfo=timezone.utc) == NOW
