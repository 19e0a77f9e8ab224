"""The staff domain's orchestration against an in-memory store and a fake auth service: RBAC on
the data, the last owner, optimistic concurrency, PATCH semantics, and the membership kept in step
with the employee record when auth or the commit fails.

The store fake keeps the real store's contract (transactions roll back on any error, the commit
can be made to fail); SQL itself is covered over the wire in tests/e2e/test_staff_*.py.

Every error a test sees an entry point answer with must be declared by that RPC's
`method_errors` (or implied by its access kind): the domain's entry points are wrapped with that
check, so an unhappy path tested here cannot drift from the contract. (The static scan in
test_error_catalogue.py sees only reasons written in the code, not the ones relayed from auth.)
"""

from __future__ import annotations

import ast
import copy
import functools
import dataclasses
import itertools
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import pytest

from posmesh.common import security_events
from posmesh.common.context import Caller
from posmesh.common.errors import (
    AlreadyExists,
    ApiError,
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from posmesh.common.settings import Settings
from services.staff.domain import MembershipChange, StaffDomain, UserAccount
from services.staff import invitations as invitations_module
from services.staff.invitations import Invitations, send_refusal
from services.staff.models import (
    ACTIVE,
    DEACTIVATED,
    INACTIVE,
    INVITED,
    Invitation,
    Address,
    EmployeeDraft,
    MemberRestaurant,
    Restaurant,
    RestaurantDraft,
)
from services.staff.models import Employee as EmployeeRecord
from services.staff.store import RESTAURANT_ADDRESS_COLUMNS
from stack import codegen, contract
from stack.error_reasons import Catalogue
from tests.unit.reason_scan import ROOT

_clock = itertools.count()
_elapsed = [timedelta(0)]  # moved on by `advance`


def _now() -> datetime:
    """The one clock of these tests (the invitations' rules read it too); every reading is
    later than the one before."""
    return (datetime(2025, 1, 1, tzinfo=timezone.utc) + _elapsed[0]
            + timedelta(microseconds=next(_clock)))


def advance(delta: timedelta) -> None:
    _elapsed[0] += delta


class _Now:
    """Stands in for sa.func.now() in update values."""


class MemoryTransaction:
    def __init__(self, data: dict) -> None:
        self.data = data

    async def lock_restaurant(self, rid):
        return self.data["restaurants"].get(rid)

    async def insert_restaurant(self, rid, new):
        now = _now()
        restaurant = Restaurant(id=rid, name=new.name, timezone=new.timezone, currency=new.currency,
                                address=new.address, version=1, create_time=now, update_time=now)
        self.data["restaurants"][rid] = restaurant
        return restaurant

    async def update_restaurant(self, rid, values):
        current = self.data["restaurants"][rid]
        address = current.address
        fields = {}
        for column, value in values.items():
            part = next((p for p, c in RESTAURANT_ADDRESS_COLUMNS.items() if c == column), None)
            if part:
                address = dataclasses.replace(address, **{part: value})
            else:
                fields[column] = value
        updated = dataclasses.replace(current, **fields, address=address, version=current.version + 1,
                                      update_time=_now())
        self.data["restaurants"][rid] = updated
        return updated

    async def insert_employee(self, rid, new, *, user_id=None):
        if any(e.restaurant_id == rid and e.state != DEACTIVATED
               and (e.email == new.email or (user_id and e.user_id == user_id))
               for e in self.data["employees"].values()):
            return None
        now = _now()
        employee = EmployeeRecord(
            id=uuid.uuid4(), restaurant_id=rid, user_id=user_id, active=user_id is not None,
            version=1, create_time=now, update_time=now, deactivate_time=None,
            state=ACTIVE if user_id is not None else INVITED,
            **{f.name: getattr(new, f.name) for f in dataclasses.fields(new)})
        self.data["employees"][employee.id] = employee
        return employee

    async def employee_with_email(self, rid, email):
        found = sorted((e for e in self.data["employees"].values()
                        if e.restaurant_id == rid and e.email == email),
                       key=lambda e: e.state == DEACTIVATED)
        return found[0] if found else None

    async def deactivate_employee(self, employee_id):
        return await self.update_employee(employee_id, {"state": DEACTIVATED, "active": False,
                                                        "deactivate_time": _now()})

    async def reactivate_employee(self, employee_id, *, invited):
        return await self.update_employee(employee_id, {
            "state": INVITED if invited else ACTIVE, "active": not invited,
            "deactivate_time": None})

    async def activate_employee(self, employee_id, user_id):
        return await self.update_employee(employee_id, {"state": ACTIVE, "active": True,
                                                        "user_id": user_id})

    async def enqueue_mail(self, mail):
        self.data["mails"].append(mail)

    def _invitation_view(self, row: dict) -> Invitation:
        employee = self.data["employees"][row["employee_id"]]
        restaurant = self.data["restaurants"][row["restaurant_id"]]
        return Invitation(restaurant_name=restaurant.name, access_role=employee.access_role,
                          **{k: v for k, v in row.items() if k not in ("token_digest", "accepted_by")})

    async def insert_invitation(self, rid, new):
        now = _now()
        row = {"id": uuid.uuid4(), "restaurant_id": rid, "employee_id": new.employee_id,
               "email": new.email, "token_digest": new.token_digest, "create_time": now,
               "expire_time": new.expire_time, "send_time": now, "send_count": 1,
               "accept_time": None, "revoke_time": None, "accepted_by": None}
        self.data["invitations"][row["id"]] = row
        self.data["sends"].append((rid, new.email, now))
        return self._invitation_view(row)

    async def invitation_send_times(self, rid, email, *, since):
        return sorted(time for r, e, time in self.data["sends"]
                      if r == rid and e == email and time > since)

    async def invitation_for_update(self, rid, *, invitation_id=None, token_digest=None):
        for row in self.data["invitations"].values():
            if ((token_digest is not None and row["token_digest"] == token_digest)
                    or (token_digest is None and row["id"] == invitation_id)) \
                    and (rid is None or row["restaurant_id"] == rid):
                return self._invitation_view(row)
        return None

    async def open_invitation_of_employee(self, employee_id):
        for row in self.data["invitations"].values():
            if row["employee_id"] == employee_id and not row["accept_time"] \
                    and not row["revoke_time"]:
                return self._invitation_view(row)
        return None

    async def resend_invitation(self, invitation_id, *, token_digest, expire_time):
        row = self.data["invitations"][invitation_id]
        row.update(token_digest=token_digest, expire_time=expire_time, send_time=_now(),
                   send_count=row["send_count"] + 1)
        self.data["sends"].append((row["restaurant_id"], row["email"], row["send_time"]))
        return self._invitation_view(row)

    async def close_invitation(self, invitation_id, *, accepted_by=None):
        row = self.data["invitations"][invitation_id]
        if accepted_by is not None:
            row.update(accept_time=_now(), accepted_by=accepted_by)
        else:
            row.update(revoke_time=_now())
        return self._invitation_view(row)

    async def employee_for_update(self, rid, employee_id):
        found = self.data["employees"].get(employee_id)
        return found if found and found.restaurant_id == rid else None

    async def employee_of_user(self, rid, user_id):
        return next((e for e in self.data["employees"].values()
                     if e.restaurant_id == rid and e.user_id == user_id), None)

    async def update_employee(self, employee_id, values):
        now = _now()
        values = {k: (now if isinstance(v, _Now) or type(v).__name__ == "now" else v)
                  for k, v in values.items()}
        current = self.data["employees"][employee_id]
        updated = dataclasses.replace(current, **values, version=current.version + 1, update_time=now)
        self.data["employees"][employee_id] = updated
        return updated

    async def count_active_owners(self, rid, *, excluding):
        return sum(1 for e in self.data["employees"].values()
                   if e.restaurant_id == rid and e.active and e.access_role == "owner" and e.id != excluding)

    async def record_change(self, employee, actor_user_id, action, changes):
        self.data["changes"].append((employee.id, actor_user_id, action, changes))


class MemoryStore:
    def __init__(self) -> None:
        self.data = {"restaurants": {}, "employees": {}, "changes": [], "invitations": {},
                     "mails": [], "sends": []}
        self.fail_commit = False

    @asynccontextmanager
    async def transaction(self):
        snapshot = copy.deepcopy(self.data)
        try:
            yield MemoryTransaction(self.data)
            if self.fail_commit:
                raise ConnectionResetError("the connection dropped during COMMIT")
        except BaseException:
            self.data.clear()
            self.data.update(snapshot)
            raise

    async def member_restaurants(self, user_id, page):
        rows = sorted((MemberRestaurant(self.data["restaurants"][e.restaurant_id], e.access_role)
                       for e in self.data["employees"].values() if e.user_id == user_id and e.active),
                      key=lambda m: (m.restaurant.create_time, m.restaurant.id))
        if page.after:
            rows = [m for m in rows if (m.restaurant.create_time, m.restaurant.id) > page.after]
        return rows[: page.size + 1]

    async def member_restaurant(self, user_id, rid):
        for e in self.data["employees"].values():
            if e.user_id == user_id and e.restaurant_id == rid and e.active:
                return MemberRestaurant(self.data["restaurants"][rid], e.access_role)
        return None

    async def employees(self, rid, where, page):
        rows = sorted((e for e in self.data["employees"].values() if e.restaurant_id == rid),
                      key=lambda e: (e.create_time, e.id))
        if where.access_role:
            rows = [e for e in rows if e.access_role == where.access_role]
        if where.state in (ACTIVE, INVITED):
            rows = [e for e in rows if e.state == where.state]
        elif where.state == INACTIVE:
            rows = [e for e in rows if e.state == DEACTIVATED]
        if page.after:
            rows = [e for e in rows if (e.create_time, e.id) > page.after]
        return rows[: page.size + 1]

    async def employee(self, rid, employee_id):
        found = self.data["employees"].get(employee_id)
        return found if found and found.restaurant_id == rid else None

    async def employee_of_user(self, rid, user_id):
        return await MemoryTransaction(self.data).employee_of_user(rid, user_id)

    async def active_members(self, rid):
        return [(e.user_id, e.access_role) for e in self.data["employees"].values()
                if e.restaurant_id == rid and e.active]


class FakeAccounts:
    """The auth service: users by email, memberships, and failures on demand."""

    def __init__(self) -> None:
        self.users: dict[str, UserAccount] = {}
        self.memberships: dict[tuple[str, str], str] = {}
        self.calls: list[tuple] = []
        self.fail: dict[str, ApiError] = {}
        # Runs once, after the next grant is applied (what happens meanwhile elsewhere).
        self.after_next_grant = None
        self.passwords: dict[str, str] = {}
        # The next claim is applied, but its answer never arrives (the deadline ran out).
        self.next_claim_times_out = False

    def add_user(self, email: str, full_name: str = "Ada Lovelace", *,
                 verified: bool = True) -> str:
        user = UserAccount(str(uuid.uuid4()), email, full_name, verified)
        self.users[user.id] = user
        return user.id

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            raise self.fail[name]

    async def claim_account(self, email, full_name, password, client_ip):
        self.calls.append(("claim", email))
        self._maybe_fail("claim")
        claimed = self._claim(email, full_name, password)
        if self.next_claim_times_out:
            self.next_claim_times_out = False
            raise AUTH_TIMEOUT
        return claimed

    def _claim(self, email, full_name, password) -> UserAccount:
        """Auth's ClaimAccount: created, taken over, or (verified, its own password) the same."""
        for user in list(self.users.values()):
            if user.email == email:
                if user.email_verified:
                    if self.passwords.get(user.id) != password:
                        raise AlreadyExists("EMAIL_TAKEN", "sign in and accept")
                    return user
                del self.users[user.id]  # taken over: same id, now verified
                claimed = UserAccount(user.id, email, full_name, True)
                self.users[user.id], self.passwords[user.id] = claimed, password
                return claimed
        user = UserAccount(str(uuid.uuid4()), email, full_name, True)
        self.users[user.id], self.passwords[user.id] = user, password
        return user

    async def find_user_by_email(self, email):
        return next((u for u in self.users.values() if u.email == email), None)

    async def get_user(self, user_id):
        self._maybe_fail("get_user")
        return self.users.get(user_id)

    async def grant_membership(self, user_id, restaurant_id, restaurant_name, role):
        self.calls.append(("grant", user_id, restaurant_id, role))
        self._maybe_fail("grant")
        previous = self.memberships.get((user_id, restaurant_id), "")
        if not previous and not self.users[user_id].email_verified:
            raise FailedPrecondition("EMAIL_NOT_VERIFIED", "verify first", action="VERIFY_EMAIL")
        self.memberships[(user_id, restaurant_id)] = role
        if (meanwhile := self.after_next_grant) is not None:
            self.after_next_grant = None
            await meanwhile()
        return MembershipChange(previous, 1 if previous and previous != role else 0)

    async def revoke_membership(self, user_id, restaurant_id):
        self.calls.append(("revoke", user_id, restaurant_id))
        self._maybe_fail("revoke")
        return 1 if self.memberships.pop((user_id, restaurant_id), None) else 0


AUTH_DOWN = Unavailable("AUTH_UNAVAILABLE", "auth is down", auth_outcome="not_applied")
AUTH_TIMEOUT = Unavailable("AUTH_UNAVAILABLE", "auth timed out", auth_outcome="unknown")


def caller(user_id: str, restaurant_id: str = "", role: str = "") -> Caller:
    return Caller(user_id=user_id, session_id="s", restaurant_id=restaurant_id, role=role,
                  token_id="t", expires_at=0, client_ip="198.51.100.7")


DRAFT = RestaurantDraft(name="Chez Ada", timezone="Europe/Paris", currency="eur",
                        address=Address(line1="1 Rue de Rivoli", city="Paris", country="fr"))


class RecordedUserEvents:
    def __init__(self) -> None:
        self.published: list = []

    async def publish(self, *events) -> None:
        self.published.extend(events)


@pytest.fixture
def user_events():
    return RecordedUserEvents()


class RecordedTemplates:
    """The invitation mail as data, with its token (what the invited person clicks)."""

    def invitation(self, *, to, restaurant_name, inviter_name, role, token, valid_for):
        return {"to": to, "restaurant_name": restaurant_name, "inviter_name": inviter_name,
                "role": role, "token": token}


SERVICE = "posmesh.staff.v1.StaffService"


@functools.lru_cache(maxsize=1)
def entry_points() -> dict[str, tuple[str, str]]:
    """RPC -> (servicer attribute, method) it delegates to, as servicer.py is written:
    `self.domain.create_restaurant(...)` in CreateRestaurant -> ("domain", "create_restaurant")."""
    tree = ast.parse((ROOT / "services" / "staff" / "servicer.py").read_text())
    (servicer,) = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    found = {}
    for method in servicer.body:
        if not isinstance(method, ast.AsyncFunctionDef):
            continue
        for call in ast.walk(method):
            func = getattr(call, "func", None)
            if (isinstance(call, ast.Call) and isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Attribute)
                    and isinstance(func.value.value, ast.Name) and func.value.value.id == "self"):
                found[method.name] = (func.value.attr, func.attr)
    return found


