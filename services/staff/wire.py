"""Protobuf messages <-> the staff domain's plain data, including which fields a PATCH names."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import field_mask_pb2, timestamp_pb2

from posmesh.common.errors import InvalidArgument
from posmesh.staff.v1 import staff_pb2
from services.staff import validation
from services.staff.domain import EMPLOYEE_MUTABLE_FIELDS, RESTAURANT_MUTABLE_FIELDS
from services.staff.models import (
    Address,
    Employee,
    EmployeeDraft,
    Invitation,
    MemberRestaurant,
    RestaurantDraft,
)

_ADDRESS_PARTS = ("line1", "line2", "city", "region", "postal_code", "country")


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _bad_mask(path: str, allowed: tuple[str, ...]) -> InvalidArgument:
    return InvalidArgument(
        "INVALID_UPDATE_MASK",
        f"update_mask: {path[:64]!r} is not a field that can be changed; use {', '.join(allowed)}",
        field="update_mask")


# --- restaurants -----------------------------------------------------------------------------


def restaurant_draft(message: staff_pb2.Restaurant) -> RestaurantDraft:
    address = None
    if message.HasField("address"):
        address = Address(**{part: getattr(message.address, part) for part in _ADDRESS_PARTS})
    return RestaurantDraft(name=message.name, timezone=message.timezone, currency=message.currency,
                           address=address)


def restaurant_changes(message: staff_pb2.Restaurant,
                       mask: field_mask_pb2.FieldMask | None) -> dict[str, Any]:
    """{"name": ..., "address.city": ...}: the mask's paths, or every non-empty field (and the
    whole address when it is present) without one."""
    if mask is not None and mask.paths:
        changes: dict[str, Any] = {}
        for path in mask.paths:
            if path == "address":
                changes.update({f"address.{part}": getattr(message.address, part)
                                for part in _ADDRESS_PARTS})
            elif path in RESTAURANT_MUTABLE_FIELDS:
                head, _, part = path.partition(".")
                changes[path] = getattr(message.address, part) if part else getattr(message, head)
            else:
                raise _bad_mask(path, ("name", "timezone", "currency", "address", "address.<field>"))
        return changes
    changes = {field: getattr(message, field) for field in ("name", "timezone", "currency")
               if getattr(message, field)}
    if message.HasField("address"):
        changes.update({f"address.{part}": getattr(message.address, part) for part in _ADDRESS_PARTS})
    return changes


def restaurant_message(member: MemberRestaurant) -> staff_pb2.Restaurant:
    restaurant = member.restaurant
    address = restaurant.address
    return staff_pb2.Restaurant(
        id=str(restaurant.id), name=restaurant.name, timezone=restaurant.timezone,
        currency=restaurant.currency,
        address=staff_pb2.Address(**{part: getattr(address, part) or "" for part in _ADDRESS_PARTS}),
        role=member.role, version=restaurant.version,
        create_time=_timestamp(restaurant.create_time), update_time=_timestamp(restaurant.update_time),
        currency_minor_units=validation.currency_minor_units(restaurant.currency),
    )


# --- employees -------------------------------------------------------------------------------


def _present(message: staff_pb2.Employee, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def employee_draft(message: staff_pb2.Employee) -> EmployeeDraft:
    return EmployeeDraft(**{field: _present(message, field) for field in EMPLOYEE_MUTABLE_FIELDS})


def employee_changes(message: staff_pb2.Employee,
                     mask: field_mask_pb2.FieldMask | None) -> dict[str, Any]:
    """PATCH semantics: the fields present in `message` (proto3 `optional` tracks presence), or
    exactly the mask's paths, where a listed field that is absent is cleared."""
    if mask is not None and mask.paths:
        changes: dict[str, Any] = {}
        for path in mask.paths:
            if path not in EMPLOYEE_MUTABLE_FIELDS:
                raise _bad_mask(path, EMPLOYEE_MUTABLE_FIELDS)
            changes[path] = _present(message, path)
        return changes
    return {field: getattr(message, field) for field in EMPLOYEE_MUTABLE_FIELDS
            if message.HasField(field)}


def employee_message(employee: Employee) -> staff_pb2.Employee:
    message = staff_pb2.Employee(
        id=str(employee.id), restaurant_id=str(employee.restaurant_id),
        user_id=str(employee.user_id) if employee.user_id is not None else "",
        active=employee.active, version=employee.version,
        state=staff_pb2.EmployeeState.Value(employee.state.upper()),
        create_time=_timestamp(employee.create_time), update_time=_timestamp(employee.update_time),
        deactivate_time=_timestamp(employee.deactivate_time),
    )
    # Absent, not empty, when unknown or hidden from this caller.
    for field in ("first_name", "last_name", "email", "phone", "access_role", "job_title",
                  "hourly_rate_minor"):
        value = getattr(employee, field)
        if value is not None:
            setattr(message, field, value)
    if employee.start_date is not None:
        message.start_date = employee.start_date.isoformat()
    return message


def invitation_message(invitation: Invitation, now: datetime) -> staff_pb2.Invitation:
    return staff_pb2.Invitation(
        id=str(invitation.id), restaurant_id=str(invitation.restaurant_id),
        restaurant_name=invitation.restaurant_name, employee_id=str(invitation.employee_id),
        email=invitation.email, access_role=invitation.access_role,
        state=staff_pb2.InvitationState.Value(invitation.state_at(now).upper()),
        create_time=_timestamp(invitation.create_time),
        expire_time=_timestamp(invitation.expire_time),
        send_time=_timestamp(invitation.send_time), send_count=invitation.send_count,
        accept_time=_timestamp(invitation.accept_time))
