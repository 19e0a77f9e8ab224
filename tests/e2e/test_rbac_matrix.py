"""Every staff RPC × every kind of caller × their own or another restaurant, over HTTPS through
Envoy: the exact HTTP status and ErrorInfo reason, and that no answer about another restaurant
carries any of its data.

The expectations are generated from the permission table (who may call an RPC at all) plus the
staff service's data rules (membership for GetRestaurant, NOT_FOUND for another restaurant's
employee ids), and the interceptor's order (authentication, then tenant, then role). Sessions are
built once for the module; each case is one parametrized test.
"""

from __future__ import annotations

import itertools
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from posmesh.common import permissions
from posmesh.common.permissions import Access
from posmesh.staff.v1 import staff_pb2
from tests.support.accounts import staff_db
from tests.support.restaurants import (
    Session,
    add_employee,
    create_restaurant_as_owner,
    error_reason,
    ok,
    register,
    unique_email,
)

STAFF_SERVICE = staff_pb2.DESCRIPTOR.services_by_name["StaffService"]
RPCS = [method.name for method in STAFF_SERVICE.methods]
CALLERS = ("owner", "manager", "staff", "no_context", "no_token")
TARGETS = ("own", "other")


@dataclass
class World:
    a: dict[str, Session]  # owner, manager, staff of restaurant A (the callers' own)
    a_id: str
    b_owner: Session  # restaurant B: "another restaurant"
    b_id: str
    b_employee_id: str
    b_invitation_id: str  # a pending invitation of B
    b_secrets: tuple[str, ...]  # strings only B's data contains
    loner: Session  # a signed-in user with no restaurant context (and no memberships)


@pytest.fixture(scope="module")
async def world(edge: httpx.AsyncClient) -> World:
    owner, restaurant_a = await create_restaurant_as_owner(edge)
    a = {"owner": owner, "manager": await add_employee(edge, owner, "manager"),
         "staff": await add_employee(edge, owner, "staff")}
    b_name = f"Other Place {secrets.token_hex(4)}"
    b_owner, restaurant_b = await create_restaurant_as_owner(edge, name=b_name, currency="JPY",
                                                             timezone="Asia/Tokyo")
    b_first_name = f"Hidden{secrets.token_hex(4)}"
    b_staff = await add_employee(edge, b_owner, "staff", first_name=b_first_name,
                                 phone="+81 3 1234 5678", hourly_rate_minor=98765)
    b_invited_email = unique_email("b-invited")
    ok(await edge.post("/api/v1/employees", headers=b_owner.headers, json={
        "first_name": b_first_name, "email": b_invited_email}))
    (b_invitation,) = ok(await edge.get("/api/v1/invitations", headers=b_owner.headers))[
        "invitations"]
    return World(a=a, a_id=restaurant_a["id"], b_owner=b_owner, b_id=restaurant_b["id"],
                 b_employee_id=b_staff.employee_id, b_invitation_id=b_invitation["id"],
                 b_secrets=(b_name, b_first_name, b_staff.email, b_owner.email, "Asia/Tokyo",
                            b_invited_email),
                 loner=await register(edge, "loner"))


# --- expectations ----------------------------------------------------------------------------

OK = (200, "")


def expected(rpc: str, caller: str, target: str) -> tuple[int, str]:
    rule = permissions.rule_for(f"/{STAFF_SERVICE.full_name}/{rpc}")
    assert rule is not None
    if rule.access is Access.PUBLIC:
        return 400, "INVITATION_INVALID"  # AcceptInvitation with a token nobody issued
    if caller == "no_token":
        return 401, "TOKEN_INVALID"
    names_other_restaurant = target == "other" and rpc not in _ID_BASED_OTHER
    if caller == "no_context":
        # A token without a restaurant: any restaurant-scoped call, or any call naming a
        # restaurant that the tenant check looks at, lacks context.
        if rule.access is Access.RESTAURANT or (names_other_restaurant and rule.tenant_checked):
            return 403, "NO_RESTAURANT_CONTEXT"
        if rpc == "GetRestaurant":
            return 404, "RESTAURANT_NOT_FOUND"  # the loner belongs to no restaurant
        return OK
    if names_other_restaurant and rule.tenant_checked:
        return 403, "TENANT_MISMATCH"
    if rule.access is Access.RESTAURANT and caller not in rule.roles:
        return 403, "ROLE_FORBIDDEN"
    if target == "other":
        return {"GetRestaurant": (404, "RESTAURANT_NOT_FOUND"),
                "ResendInvitation": (404, "INVITATION_NOT_FOUND"),
                "RevokeInvitation": (404, "INVITATION_NOT_FOUND")}.get(
            rpc, (404, "EMPLOYEE_NOT_FOUND"))
    return OK