@functools.lru_cache(maxsize=1)
def declared_reasons() -> dict[str, frozenset[str]]:
    catalogue = Catalogue(contract.load(codegen.DESCRIPTOR_SET))
    return {rpc: frozenset(reason.name for reason in catalogue.rpc_reasons(SERVICE, rpc))
            for rpc in entry_points()}


def answering_only_declared_reasons(targets: dict[str, object]) -> None:
    """Wraps every entry point of `targets` ({"domain": ..., "invitations": ...}) so that an
    ApiError its RPC does not declare fails the test."""
    for rpc, (attribute, method) in entry_points().items():
        target = targets[attribute]
        original = getattr(target, method)

        @functools.wraps(original)
        async def checked(*args, _original=original, _rpc=rpc, **kwargs):
            try:
                return await _original(*args, **kwargs)
            except ApiError as error:
                assert error.reason in declared_reasons()[_rpc], (
                    f"{_rpc} answered {error.reason}, which is not in its method_errors "
                    f"(protos/posmesh/staff/v1/staff.proto)")
                raise

        setattr(target, method, checked)


def test_every_rpc_of_the_servicer_delegates_to_a_checked_entry_point():
    from posmesh.staff.v1 import staff_pb2

    rpcs = {method.name for method in staff_pb2.DESCRIPTOR.services_by_name["StaffService"].methods}
    assert set(entry_points()) == rpcs
    assert {attribute for attribute, _ in entry_points().values()} == {"domain", "invitations"}


