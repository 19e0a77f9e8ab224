"""Access rules that depend on the data, on top of the permission table (which decides who may
call an RPC at all): whom a manager may manage, and which fields of a record a caller may see.

Owners manage everyone. Managers manage staff-role employees only: they cannot create, change,
deactivate or reactivate owners or managers (themselves included), nor give anyone the owner or
manager role. Staff manage nobody.
"""

from __future__ import annotations

import dataclasses

from posmesh.common.errors import FailedPrecondition, PermissionDenied
from posmesh.common.permissions import MANAGER, OWNER, STAFF
from services.staff.models import Employee

# Roles each role may manage (as the current role of a record) and grant (as a new role).
_MANAGEABLE: dict[str, frozenset[str]] = {
    OWNER: frozenset({OWNER, MANAGER, STAFF}),
    MANAGER: frozenset({STAFF}),
    STAFF: frozenset(),
}


def role_denial(actor_role: str, permission: str, *, target_role: str | None = None,
                new_role: str | None = None) -> PermissionDenied | None:
    """Why `actor_role` may not apply `permission` to a `target_role` record (or grant `new_role`);
    None when allowed."""
    allowed = _MANAGEABLE.get(actor_role, frozenset())
    for what, role in (("on a {}-role employee", target_role), ("granting the {} role", new_role)):
        if role is not None and role not in allowed:
            needed = " or ".join(sorted(r for r, manageable in _MANAGEABLE.items() if role in manageable))
            return PermissionDenied(
                "ROLE_FORBIDDEN",
                f"permission {permission} {what.format(role)} needs role {needed}; "
                f"your role in this restaurant is {actor_role or 'none'}",
                permission=permission, role=actor_role,
                target_access_role=target_role, requested_access_role=new_role,
            )
    return None


def last_owner(permission: str) -> FailedPrecondition:
    return FailedPrecondition(
        "LAST_OWNER",
        f"{permission} would leave the restaurant without an active owner; make another employee "
        "an owner first",
        permission=permission,
    )


def view(employee: Employee, *, viewer_role: str, viewer_user_id: str) -> Employee:
    """The record as the viewer may see it: hidden fields become None."""
    if viewer_role == OWNER or str(employee.user_id) == viewer_user_id:
        return employee
    if viewer_role == MANAGER:
        if employee.access_role == STAFF:
            return employee
        # Contact details of colleagues, yes; the pay of other managers and owners, no.
        return dataclasses.replace(employee, hourly_rate_minor=None)
    # Staff (and anyone else) see the directory: names, access role, job title, active.
    return dataclasses.replace(employee, email=None, phone=None, hourly_rate_minor=None,
                               start_date=None)