# RPCs whose "other restaurant" case uses an id of another restaurant's record (in the path),
# rather than naming the other restaurant in a header, the path's restaurant_id or the body.
_ID_BASED_OTHER = {"GetRestaurant", "GetEmployee", "UpdateEmployee", "DeleteEmployee",
                   "UndeleteEmployee", "ResendInvitation", "RevokeInvitation"}


# --- requests --------------------------------------------------------------------------------


async def fresh_staff_employee(edge, stack, world: World, *, deactivated: bool = False) -> str:
    """An invited staff-role employee of A; deactivated, with its invitation mail aged past the
    one-minute gap (undeleting it mails a new one)."""
    owner = world.a["owner"]
    email = unique_email("target")
    employee = ok(await edge.post("/api/v1/employees", headers=owner.headers, json={
        "first_name": "Target", "email": email}))
    if deactivated:
        ok(await edge.delete(f"/api/v1/employees/{employee['id']}", headers=owner.headers))
        async with staff_db(stack) as connection:
            await connection.execute("UPDATE invitation_sends SET send_time = now() - "
                                     "interval '2 minutes' WHERE email = $1", email)
    return employee["id"]


async def fresh_invitation(edge, stack, world: World) -> str:
    """A pending invitation of A, its last mail aged past the resend gap."""
    owner = world.a["owner"]
    email = unique_email("invitee")
    ok(await edge.post("/api/v1/employees", headers=owner.headers, json={
        "first_name": "Invitee", "email": email}))
    invitation = next(i for i in ok(await edge.get("/api/v1/invitations", headers=owner.headers,
                                                   params={"page_size": 200}))["invitations"]
                      if i["email"] == email)
    async with staff_db(stack) as connection:
        await connection.execute("UPDATE invitations SET send_time = now() - interval '2 minutes' "
                                 "WHERE id = $1", uuid.UUID(invitation["id"]))
        await connection.execute("UPDATE invitation_sends SET send_time = now() - "
                                 "interval '2 minutes' WHERE invitation_id = $1",
                                 uuid.UUID(invitation["id"]))
    return invitation["id"]


async def build_request(edge, stack, world: World, rpc: str, target: str) -> dict[str, Any]:
    """method, url, json, extra headers for one case."""
    other = target == "other"
    other_header = {"x-restaurant-id": world.b_id} if other else {}
    if rpc == "ListInvitations":
        return dict(method="GET", url="/api/v1/invitations", headers=other_header)
    if rpc in ("ResendInvitation", "RevokeInvitation"):
        invitation_id = world.b_invitation_id if other else await fresh_invitation(edge, stack,
                                                                                   world)
        verb = "resend" if rpc == "ResendInvitation" else "revoke"
        return dict(method="POST", url=f"/api/v1/invitations/{invitation_id}:{verb}", json={})
    if rpc == "ListMyInvitations":
        return dict(method="GET", url="/api/v1/invitations:mine", headers=other_header)
    if rpc == "AcceptInvitation":
        return dict(method="POST", url="/api/v1/invitations:accept", headers=other_header,
                    json={"token": "pmiv_" + "A" * 43, "password": "nobody's password"})
    if rpc == "CreateRestaurant":
        return dict(method="POST", url="/api/v1/restaurants", headers=other_header, json={
            "name": f"Matrix {secrets.token_hex(3)}", "timezone": "Europe/London", "currency": "GBP"})
    if rpc == "ListRestaurants":
        return dict(method="GET", url="/api/v1/restaurants", headers=other_header)
    if rpc == "GetRestaurant":
        return dict(method="GET", url=f"/api/v1/restaurants/{world.b_id if other else world.a_id}")
    if rpc == "UpdateRestaurant":
        restaurant_id = world.b_id if other else world.a_id
        version = 1
        if not other:
            version = ok(await edge.get(f"/api/v1/restaurants/{world.a_id}",
                                        headers=world.a["owner"].headers))["version"]
        return dict(method="PATCH", url=f"/api/v1/restaurants/{restaurant_id}",
                    json={"name": f"Renamed {secrets.token_hex(3)}", "version": version})
    if rpc == "ListEmployees":
        return dict(method="GET", url="/api/v1/employees", headers=other_header,
                    params={"state": "all"})
    if rpc == "CreateEmployee":
        body = {"first_name": "Hire", "email": unique_email("hire")}
        if other:
            body["restaurant_id"] = world.b_id
        return dict(method="POST", url="/api/v1/employees", json=body)
    if rpc == "GetEmployee":
        employee_id = world.b_employee_id if other else world.a["staff"].employee_id
        return dict(method="GET", url=f"/api/v1/employees/{employee_id}")
    employee_id = world.b_employee_id if other else await fresh_staff_employee(
        edge, stack, world, deactivated=rpc == "UndeleteEmployee")
    if rpc == "UpdateEmployee":
        return dict(method="PATCH", url=f"/api/v1/employees/{employee_id}",
                    json={"job_title": "server", "version": 1})
    if rpc == "DeleteEmployee":
        return dict(method="DELETE", url=f"/api/v1/employees/{employee_id}")
    if rpc == "UndeleteEmployee":
        return dict(method="POST", url=f"/api/v1/employees/{employee_id}:undelete", json={})
    raise AssertionError(f"no request for {rpc}: add one when adding an RPC")