@pytest.fixture
def world(user_events, monkeypatch):
    monkeypatch.setattr(invitations_module, "_now", _now)
    store, accounts = MemoryStore(), FakeAccounts()
    invitations = Invitations(store, accounts, RecordedTemplates(), user_events, Settings())
    domain = StaffDomain(store, accounts, user_events, invitations)
    answering_only_declared_reasons({"domain": domain, "invitations": invitations})
    return store, accounts, domain


async def open_restaurant(world):
    store, accounts, domain = world
    owner_id = accounts.add_user("owner@example.com", "Olive Owner")
    created = await domain.create_restaurant(caller(owner_id), DRAFT)
    rid = str(created.restaurant.id)
    return rid, caller(owner_id, rid, "owner")


async def hire(world, as_caller, email, role="staff", **fields):
    """Invites `email` and accepts the invitation with the mailed token (a new account)."""
    store, _, domain = world
    draft = EmployeeDraft(first_name="Sam", email=email, access_role=role, **fields)
    invited = await domain.create_employee(as_caller, draft)
    token = store.data["mails"][-1]["token"]
    accepted = await domain.invitations.accept(None, token=token, invitation_id="",
                                               password="correct horse battery", full_name="",
                                               client_ip="198.51.100.8")
    assert accepted.employee.id == invited.id
    return accepted.employee, caller(accepted.user_id, as_caller.restaurant_id, role)


# --- restaurants ------------------------------------------------------------------------------


