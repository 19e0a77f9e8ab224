"""The staff service's rules: restaurants, employees, who may manage whom, and keeping the auth
service's memberships in step with the employee records.

Memberships live in the auth service (they go into tokens); employee records live here. Every
change that touches both calls auth while this service's transaction is still open, and commits
only after auth said yes: when auth cannot be reached the transaction rolls back and nothing
changed here either (the client gets a retryable 503). When the commit itself fails after auth
said yes, the auth change is undone (compensation), so the two never disagree for long.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from posmesh.common import security_events
from posmesh.common.context import Caller
from posmesh.common.errors import (
    AlreadyExists,
    ApiError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    version_conflict,
)
from posmesh.common.permissions import OWNER, STAFF
from posmesh.common.user_events import RESTAURANT_CREATED, UserEvent
from services.staff import paging, rules, validation
from services.staff.models import (
    ACTIVE,
    DEACTIVATED,
    EMPLOYEE_STATES,
    INVITED,
    Address,
    Employee,
    EmployeeDraft,
    EmployeeFilter,
    MemberRestaurant,
    NewEmployee,
    NewRestaurant,
    Page,
    Restaurant,
    RestaurantDraft,
)
from services.staff.store import RESTAURANT_ADDRESS_COLUMNS, StaffStore, StaffTransaction

if TYPE_CHECKING:
    from services.staff.invitations import Invitations

Undo = Callable[[], Awaitable[Any]]

log = logging.getLogger(__name__)

ME = "me"
# Fields of an employee a PATCH may name, and those it may not clear.
EMPLOYEE_MUTABLE_FIELDS = ("first_name", "last_name", "email", "phone", "access_role", "job_title",
                           "hourly_rate_minor", "start_date")
RESTAURANT_MUTABLE_FIELDS = ("name", "timezone", "currency",
                             *(f"address.{part}" for part in RESTAURANT_ADDRESS_COLUMNS))


def permission(rpc: str) -> str:
    return f"staff.{rpc}"


# --- The auth service, as this domain needs it ------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserAccount:
    id: str
    email: str
    full_name: str
    email_verified: bool = False


@dataclass(frozen=True, slots=True)
class MembershipChange:
    previous_role: str
    revoked_sessions: int


class Accounts(Protocol):
    """The auth service's internal AuthAdminService. Failures raise ApiError (AUTH_UNAVAILABLE
    when auth cannot be reached)."""

    async def claim_account(self, email: str, full_name: str, password: str,
                            client_ip: str) -> UserAccount: ...

    async def find_user_by_email(self, email: str) -> UserAccount | None: ...

    async def get_user(self, user_id: str) -> UserAccount | None: ...

    async def grant_membership(self, user_id: str, restaurant_id: str, restaurant_name: str,
                               role: str) -> MembershipChange: ...

    async def revoke_membership(self, user_id: str, restaurant_id: str) -> int: ...

    async def create_floor_account(self, user_id: str, full_name: str, restaurant_id: str,
                                   restaurant_name: str, role: str) -> UserAccount: ...


# --- Validation of whole drafts --------------------------------------------------------------


def new_restaurant(draft: RestaurantDraft) -> NewRestaurant:
    return NewRestaurant(
        name=validation.required_text(draft.name, "restaurant.name",
                                      max_length=validation.RESTAURANT_NAME_MAX),
        timezone=validation.timezone(draft.timezone, "restaurant.timezone"),
        currency=validation.currency(draft.currency, "restaurant.currency"),
        address=address(draft.address or Address()),
    )


def address(raw: Address) -> Address:
    return Address(**{part: address_part(part, getattr(raw, part)) for part in RESTAURANT_ADDRESS_COLUMNS})


def address_part(part: str, value: str | None) -> str | None:
    field = f"restaurant.address.{part}"
    if part == "country":
        return validation.country(value, field)
    limit = {"line1": validation.ADDRESS_LINE_MAX, "line2": validation.ADDRESS_LINE_MAX,
             "postal_code": validation.POSTAL_CODE_MAX}.get(part, validation.ADDRESS_PART_MAX)
    return validation.text(value, field, max_length=limit, required=False)


def restaurant_values(changes: dict[str, Any]) -> dict[str, Any]:
    """Column values for a restaurant PATCH: {"name": ..., "address.city": ...} -> columns."""
    values: dict[str, Any] = {}
    for field, raw in changes.items():
        if field == "name":
            values["name"] = validation.required_text(raw, "restaurant.name",
                                                      max_length=validation.RESTAURANT_NAME_MAX)
        elif field == "timezone":
            values["timezone"] = validation.timezone(raw, "restaurant.timezone")
        elif field == "currency":
            values["currency"] = validation.currency(raw, "restaurant.currency")
        elif field.startswith("address.") and field[8:] in RESTAURANT_ADDRESS_COLUMNS:
            values[RESTAURANT_ADDRESS_COLUMNS[field[8:]]] = address_part(field[8:], raw)
        else:
            raise InvalidArgument("INVALID_UPDATE_MASK", f"update_mask: {field!r} cannot be changed",
                                  field="update_mask")
    return values


def new_employee(draft: EmployeeDraft) -> NewEmployee:
    return NewEmployee(
        first_name=validation.required_text(draft.first_name, "employee.first_name",
                                            max_length=validation.PERSON_NAME_MAX),
        last_name=validation.text(draft.last_name, "employee.last_name",
                                  max_length=validation.PERSON_NAME_MAX, required=False),
        email=(validation.email(draft.email, "employee.email")
               if draft.email is not None else None),
        phone=validation.phone(draft.phone, "employee.phone"),
        access_role=validation.access_role(draft.access_role, "employee.access_role")
        if draft.access_role is not None else STAFF,
        job_title=validation.job_title(draft.job_title, "employee.job_title"),
        hourly_rate_minor=validation.hourly_rate(draft.hourly_rate_minor, "employee.hourly_rate_minor"),
        start_date=validation.start_date(draft.start_date, "employee.start_date"),
    )


def employee_values(changes: dict[str, Any]) -> dict[str, Any]:
    """Validated column values for an employee PATCH (None clears an optional field). `email` is
    passed through normalised; whether it may change is decided against the record."""
    values: dict[str, Any] = {}
    for field, raw in changes.items():
        name = f"employee.{field}"
        if field == "first_name":
            values[field] = validation.required_text(raw, name, max_length=validation.PERSON_NAME_MAX)
        elif field == "last_name":
            values[field] = validation.text(raw, name, max_length=validation.PERSON_NAME_MAX,
                                            required=False)
        elif field == "email":
            values[field] = validation.email(raw, name)
        elif field == "phone":
            values[field] = validation.phone(raw, name)
        elif field == "access_role":
            values[field] = validation.access_role(raw, name)
        elif field == "job_title":
            values[field] = validation.job_title(raw, name)
        elif field == "hourly_rate_minor":
            values[field] = validation.hourly_rate(raw, name)
        elif field == "start_date":
            values[field] = validation.start_date(raw, name)
        else:
            raise InvalidArgument("INVALID_UPDATE_MASK", f"update_mask: {field!r} cannot be changed",
                                  field="update_mask")
    return values


def split_full_name(full_name: str, email: str) -> tuple[str, str | None]:
    """An account's display name as first and last name (for the owner's employee record)."""
    parts = full_name.split(None, 1)
    if not parts:
        return email.split("@", 1)[0][: validation.PERSON_NAME_MAX] or "Owner", None
    last = parts[1][: validation.PERSON_NAME_MAX] if len(parts) > 1 else None
    return parts[0][: validation.PERSON_NAME_MAX], last


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def _require_version(version: int, field: str) -> None:
    if version <= 0:
        raise InvalidArgument("VERSION_REQUIRED",
                              f"{field}: send the version you last read, for optimistic concurrency",
                              field=field)


def _employee_not_found(employee_id: str) -> NotFound:
    return NotFound("EMPLOYEE_NOT_FOUND", f"there is no employee {employee_id[:64]} in this restaurant")


def _restaurant_not_found(restaurant_id: str) -> NotFound:
    return NotFound("RESTAURANT_NOT_FOUND",
                    f"there is no restaurant {restaurant_id[:64]} that you belong to")


class UserEvents(Protocol):
    """Where events about a user go (posmesh.common.user_events.UserEventPublisher)."""

    async def publish(self, *events: UserEvent) -> None: ...


class StaffDomain:
    def __init__(self, store: StaffStore, accounts: Accounts, user_events: UserEvents,
                 invitations: Invitations) -> None:
        self.store = store
        self.accounts = accounts
        self.user_events = user_events
        self.invitations = invitations

    # --- restaurants -----------------------------------------------------------------------

    async def create_restaurant(self, caller: Caller, draft: RestaurantDraft) -> MemberRestaurant:
        new = new_restaurant(draft)
        user = await self.accounts.get_user(caller.user_id)
        if user is None:
            raise Unauthenticated("TOKEN_INVALID", "the account this token belongs to no longer exists")
        first_name, last_name = split_full_name(user.full_name, user.email)
        restaurant_id = uuid.uuid4()
        owner = NewEmployee(first_name=first_name, last_name=last_name, email=user.email, phone=None,
                            access_role=OWNER, job_title="owner", hourly_rate_minor=None,
                            start_date=None)

        async def write(tx: StaffTransaction, on_auth: Callable[[Undo], None]) -> Restaurant:
            restaurant = await tx.insert_restaurant(restaurant_id, new)
            employee = await tx.insert_employee(restaurant_id, owner,
                                                user_id=uuid.UUID(caller.user_id))
            assert employee is not None  # a brand-new restaurant has no employees yet
            await tx.record_change(employee, caller.user_id, "created",
                                   {"access_role": OWNER, "restaurant_created": True})
            # The new id is granted before the commit: no restaurant ever exists without its
            # owner's membership (an auth failure rolls the insert back).
            on_auth(lambda: self.accounts.revoke_membership(caller.user_id, str(restaurant_id)))
            await self.accounts.grant_membership(caller.user_id, str(restaurant_id), new.name, OWNER)
            return restaurant

        restaurant = await self._write_with_compensation(
            write, what=f"owner membership of restaurant {restaurant_id}")
        log.info("restaurant created", extra={"restaurant_id": str(restaurant_id),
                                              "user_id": caller.user_id})
        await self.user_events.publish(UserEvent(caller.user_id, RESTAURANT_CREATED, {
            "restaurant_id": str(restaurant_id), "restaurant_name": new.name, "role": OWNER}))
        return MemberRestaurant(restaurant, OWNER)

    async def list_restaurants(self, caller: Caller, page_size: int,
                               page_token: str) -> Page[MemberRestaurant]:
        scope = f"restaurants:{caller.user_id}"
        page = paging.request(page_size, page_token, scope)
        rows = await self.store.member_restaurants(uuid.UUID(caller.user_id), page)
        items, token = paging.page_of(rows, page.size, lambda m: (m.restaurant.create_time, m.restaurant.id), scope)
        return Page(items, token)

    async def get_restaurant(self, caller: Caller, restaurant_id: str) -> MemberRestaurant:
        try:
            parsed = uuid.UUID(restaurant_id)
        except ValueError:
            raise _restaurant_not_found(restaurant_id) from None
        found = await self.store.member_restaurant(uuid.UUID(caller.user_id), parsed)
        if found is None:
            raise _restaurant_not_found(restaurant_id)
        return found

    async def update_restaurant(self, caller: Caller, restaurant_id: str, changes: dict[str, Any],
                                version: int) -> MemberRestaurant:
        name = permission("UpdateRestaurant")
        if restaurant_id != caller.restaurant_id:  # the interceptor's tenant check, kept local too
            raise _restaurant_not_found(restaurant_id)
        _require_version(version, "restaurant.version")
        values = restaurant_values(changes)
        rid = uuid.UUID(caller.restaurant_id)

        async def write(tx: StaffTransaction, on_auth: Callable[[Undo], None]) -> MemberRestaurant:
            current = await self._lock_restaurant(tx, rid)
            actor = await self._actor(tx, caller, rid)
            if actor.access_role != OWNER:
                self._deny(caller, PermissionDenied(
                    "ROLE_FORBIDDEN", f"permission {name} needs role owner; your role in this "
                    f"restaurant is {actor.access_role}", permission=name, role=actor.access_role))
            if version != current.version:
                raise version_conflict("restaurant", version, current.version)
            changed = {column: value for column, value in values.items()
                       if value != _restaurant_column(current, column)}
            if not changed:
                return MemberRestaurant(current, actor.access_role)
            updated = await tx.update_restaurant(rid, changed)
            if "name" in changed:
                # Memberships carry the restaurant's name (GetMe, token introspection). Auth keeps
                # every member's copy in step with the name of any grant, so re-granting the
                # owner their own role (no change, no session ends) renames them all. Under the
                # restaurant lock, so it cannot race with a change of this owner's role.
                on_auth(lambda: self.accounts.grant_membership(caller.user_id, str(rid),
                                                               current.name, OWNER))
                await self.accounts.grant_membership(caller.user_id, str(rid), updated.name, OWNER)
            return MemberRestaurant(updated, actor.access_role)

        return await self._write_with_compensation(write, what=f"rename of restaurant {rid}")

    # --- employees: reads ------------------------------------------------------------------

    async def list_employees(self, caller: Caller, page_size: int, page_token: str,
                             access_role: str, state: str) -> Page[Employee]:
        role_filter = validation.access_role(access_role, "access_role") if access_role.strip() else None
        state = (state or ACTIVE).strip().lower()
        if state not in EMPLOYEE_STATES:
            raise InvalidArgument("INVALID_FILTER",
                                  f"state: {state[:20]!r} is not one of {', '.join(EMPLOYEE_STATES)}",
                                  field="state")
        scope = f"employees:{caller.restaurant_id}:{role_filter}:{state}"
        page = paging.request(page_size, page_token, scope)
        rows = await self.store.employees(uuid.UUID(caller.restaurant_id),
                                          EmployeeFilter(role_filter, state), page)
        items, token = paging.page_of(rows, page.size, lambda e: (e.create_time, e.id), scope)
        return Page([self._view(caller, employee) for employee in items], token)

    async def get_employee(self, caller: Caller, employee_id: str) -> Employee:
        rid = uuid.UUID(caller.restaurant_id)
        if employee_id.strip().lower() == ME:
            found = await self.store.employee_of_user(rid, uuid.UUID(caller.user_id))
        else:
            found = await self.store.employee(rid, self._employee_id(employee_id))
        if found is None:
            raise _employee_not_found(employee_id)
        return self._view(caller, found)

    # --- employees: writes -----------------------------------------------------------------

    async def create_employee(self, caller: Caller, draft: EmployeeDraft) -> Employee:
        """An INVITED employee and the invitation mailed to their address (one transaction).
        No account is linked and no membership granted: that waits for the invited person.
        Without an address: an ACTIVE employee with a floor account (PIN only)."""
        name = permission("CreateEmployee")
        new = new_employee(draft)
        # Fail fast on the token's role; the recorded role is checked again under the lock.
        if denial := rules.role_denial(caller.role, name, new_role=new.access_role):
            self._deny(caller, denial)
        rid = uuid.UUID(caller.restaurant_id)
        if new.email is None:
            return await self._create_floor_employee(caller, rid, new)
        async with self.store.transaction() as tx:
            restaurant = await self._lock_restaurant(tx, rid)
            actor = await self._actor(tx, caller, rid)
            if denial := rules.role_denial(actor.access_role, name, new_role=new.access_role):
                self._deny(caller, denial)
            # A deactivated record of the address is reactivated, an invited one's invitation
            # resent: never duplicated.
            if (existing := await tx.employee_with_email(rid, new.email)) is not None:
                raise await _employee_exists(tx, existing)
            employee = await tx.insert_employee(rid, new)
            if employee is None:  # a concurrent invitation of the same address won
                raise await _employee_exists(tx, await tx.employee_with_email(rid, new.email))
            await tx.record_change(employee, caller.user_id, "invited",
                                   {field: _json_value(value) for field, value in _fields(new).items()})
            invitation = await self.invitations.send_in(tx, restaurant, employee, actor)
        security_events.record("EMPLOYEE_INVITED", severity=security_events.INFO,
                               ip=caller.client_ip, user_id=caller.user_id,
                               restaurant_id=caller.restaurant_id, employee_id=str(employee.id),
                               role=employee.access_role)
        await self.invitations.announce(invitation)
        log.info("employee invited", extra={"restaurant_id": str(rid), "employee_id": str(employee.id),
                                            "access_role": employee.access_role})
        return self._view(caller, employee)

    async def _create_floor_employee(self, caller: Caller, rid: uuid.UUID,
                                     new: NewEmployee) -> Employee:
        """Someone with no email address: their account (no email, no password) and membership
        are made by auth as the transaction's last step; a manager then gives them a PIN setup
        code (DeviceService.ResetPin) to choose their PIN on a till."""
        name = permission("CreateEmployee")
        user_id = uuid.uuid4()

        async def write(tx: StaffTransaction, on_auth: Callable[[Undo], None]) -> Employee:
            restaurant = await self._lock_restaurant(tx, rid)
            actor = await self._actor(tx, caller, rid)
            if denial := rules.role_denial(actor.access_role, name, new_role=new.access_role):
                self._deny(caller, denial)
            employee = await tx.insert_employee(rid, new, user_id=user_id)
            assert employee is not None  # a new user id and no address: nothing to collide with
            await tx.record_change(employee, caller.user_id, "created",
                                   {field: _json_value(value) for field, value in _fields(new).items()})
            on_auth(lambda: self.accounts.revoke_membership(str(user_id), str(rid)))
            full_name = " ".join(part for part in (new.first_name, new.last_name) if part)
            await self.accounts.create_floor_account(str(user_id), full_name, str(rid),
                                                     restaurant.name, new.access_role)
            return employee

        employee = await self._write_with_compensation(
            write, what=f"floor account {user_id} in restaurant {rid}")
        security_events.record("EMPLOYEE_CREATED_WITHOUT_EMAIL", severity=security_events.INFO,
                               ip=caller.client_ip, user_id=caller.user_id,
                               restaurant_id=caller.restaurant_id, employee_id=str(employee.id),
                               role=employee.access_role)
        return self._view(caller, employee)

    async def update_employee(self, caller: Caller, employee_id: str, changes: dict[str, Any],
                              version: int) -> Employee:
        name = permission("UpdateEmployee")
        _require_version(version, "employee.version")
        values = employee_values(changes)
        rid = uuid.UUID(caller.restaurant_id)

        async def write(tx: StaffTransaction, on_auth: Callable[[Undo], None]) -> Employee:
            restaurant = await self._lock_restaurant(tx, rid)
            actor = await self._actor(tx, caller, rid)
            target = await self._target(tx, caller, rid, employee_id)
            new_role = values.get("access_role")
            if denial := rules.role_denial(
                    actor.access_role, name, target_role=target.access_role,
                    new_role=new_role if new_role != target.access_role else None):
                self._deny(caller, denial)
            if version != target.version:
                raise version_conflict("employee", version, target.version)
            if target.state == DEACTIVATED:
                raise FailedPrecondition(
                    "EMPLOYEE_INACTIVE",
                    f"employee {target.id} is deactivated; reactivate them (POST "
                    f"/api/v1/employees/{target.id}:undelete) before changing their record",
                    employee_id=target.id)
            if "email" in values and values["email"] != target.email:
                raise InvalidArgument(
                    "EMAIL_IMMUTABLE",
                    "employee.email: the email links the user account and cannot change; "
                    "deactivate this employee and create one with the right email",
                    field="employee.email")
            changed = {field: value for field, value in values.items()
                       if value != getattr(target, field)}
            if not changed:
                return target  # nothing differs: no new version, no history entry
            role_changes = "access_role" in changed
            if role_changes and target.access_role == OWNER:
                await self._keep_an_owner(tx, target, name)
            updated = await tx.update_employee(target.id, changed)
            await tx.record_change(updated, caller.user_id,
                                   "role_changed" if role_changes else "updated",
                                   {field: [_json_value(getattr(target, field)), _json_value(value)]
                                    for field, value in changed.items()})
            if role_changes and target.state == ACTIVE:
                # Auth changes the membership and ends the user's sessions here, so the new role
                # applies from their next token on. (An invited employee has no membership yet:
                # accepting grants whatever role the record has then.)
                on_auth(lambda: self.accounts.grant_membership(
                    str(target.user_id), str(rid), restaurant.name, target.access_role))
                await self.accounts.grant_membership(str(target.user_id), str(rid), restaurant.name,
                                                     updated.access_role)
            return updated

        employee = await self._write_with_compensation(
            write, what=f"role change of employee {employee_id} in restaurant {rid}")
        return self._view(caller, employee)

    async def deactivate_employee(self, caller: Caller, employee_id: str, version: int) -> Employee:
        name = permission("DeleteEmployee")
        rid = uuid.UUID(caller.restaurant_id)

        async def write(tx: StaffTransaction, on_auth: Callable[[Undo], None]) -> Employee:
            restaurant, target = await self._guarded_target(tx, caller, rid, employee_id, name,
                                                            version)
            if target.state == DEACTIVATED:
                return target  # already deactivated: deleting again changes nothing
            if target.access_role == OWNER and target.state == ACTIVE:
                await self._keep_an_owner(tx, target, name)
            updated = await tx.deactivate_employee(target.id)
            await tx.record_change(updated, caller.user_id, "deactivated", {})
            if target.state == INVITED:
                # Never accepted: no membership to take back, only the link.
                if (invitation := await tx.open_invitation_of_employee(target.id)) is not None:
                    await tx.close_invitation(invitation.id)
                return updated
            # Auth removes the membership and ends the user's sessions here at once.
            on_auth(lambda: self.accounts.grant_membership(
                str(target.user_id), str(rid), restaurant.name, target.access_role))
            await self.accounts.revoke_membership(str(target.user_id), str(rid))
            return updated

        employee = await self._write_with_compensation(
            write, what=f"deactivation of employee {employee_id} in restaurant {rid}")
        return self._view(caller, employee)

    async def reactivate_employee(self, caller: Caller, employee_id: str, version: int) -> Employee:
        name = permission("UndeleteEmployee")
        rid = uuid.UUID(caller.restaurant_id)

        async def write(tx: StaffTransaction, on_auth: Callable[[Undo], None]) -> Employee:
            restaurant, target = await self._guarded_target(tx, caller, rid, employee_id, name,
                                                            version)
            if target.state != DEACTIVATED:
                return target  # active or invited already: nothing to do
            if target.user_id is None:
                # Never accepted: invited again, with a new link. The mails sent to the address
                # before still count against the send limits.
                await self.invitations.refuse_if_sent_too_often(tx, rid, target.email or "")
                updated = await tx.reactivate_employee(target.id, invited=True)
                await tx.record_change(updated, caller.user_id, "reinvited", {})
                actor = await self._actor(tx, caller, rid)
                await self.invitations.send_in(tx, restaurant, updated, actor)
                return updated
            updated = await tx.reactivate_employee(target.id, invited=False)
            await tx.record_change(updated, caller.user_id, "reactivated",
                                   {"access_role": updated.access_role})
            on_auth(lambda: self.accounts.revoke_membership(str(target.user_id), str(rid)))
            await self.accounts.grant_membership(str(target.user_id), str(rid), restaurant.name,
                                                 target.access_role)
            return updated

        employee = await self._write_with_compensation(
            write, what=f"reactivation of employee {employee_id} in restaurant {rid}")
        return self._view(caller, employee)

    # --- helpers ---------------------------------------------------------------------------

    async def _write_with_compensation(
            self, write: Callable[[StaffTransaction, Callable[[Undo], None]], Awaitable[Any]], *,
            what: str) -> Any:
        """Runs `write` in a transaction. `write` calls auth as its last step and, just before,
        registers how to revert that call. If anything fails after the call may have reached auth
        (the commit, or an auth reply that never came), the revert runs. Every revert is harmless
        when the forward call did not happen (revoking an absent membership, granting the role a
        user already has)."""
        undo: list[Undo] = []
        try:
            async with self.store.transaction() as tx:
                return await write(tx, undo.append)
        except ApiError as error:
            # An answer from auth (any ApiError raised after registering) says it did not apply;
            # only a call whose outcome is unknown (a timeout) needs reverting.
            if undo and error.metadata.get("auth_outcome") == "unknown":
                await self._undo(undo[-1], what, error)
            raise
        except BaseException as error:
            if undo:
                await self._undo(undo[-1], what, error)
            raise

    @staticmethod
    async def _undo(undo: Callable[[], Awaitable[Any]], what: str, cause: BaseException) -> None:
        try:
            await undo()
            log.warning("undid the auth side of %s after the write failed: %r", what, cause)
        except Exception as exc:
            log.error("could not undo the auth side of %s after the write failed (%r): %r; "
                      "the membership and the employee record disagree until the next change",
                      what, cause, exc)

    async def _lock_restaurant(self, tx: StaffTransaction, rid: uuid.UUID) -> Restaurant:
        restaurant = await tx.lock_restaurant(rid)
        if restaurant is None:
            raise _restaurant_not_found(str(rid))
        return restaurant

    async def _actor(self, tx: StaffTransaction, caller: Caller, rid: uuid.UUID) -> Employee:
        """The caller's own record, read under the restaurant lock: its role, not the token's, is
        what writes are checked against (a role changed a moment ago counts at once)."""
        actor = await tx.employee_of_user(rid, uuid.UUID(caller.user_id))
        if actor is None or not actor.active:
            self._deny(caller, PermissionDenied(
                "NOT_A_MEMBER", f"you are not an active employee of restaurant {rid}",
                restaurant_id=rid))
        assert actor is not None
        return actor

    async def _guarded_target(self, tx: StaffTransaction, caller: Caller, rid: uuid.UUID,
                              employee_id: str, name: str, version: int):
        """Locks the restaurant, then checks the caller may act on the employee under `name` and
        that `version` (when given) is current. Returns (restaurant, employee)."""
        restaurant = await self._lock_restaurant(tx, rid)
        actor = await self._actor(tx, caller, rid)
        target = await self._target(tx, caller, rid, employee_id)
        if denial := rules.role_denial(actor.access_role, name, target_role=target.access_role):
            self._deny(caller, denial)
        if version and version != target.version:
            raise version_conflict("employee", version, target.version)
        return restaurant, target

    async def _target(self, tx: StaffTransaction, caller: Caller, rid: uuid.UUID,
                      employee_id: str) -> Employee:
        if employee_id.strip().lower() == ME:
            own = await tx.employee_of_user(rid, uuid.UUID(caller.user_id))
            target = await tx.employee_for_update(rid, own.id) if own else None
        else:
            target = await tx.employee_for_update(rid, self._employee_id(employee_id))
        if target is None:
            raise _employee_not_found(employee_id)
        return target

    async def _keep_an_owner(self, tx: StaffTransaction, target: Employee, name: str) -> None:
        if await tx.count_active_owners(target.restaurant_id, excluding=target.id) == 0:
            raise rules.last_owner(name)

    @staticmethod
    def _employee_id(employee_id: str) -> uuid.UUID:
        return validation.resource_id(employee_id, "employee_id")

    @staticmethod
    def _view(caller: Caller, employee: Employee) -> Employee:
        return rules.view(employee, viewer_role=caller.role, viewer_user_id=caller.user_id)

    @staticmethod
    def _deny(caller: Caller, error: PermissionDenied) -> None:
        details = {key: value for key, value in error.metadata.items()
                   if key not in ("type", "severity", "ip", "user_id", "restaurant_id")}
        security_events.record("ACCESS_DENIED", ip=caller.client_ip, user_id=caller.user_id,
                               restaurant_id=caller.restaurant_id, reason=error.reason, **details)
        raise error


def _fields(new: NewEmployee) -> dict[str, Any]:
    return {field: getattr(new, field) for field in NewEmployee.__slots__}


def _restaurant_column(restaurant: Restaurant, column: str) -> Any:
    for part, address_column in RESTAURANT_ADDRESS_COLUMNS.items():
        if column == address_column:
            return getattr(restaurant.address, part)
    return getattr(restaurant, column)


async def _employee_exists(tx: StaffTransaction, existing: Employee | None) -> AlreadyExists:
    """EMPLOYEE_EXISTS, with what to do instead for the state the existing record is in."""
    if existing is None:  # the row that conflicted vanished: cannot happen under the lock
        return AlreadyExists("EMPLOYEE_EXISTS", "this user is already an employee of this restaurant")
    invitation_id = None
    if existing.state == INVITED:
        # An invited record always has its open invitation (revoking one deactivates the record).
        invitation = await tx.open_invitation_of_employee(existing.id)
        invitation_id = invitation.id if invitation is not None else None
        hint = (f"; they are invited and have not accepted yet: send the invitation again with "
                f"POST /api/v1/invitations/{invitation_id}:resend" if invitation_id else
                "; they are invited and have not accepted yet: resend their invitation")
    elif existing.state == DEACTIVATED:
        hint = (f"; they are deactivated: reactivate them with "
                f"POST /api/v1/employees/{existing.id}:undelete")
    else:
        hint = ""
    return AlreadyExists("EMPLOYEE_EXISTS",
                         f"this user is already employee {existing.id} of this restaurant{hint}",
                         employee_id=existing.id, active=str(existing.active).lower(),
                         state=existing.state, invitation_id=invitation_id)