def caller_headers(world: World, caller: str) -> dict[str, str]:
    if caller == "no_token":
        return {}
    if caller == "no_context":
        return world.loner.headers
    return world.a[caller].headers


# --- the matrix ------------------------------------------------------------------------------


def test_the_matrix_covers_every_staff_rpc():
    assert set(RPCS) == {"CreateRestaurant", "ListRestaurants", "GetRestaurant", "UpdateRestaurant",
                         "ListEmployees", "CreateEmployee", "GetEmployee", "UpdateEmployee",
                         "DeleteEmployee", "UndeleteEmployee", "ListInvitations",
                         "ResendInvitation", "RevokeInvitation", "ListMyInvitations",
                         "AcceptInvitation"}


@pytest.mark.parametrize("rpc, caller, target", list(itertools.product(RPCS, CALLERS, TARGETS)))
async def test_access(edge: httpx.AsyncClient, stack, world: World, rpc: str, caller: str,
                      target: str):
    request = await build_request(edge, stack, world, rpc, target)
    request["headers"] = {**request.get("headers", {}), **caller_headers(world, caller)}
    response = await edge.request(**request)

    status, reason = expected(rpc, caller, target)
    assert (response.status_code, error_reason(response)) == (status, reason), response.text
    for secret in world.b_secrets:
        assert secret not in response.text, f"{rpc} as {caller} leaked another restaurant's data"
    if status == 200 and caller in world.a:
        body = response.json()
        employees = body.get("employees", [body] if "user_id" in body else [])
        assert all(e["restaurant_id"] == world.a_id for e in employees)
        if rpc == "ListRestaurants":
            assert world.b_id not in {r["id"] for r in body["restaurants"]}


async def test_nothing_in_the_other_restaurant_changed(edge, world: World):
    restaurant = ok(await edge.get(f"/api/v1/restaurants/{world.b_id}", headers=world.b_owner.headers))
    assert restaurant["version"] == 1 and restaurant["name"] == world.b_secrets[0]
    employees = ok(await edge.get("/api/v1/employees", headers=world.b_owner.headers,
                                  params={"state": "all"}))["employees"]
    assert [(e["id"], e["version"], e["active"]) for e in employees if e["id"] == world.b_employee_id] == [
        (world.b_employee_id, 2, True)]  # invited (1), accepted (2), nothing since
    # B's owner, B's one employee and the one B invited: nobody was hired into B
    assert len(employees) == 3
    (invitation,) = ok(await edge.get("/api/v1/invitations", headers=world.b_owner.headers))[
        "invitations"]
    assert (invitation["id"], invitation["state"], invitation["send_count"]) == (
        world.b_invitation_id, "PENDING", 1)