async def test_creating_a_restaurant_makes_the_caller_its_owner_employee_and_member(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    restaurant = store.data["restaurants"][uuid.UUID(rid)]
    assert (restaurant.currency, restaurant.address.country) == ("EUR", "FR")
    (employee,) = store.data["employees"].values()
    assert (employee.access_role, employee.first_name, employee.last_name) == ("owner", "Olive", "Owner")
    assert accounts.memberships == {(owner.user_id, rid): "owner"}


async def test_creating_a_restaurant_tells_the_creators_screens(world, user_events):
    rid, owner = await open_restaurant(world)

    (event,) = user_events.published
    assert (event.user_id, event.type) == (owner.user_id, "restaurant.created")
    assert event.data == {"restaurant_id": rid, "restaurant_name": "Chez Ada", "role": "owner"}


async def test_a_restaurant_that_was_not_created_is_announced_to_nobody(world, user_events):
    store, accounts, domain = world
    owner_id = accounts.add_user("owner@example.com")
    store.fail_commit = True
    with pytest.raises(ConnectionResetError):
        await domain.create_restaurant(caller(owner_id), DRAFT)
    assert user_events.published == []


async def test_when_auth_cannot_grant_the_owner_membership_no_restaurant_is_created(world):
    store, accounts, domain = world
    owner_id = accounts.add_user("owner@example.com")
    accounts.fail["grant"] = AUTH_DOWN
    with pytest.raises(Unavailable) as caught:
        await domain.create_restaurant(caller(owner_id), DRAFT)
    assert caught.value.reason == "AUTH_UNAVAILABLE"
    assert store.data["restaurants"] == {} and store.data["employees"] == {}
    assert not any(call[0] == "revoke" for call in accounts.calls)  # nothing reached auth


async def test_when_the_commit_fails_after_the_grant_the_membership_is_revoked_again(world):
    store, accounts, domain = world
    owner_id = accounts.add_user("owner@example.com")
    store.fail_commit = True
    with pytest.raises(ConnectionResetError):
        await domain.create_restaurant(caller(owner_id), DRAFT)
    assert store.data["restaurants"] == {}
    assert accounts.memberships == {}
    assert accounts.calls[-1][0] == "revoke"


async def test_an_account_with_an_unverified_address_cannot_create_a_restaurant(world):
    store, accounts, domain = world
    owner_id = accounts.add_user("owner@example.com", verified=False)
    with pytest.raises(FailedPrecondition) as caught:
        await domain.create_restaurant(caller(owner_id), DRAFT)
    assert (caught.value.reason, caught.value.metadata) == ("EMAIL_NOT_VERIFIED",
                                                            {"action": "VERIFY_EMAIL"})
    assert store.data["restaurants"] == {} and accounts.memberships == {}


async def test_a_grant_that_timed_out_is_reverted_because_auth_may_have_applied_it(world):
    store, accounts, domain = world
    owner_id = accounts.add_user("owner@example.com")
    accounts.fail["grant"] = AUTH_TIMEOUT
    with pytest.raises(Unavailable):
        await domain.create_restaurant(caller(owner_id), DRAFT)
    assert accounts.calls[-1][0] == "revoke"


async def test_bad_restaurant_fields_are_refused_before_anything_is_written(world):
    store, accounts, domain = world
    owner_id = accounts.add_user("owner@example.com")
    for draft, reason in [
        (dataclasses.replace(DRAFT, currency="EURO"), "INVALID_CURRENCY"),
        (dataclasses.replace(DRAFT, timezone="Paris"), "INVALID_TIMEZONE"),
        (dataclasses.replace(DRAFT, name=" "), "FIELD_REQUIRED"),
        (dataclasses.replace(DRAFT, name="x" * 121), "FIELD_TOO_LONG"),
        (dataclasses.replace(DRAFT, address=Address(country="XX")), "INVALID_COUNTRY"),
        (dataclasses.replace(DRAFT, address=Address(line1="y" * 201)), "FIELD_TOO_LONG"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            await domain.create_restaurant(caller(owner_id), draft)
        assert caught.value.reason == reason
    assert store.data["restaurants"] == {} and accounts.calls == []


async def test_restaurants_of_others_are_not_found(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    stranger = caller(accounts.add_user("stranger@example.com"))
    with pytest.raises(NotFound) as caught:
        await domain.get_restaurant(stranger, rid)
    assert caught.value.reason == "RESTAURANT_NOT_FOUND"
    assert (await domain.list_restaurants(stranger, 0, "")).items == []
    assert (await domain.get_restaurant(owner, rid)).role == "owner"


async def test_a_stale_restaurant_update_is_a_version_conflict_and_changes_nothing(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    updated = await domain.update_restaurant(owner, rid, {"name": "Chez Ada II"}, 1)
    assert updated.restaurant.version == 2
    with pytest.raises(Aborted) as caught:
        await domain.update_restaurant(owner, rid, {"name": "Lost update"}, 1)
    assert caught.value.reason == "VERSION_CONFLICT"
    assert caught.value.metadata == {"expected_version": "1", "current_version": "2"}
    assert store.data["restaurants"][uuid.UUID(rid)].name == "Chez Ada II"


async def test_a_restaurant_update_without_a_version_is_refused(world):
    rid, owner = await open_restaurant(world)
    with pytest.raises(InvalidArgument) as caught:
        await world[2].update_restaurant(owner, rid, {"name": "x"}, 0)
    assert caught.value.reason == "VERSION_REQUIRED"


async def test_a_rename_is_passed_to_auth_with_the_owners_own_role(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    await domain.update_restaurant(owner, rid, {"name": "Renamed"}, 1)
    assert accounts.calls[-1] == ("grant", owner.user_id, rid, "owner")


async def test_a_rename_that_auth_cannot_take_changes_nothing(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    accounts.fail["grant"] = AUTH_DOWN
    with pytest.raises(Unavailable):
        await domain.update_restaurant(owner, rid, {"name": "Renamed"}, 1)
    assert store.data["restaurants"][uuid.UUID(rid)].name == "Chez Ada"


async def test_only_an_owner_on_record_may_update_the_restaurant(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    _, manager = await hire(world, owner, "m@example.com", role="manager")
    stale_owner_token = dataclasses.replace(manager, role="owner")
    with pytest.raises(PermissionDenied) as caught:
        await domain.update_restaurant(stale_owner_token, rid, {"timezone": "UTC"}, 1)
    assert caught.value.reason == "ROLE_FORBIDDEN"


# --- employees --------------------------------------------------------------------------------


async def test_creating_an_employee_links_the_account_and_grants_the_role(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    employee, _ = await hire(world, owner, "Sam@Example.com", role="manager", hourly_rate_minor=1500)
    assert employee.email == "sam@example.com" and employee.access_role == "manager"
    assert accounts.memberships[(str(employee.user_id), rid)] == "manager"


async def test_an_employee_defaults_to_the_staff_role(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    employee = await domain.create_employee(owner, EmployeeDraft(first_name="Sam", email="s@example.com"))
    assert employee.access_role == "staff"


async def test_the_same_user_cannot_be_hired_twice(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    first, _ = await hire(world, owner, "sam@example.com")
    with pytest.raises(AlreadyExists) as caught:
        await hire(world, owner, "SAM@example.com")
    assert caught.value.reason == "EMPLOYEE_EXISTS"
    assert caught.value.metadata["employee_id"] == str(first.id)


async def test_an_employee_is_invited_without_any_account_or_membership(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    calls = len(accounts.calls)
    employee = await domain.create_employee(owner, EmployeeDraft(first_name="Sam",
                                                                 email="sam@example.com"))
    assert (employee.state, employee.user_id, employee.active) == (INVITED, None, False)
    assert accounts.calls[calls:] == []  # nobody's account is touched or created
    (mail,) = store.data["mails"]
    assert mail["to"] == "sam@example.com" and mail["restaurant_name"] == "Chez Ada"


async def test_when_auth_cannot_grant_the_acceptance_fails_and_the_invitation_stays_open(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    accounts.fail["grant"] = AUTH_DOWN
    with pytest.raises(Unavailable):
        await hire(world, owner, "sam@example.com")
    invited = next(e for e in store.data["employees"].values() if e.email == "sam@example.com")
    assert invited.state == INVITED and invited.user_id is None
    (row,) = store.data["invitations"].values()
    assert row["accept_time"] is None and row["revoke_time"] is None


async def test_when_auths_new_password_hasher_is_full_the_acceptance_says_when_to_retry(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    await domain.create_employee(owner, EmployeeDraft(first_name="Sam", email="sam@example.com"))
    accounts.fail["claim"] = Unavailable("SERVER_BUSY", "too many new passwords; retry shortly",
                                         retryable="true", retry_after_seconds="1")
    calls = len(accounts.calls)
    with pytest.raises(Unavailable) as caught:
        await domain.invitations.accept(None, token=store.data["mails"][-1]["token"],
                                        invitation_id="", password="correct horse battery",
                                        full_name="", client_ip="198.51.100.8")
    assert (caught.value.reason, caught.value.metadata["retry_after_seconds"]) == ("SERVER_BUSY",
                                                                                   "1")
    (row,) = store.data["invitations"].values()
    assert row["accept_time"] is None
    assert accounts.calls[calls:] == [("claim", "sam@example.com")]  # no membership was granted


async def test_an_acceptance_whose_claim_timed_out_after_auth_made_the_account_can_be_retried(
        world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    invited = await domain.create_employee(owner, EmployeeDraft(first_name="Sam",
                                                                email="sam@example.com"))
    token = store.data["mails"][-1]["token"]
    accounts.next_claim_times_out = True
    with pytest.raises(Unavailable) as caught:
        await domain.invitations.accept(None, token=token, invitation_id="",
                                        password="correct horse battery", full_name="",
                                        client_ip="198.51.100.8")
    assert caught.value.metadata["auth_outcome"] == "unknown"
    (made,) = [user for user in accounts.users.values() if user.email == "sam@example.com"]

    with pytest.raises(AlreadyExists) as other_password:  # someone else's password: not theirs
        await domain.invitations.accept(None, token=token, invitation_id="",
                                        password="another long password", full_name="",
                                        client_ip="198.51.100.8")
    assert other_password.value.reason == "EMAIL_TAKEN"
    accepted = await domain.invitations.accept(None, token=token, invitation_id="",
                                               password="correct horse battery", full_name="",
                                               client_ip="198.51.100.8")
    assert (accepted.user_id, accepted.employee.id, accepted.employee.state) == (
        made.id, invited.id, ACTIVE)
    assert accounts.memberships[(made.id, rid)] == "staff"


async def test_an_account_that_already_works_here_under_another_address_cannot_accept(world):
    """Its owner changed the account's address since they were hired; the new address was invited
    too. One person, one record: the acceptance is refused and the membership stays as it was."""
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    staff, staff_caller = await hire(world, owner, "old@example.com")
    user_id = str(staff.user_id)
    accounts.users[user_id] = dataclasses.replace(accounts.users[user_id], email="new@example.com")
    invited = await domain.create_employee(owner, EmployeeDraft(first_name="Sam",
                                                                email="new@example.com",
                                                                access_role="manager"))
    with pytest.raises(AlreadyExists) as caught:
        await domain.invitations.accept(caller(user_id), token=store.data["mails"][-1]["token"],
                                        invitation_id="", password="", full_name="",
                                        client_ip="198.51.100.8")
    assert caught.value.reason == "EMPLOYEE_EXISTS"
    assert accounts.memberships[(user_id, rid)] == "staff"  # the manager grant was put back
    assert store.data["employees"][invited.id].state == INVITED


async def test_a_role_changed_while_the_invitation_is_accepted_is_the_role_granted(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    invited = await domain.create_employee(owner, EmployeeDraft(first_name="Sam",
                                                                email="sam@example.com"))

    async def promote() -> None:  # an owner edits the record between the grant and the commit
        await domain.update_employee(owner, str(invited.id), {"access_role": "manager"},
                                     invited.version)

    accounts.after_next_grant = promote
    accepted = await domain.invitations.accept(None, token=store.data["mails"][-1]["token"],
                                               invitation_id="", password="correct horse battery",
                                               full_name="", client_ip="198.51.100.8")
    assert accepted.employee.access_role == accepted.invitation.access_role == "manager"
    assert accounts.memberships[(accepted.user_id, rid)] == "manager"
    assert [call[3] for call in accounts.calls if call[0] == "grant"][-2:] == ["staff", "manager"]


async def test_when_an_acceptance_that_granted_a_changed_role_fails_no_membership_is_left(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    invited = await domain.create_employee(owner, EmployeeDraft(first_name="Sam",
                                                                email="sam@example.com"))

    async def promote_then_lose_the_commit() -> None:
        await domain.update_employee(owner, str(invited.id), {"access_role": "manager"},
                                     invited.version)
        store.fail_commit = True

    accounts.after_next_grant = promote_then_lose_the_commit
    with pytest.raises(ConnectionResetError):
        await domain.invitations.accept(None, token=store.data["mails"][-1]["token"],
                                        invitation_id="", password="correct horse battery",
                                        full_name="", client_ip="198.51.100.8")
    (user_id,) = [user.id for user in accounts.users.values() if user.email == "sam@example.com"]
    assert (user_id, rid) not in accounts.memberships  # not the first grant's role either
    assert store.data["employees"][invited.id].state == INVITED


async def test_managers_cannot_create_owners_or_managers_and_the_denial_is_a_security_event(world, monkeypatch):
    store, accounts, domain = world
    recorded = []
    monkeypatch.setattr(security_events, "record", lambda type, **kw: recorded.append((type, kw)))
    rid, owner = await open_restaurant(world)
    _, manager = await hire(world, owner, "manager@example.com", role="manager")
    for role in ("owner", "manager"):
        with pytest.raises(PermissionDenied) as caught:
            await hire(world, manager, f"{role}2@example.com", role=role)
        assert caught.value.reason == "ROLE_FORBIDDEN"
        assert "staff.CreateEmployee" in caught.value.message and "manager" in caught.value.message
    denied = [fields for event, fields in recorded if event == "ACCESS_DENIED"]
    assert len(denied) == 2
    assert denied[0]["user_id"] == manager.user_id and denied[0]["permission"] == "staff.CreateEmployee"
    staff, _ = await hire(world, manager, "staff@example.com")
    assert staff.access_role == "staff"


async def test_managers_cannot_promote_change_or_deactivate_managers_and_owners(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    manager_record, manager = await hire(world, owner, "manager@example.com", role="manager")
    other_manager, _ = await hire(world, owner, "manager2@example.com", role="manager")
    staff, _ = await hire(world, owner, "staff@example.com")
    owner_record = await domain.get_employee(owner, "me")
    attempts = [
        lambda: domain.update_employee(manager, str(staff.id), {"access_role": "manager"}, staff.version),
        lambda: domain.update_employee(manager, str(staff.id), {"access_role": "owner"}, staff.version),
        lambda: domain.update_employee(manager, str(other_manager.id), {"phone": "+44 1234 567890"}, 1),
        lambda: domain.update_employee(manager, "me", {"hourly_rate_minor": 99999}, 1),
        lambda: domain.update_employee(manager, str(owner_record.id), {"access_role": "staff"}, 1),
        lambda: domain.deactivate_employee(manager, str(owner_record.id), 0),
        lambda: domain.deactivate_employee(manager, str(other_manager.id), 0),
    ]
    for attempt in attempts:
        with pytest.raises(PermissionDenied) as caught:
            await attempt()
        assert caught.value.reason == "ROLE_FORBIDDEN"
    roles = sorted(e.access_role for e in store.data["employees"].values() if e.active)
    assert roles == ["manager", "manager", "owner", "staff"]
    assert manager_record.hourly_rate_minor is None


async def test_a_role_change_applies_through_auth_at_once(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    staff, _ = await hire(world, owner, "staff@example.com")
    promoted = await domain.update_employee(owner, str(staff.id), {"access_role": "manager"}, staff.version)
    assert promoted.access_role == "manager" and promoted.version == staff.version + 1
    assert accounts.memberships[(str(staff.user_id), rid)] == "manager"
    assert store.data["changes"][-1][2] == "role_changed"


async def test_when_the_commit_fails_after_a_role_change_the_old_role_is_granted_back(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    staff, _ = await hire(world, owner, "staff@example.com")
    store.fail_commit = True
    with pytest.raises(ConnectionResetError):
        await domain.update_employee(owner, str(staff.id), {"access_role": "manager"}, staff.version)
    assert accounts.memberships[(str(staff.user_id), rid)] == "staff"
    assert store.data["employees"][staff.id].access_role == "staff"


async def test_a_stale_employee_update_is_a_version_conflict_and_changes_nothing(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    staff, _ = await hire(world, owner, "staff@example.com")
    await domain.update_employee(owner, str(staff.id), {"job_title": "server"}, staff.version)
    calls = len(accounts.calls)
    with pytest.raises(Aborted) as caught:
        await domain.update_employee(owner, str(staff.id), {"access_role": "manager", "job_title": "cook"},
                                     staff.version)
    assert caught.value.reason == "VERSION_CONFLICT"
    current = store.data["employees"][staff.id]
    assert (current.access_role, current.job_title, current.version) == (
        "staff", "server", staff.version + 1)
    assert len(accounts.calls) == calls  # auth was not asked for anything


async def test_patch_changes_only_named_fields_and_clears_optional_ones_with_none(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    staff, _ = await hire(world, owner, "staff@example.com", phone="+44 1234 567890", job_title="cook")
    updated = await domain.update_employee(owner, str(staff.id), {"phone": None}, staff.version)
    assert updated.phone is None and updated.job_title == "cook" and updated.first_name == "Sam"
    with pytest.raises(InvalidArgument) as caught:
        await domain.update_employee(owner, str(staff.id), {"first_name": None}, updated.version)
    assert caught.value.reason == "FIELD_REQUIRED"


async def test_an_update_that_changes_nothing_keeps_the_version(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    staff, _ = await hire(world, owner, "staff@example.com")
    same = await domain.update_employee(owner, str(staff.id), {"first_name": "Sam"}, staff.version)
    assert same.version == staff.version


async def test_the_email_cannot_change(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    staff, _ = await hire(world, owner, "staff@example.com")
    with pytest.raises(InvalidArgument) as caught:
        await domain.update_employee(owner, str(staff.id), {"email": "other@example.com"}, staff.version)
    assert caught.value.reason == "EMAIL_IMMUTABLE"


async def test_the_last_owner_can_neither_leave_nor_be_demoted(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    me = await domain.get_employee(owner, "me")
    with pytest.raises(FailedPrecondition) as caught:
        await domain.deactivate_employee(owner, "me", 0)
    assert caught.value.reason == "LAST_OWNER"
    with pytest.raises(FailedPrecondition) as caught:
        await domain.update_employee(owner, "me", {"access_role": "manager"}, me.version)
    assert caught.value.reason == "LAST_OWNER"
    second, _ = await hire(world, owner, "second-owner@example.com", role="owner")
    demoted = await domain.update_employee(owner, "me", {"access_role": "manager"}, me.version)
    assert demoted.access_role == "manager"


async def test_deactivation_revokes_the_membership_keeps_the_record_and_is_idempotent(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    staff, _ = await hire(world, owner, "staff@example.com")
    gone = await domain.deactivate_employee(owner, str(staff.id), staff.version)
    assert not gone.active and gone.deactivate_time is not None
    assert (str(staff.user_id), rid) not in accounts.memberships
    again = await domain.deactivate_employee(owner, str(staff.id), 0)
    assert again.version == gone.version
    listed = await domain.list_employees(owner, 0, "", "", "inactive")
    assert [e.id for e in listed.items] == [staff.id]
    with pytest.raises(FailedPrecondition) as caught:
        await domain.update_employee(owner, str(staff.id), {"job_title": "cook"}, gone.version)
    assert caught.value.reason == "EMPLOYEE_INACTIVE"


async def test_reactivation_grants_the_previous_role_again(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    staff, _ = await hire(world, owner, "staff@example.com")
    gone = await domain.deactivate_employee(owner, str(staff.id), 0)
    back = await domain.reactivate_employee(owner, str(staff.id), gone.version)
    assert back.active and back.deactivate_time is None
    assert accounts.memberships[(str(staff.user_id), rid)] == "staff"


async def test_rehiring_a_deactivated_employee_points_to_reactivation(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    staff, _ = await hire(world, owner, "staff@example.com")
    await domain.deactivate_employee(owner, str(staff.id), 0)
    with pytest.raises(AlreadyExists) as caught:
        await hire(world, owner, "staff@example.com")
    assert ":undelete" in caught.value.message and caught.value.metadata["active"] == "false"


async def test_inviting_an_address_again_points_to_resending_its_invitation_not_to_reactivation(
        world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    invited = await domain.create_employee(owner, EmployeeDraft(first_name="Sam",
                                                                email="sam@example.com"))
    (invitation_id,) = store.data["invitations"]
    with pytest.raises(AlreadyExists) as caught:
        await domain.create_employee(owner, EmployeeDraft(first_name="Sam",
                                                          email="sam@example.com"))
    assert caught.value.reason == "EMPLOYEE_EXISTS"
    assert f"/api/v1/invitations/{invitation_id}:resend" in caught.value.message
    assert "deactivated" not in caught.value.message and ":undelete" not in caught.value.message
    assert caught.value.metadata == {"employee_id": str(invited.id), "active": "false",
                                     "state": "invited", "invitation_id": str(invitation_id)}
    assert len(store.data["mails"]) == 1  # nothing was sent again


async def test_an_active_employee_hired_again_gets_no_hint_to_reactivate_or_resend(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    staff, _ = await hire(world, owner, "staff@example.com")
    with pytest.raises(AlreadyExists) as caught:
        await domain.create_employee(owner, EmployeeDraft(first_name="Sam",
                                                          email="staff@example.com"))
    assert caught.value.message == (f"this user is already employee {staff.id} of this "
                                    "restaurant")
    assert caught.value.metadata["state"] == "active"


async def test_employees_of_another_restaurant_are_not_found(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    staff, _ = await hire(world, owner, "staff@example.com")
    other_owner_id = accounts.add_user("other@example.com")
    other = await domain.create_restaurant(caller(other_owner_id), DRAFT)
    other_owner = caller(other_owner_id, str(other.restaurant.id), "owner")
    for attempt in (
        lambda: domain.get_employee(other_owner, str(staff.id)),
        lambda: domain.update_employee(other_owner, str(staff.id), {"first_name": "X"}, 1),
        lambda: domain.deactivate_employee(other_owner, str(staff.id), 0),
        lambda: domain.reactivate_employee(other_owner, str(staff.id), 0),
    ):
        with pytest.raises(NotFound) as caught:
            await attempt()
        assert caught.value.reason == "EMPLOYEE_NOT_FOUND"
    assert store.data["employees"][staff.id].first_name == "Sam"


async def test_staff_see_the_directory_and_their_own_full_profile(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    _, staff = await hire(world, owner, "staff@example.com", phone="+44 1234 567890", hourly_rate_minor=1200)
    page = await domain.list_employees(staff, 0, "", "", "")
    others = [e for e in page.items if str(e.user_id) != staff.user_id]
    assert others and all(e.email is None and e.phone is None and e.hourly_rate_minor is None for e in others)
    me = await domain.get_employee(staff, "me")
    assert (me.email, me.phone, me.hourly_rate_minor) == ("staff@example.com", "+44 1234 567890", 1200)


async def test_a_token_role_older_than_the_record_does_not_grant_more(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    record, manager = await hire(world, owner, "manager@example.com", role="manager")
    await domain.update_employee(owner, str(record.id), {"access_role": "staff"}, record.version)
    # `manager` still carries the old role in its token; the recorded role decides writes.
    with pytest.raises(PermissionDenied):
        await hire(world, manager, "new@example.com")


async def test_a_deactivated_employee_with_a_live_token_cannot_write(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    record, manager = await hire(world, owner, "manager@example.com", role="manager")
    await domain.deactivate_employee(owner, str(record.id), 0)
    with pytest.raises(PermissionDenied) as caught:
        await hire(world, manager, "new@example.com")
    assert caught.value.reason == "NOT_A_MEMBER"


async def test_pages_follow_the_keyset_without_duplicates_or_gaps(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    for n in range(7):
        await hire(world, owner, f"p{n}@example.com")
    seen, token = [], ""
    while True:
        page = await domain.list_employees(owner, 3, token, "staff", "all")
        seen.extend(e.id for e in page.items)
        token = page.next_page_token
        if not token:
            break
        await hire(world, owner, f"late{len(seen)}@example.com")  # inserts while paging
    staff_ids = [e.id for e in sorted(store.data["employees"].values(), key=lambda e: e.create_time)
                 if e.access_role == "staff"]
    assert len(seen) == len(set(seen))
    assert seen == staff_ids[: len(seen)] and len(seen) >= 7
    with pytest.raises(InvalidArgument):
        await domain.list_employees(owner, 3, page.next_page_token or "x", "", "")


async def test_unknown_filters_are_refused(world):
    rid, owner = await open_restaurant(world)
    with pytest.raises(InvalidArgument) as caught:
        await world[2].list_employees(owner, 0, "", "", "fired")
    assert caught.value.reason == "INVALID_FILTER"
    with pytest.raises(InvalidArgument) as caught:
        await world[2].list_employees(owner, 0, "", "admin", "")
    assert caught.value.reason == "INVALID_ROLE"


# --- invitation mails: the send limits ---------------------------------------------------------

LIMIT = Settings().invitation_sends_per_day


def open_invitation_id(store, employee_id) -> str:
    (found,) = [row["id"] for row in store.data["invitations"].values()
                if row["employee_id"] == employee_id and not row["accept_time"]
                and not row["revoke_time"]]
    return str(found)


async def test_resends_stay_limited_per_day_after_the_invitations_first_day(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    invited = await domain.create_employee(owner, EmployeeDraft(first_name="Sam",
                                                                email="sam@example.com"))
    invitation_id = open_invitation_id(store, invited.id)
    advance(timedelta(days=2))  # the first mail is out of the window; the link still works
    for _ in range(LIMIT):
        await domain.invitations.resend(owner, invitation_id)
        advance(timedelta(minutes=2))
    mails = len(store.data["mails"])

    with pytest.raises(ResourceExhausted) as caught:
        await domain.invitations.resend(owner, invitation_id)
    assert caught.value.reason == "TOO_MANY_EMAILS"
    # The first of those resends leaves the window 24 h after it was sent, 20 minutes ago.
    retry_after = int(caught.value.metadata["retry_after_seconds"])
    assert 24 * 3600 - 20 * 60 <= retry_after <= 24 * 3600 - 20 * 60 + 1
    assert len(store.data["mails"]) == mails
    advance(timedelta(seconds=retry_after))
    assert (await domain.invitations.resend(owner, invitation_id)).send_count == LIMIT + 2


async def test_deactivating_and_undeleting_an_invited_employee_keeps_counting_their_mails(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    employee = await domain.create_employee(owner, EmployeeDraft(first_name="Sam",
                                                                 email="sam@example.com"))
    for _ in range(LIMIT - 1):  # each undelete mails a new invitation (send_count 1 again)
        advance(timedelta(minutes=2))
        gone = await domain.deactivate_employee(owner, str(employee.id), 0)
        employee = await domain.reactivate_employee(owner, str(employee.id), gone.version)
        assert employee.state == INVITED
    assert len(store.data["mails"]) == LIMIT
    advance(timedelta(minutes=2))
    gone = await domain.deactivate_employee(owner, str(employee.id), 0)

    with pytest.raises(ResourceExhausted) as caught:
        await domain.reactivate_employee(owner, str(employee.id), gone.version)
    assert caught.value.reason == "TOO_MANY_EMAILS"
    assert int(caught.value.metadata["retry_after_seconds"]) > 23 * 3600
    assert store.data["employees"][employee.id].state == DEACTIVATED  # nothing changed
    assert len(store.data["mails"]) == LIMIT


async def test_an_undelete_right_after_an_invitation_waits_for_the_one_minute_gap(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    invited = await domain.create_employee(owner, EmployeeDraft(first_name="Sam",
                                                                email="sam@example.com"))
    advance(timedelta(seconds=15))
    gone = await domain.deactivate_employee(owner, str(invited.id), 0)
    with pytest.raises(ResourceExhausted) as caught:
        await domain.reactivate_employee(owner, str(invited.id), gone.version)
    assert caught.value.reason == "TOO_MANY_EMAILS"
    assert caught.value.metadata["retry_after_seconds"] == "45"
    advance(timedelta(seconds=45))
    assert (await domain.reactivate_employee(owner, str(invited.id), gone.version)).state == INVITED


async def test_the_limits_count_per_address_not_per_restaurant(world):
    store, accounts, domain = world
    rid, owner = await open_restaurant(world)
    for index in range(LIMIT + 1):  # many hires at once are fine: one mail each
        await domain.create_employee(owner, EmployeeDraft(first_name="Sam",
                                                          email=f"sam{index}@example.com"))
    assert len(store.data["mails"]) == LIMIT + 1


def test_send_refusal_counts_a_rolling_day_of_mails_to_the_address():
    now = datetime(2025, 6, 1, 12, tzinfo=timezone.utc)
    hours_ago = [now - timedelta(hours=hours) for hours in (30, 23, 5, 4, 3)]

    assert send_refusal(hours_ago, now, per_day=5) is None  # the 30-hour-old one is out
    refused = send_refusal(hours_ago, now, per_day=4)
    assert refused.reason == "TOO_MANY_EMAILS"
    assert refused.metadata["retry_after_seconds"] == str(3600)  # the 23-hour-old one leaves
    assert send_refusal(hours_ago, now, per_day=2).metadata["retry_after_seconds"] == str(
        20 * 3600)  # three must leave: the 4-hour-old one is the third
    just_sent = send_refusal([now - timedelta(seconds=59.5)], now, per_day=5)
    assert just_sent.metadata["retry_after_seconds"] == "1"
    assert send_refusal([], now, per_day=1) is None
