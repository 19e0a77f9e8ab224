"""Employees over HTTPS through Envoy, with the real auth service, PostgreSQL and Redis: hiring,
PATCH, optimistic concurrency, no escalation by managers, role changes and deactivation that take
effect on live sessions at once, the last owner, tenant context, pagination, bad input."""

from __future__ import annotations

import asyncio
import json
import secrets

import httpx
import pytest

from tests.support.mail import default_mailbox, token_from
from tests.support.restaurants import (
    Session,
    accept_invitation,
    add_employee,
    create_restaurant_as_owner,
    error_metadata,
    error_reason,
    login,
    ok,
    register,
    unique_email,
)


# An employee who accepted their invitation: the record was created (1), then activated (2).
ACCEPTED = 2


@pytest.fixture(scope="module")
async def team(edge: httpx.AsyncClient) -> dict[str, Session]:
    """One restaurant shared by the read-mostly tests of this module."""
    owner, _ = await create_restaurant_as_owner(edge)
    manager = await add_employee(edge, owner, "manager", phone="+44 20 7946 0001", hourly_rate_minor=2100)
    staff = await add_employee(edge, owner, "staff", job_title="Cook", phone="+44 20 7946 0002",
                               hourly_rate_minor=1250, start_date="2024-04-01")
    return {"owner": owner, "manager": manager, "staff": staff}


def employee_path(employee_id: str) -> str:
    return f"/api/v1/employees/{employee_id}"


async def get_employee(edge, session: Session, employee_id: str) -> dict:
    return ok(await edge.get(employee_path(employee_id), headers=session.headers))


# --- hiring -----------------------------------------------------------------------------------


async def test_an_owner_invites_an_employee_with_every_field_who_works_once_they_accept(
        edge, team):
    email = unique_email("grace")
    created = ok(await edge.post("/api/v1/employees", headers=team["owner"].headers, json={
        "first_name": " Grace ", "last_name": "Hopper", "email": email.upper(),
        "phone": "+1 (555) 010-9999", "access_role": "staff", "job_title": "BARTENDER",
        "hourly_rate_minor": "1575", "start_date": "2025-02-03"}))
    assert {key: created[key] for key in ("first_name", "last_name", "email", "phone", "access_role",
                                          "job_title", "hourly_rate_minor", "start_date", "active",
                                          "state", "user_id", "version")} == {
        "first_name": "Grace", "last_name": "Hopper", "email": email, "phone": "+1 (555) 010-9999",
        "access_role": "staff", "job_title": "bartender", "hourly_rate_minor": "1575",
        "start_date": "2025-02-03", "active": False, "state": "INVITED", "user_id": "",
        "version": 1}
    assert created["restaurant_id"] == team["owner"].restaurant_id

    accepted = await accept_invitation(edge, email, password="graces own password")
    assert accepted["employee"]["state"] == "ACTIVE" and accepted["employee"]["active"]
    session = await login(edge, email, team["owner"].restaurant_id, password="graces own password")
    assert (session.user_id, session.role) == (accepted["user_id"], "staff")


async def test_inviting_someone_who_already_has_an_account_never_links_it_by_itself(edge, team):
    existing = await register(edge, "existing")
    created = ok(await edge.post("/api/v1/employees", headers=team["owner"].headers, json={
        "first_name": "Existing", "email": existing.email}))
    assert created["user_id"] == "" and created["state"] == "INVITED"
    me = ok(await edge.get("/api/v1/auth/me", headers=existing.headers))
    assert me["memberships"] == []  # nothing until they accept
    again = await edge.post("/api/v1/employees", headers=team["owner"].headers, json={
        "first_name": "Twice", "email": existing.email})
    assert again.status_code == 409 and error_reason(again) == "EMPLOYEE_EXISTS"
    assert error_metadata(again)["employee_id"] == created["id"]


async def test_concurrent_hires_of_the_same_person_create_one_employee(edge, team):
    email = unique_email("race")
    responses = await asyncio.gather(*(
        edge.post("/api/v1/employees", headers=team["owner"].headers,
                  json={"first_name": f"Racer{n}", "email": email}) for n in range(4)))
    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409]
    assert {error_reason(r) for r in responses if r.status_code == 409} == {"EMPLOYEE_EXISTS"}
    listed = ok(await edge.get("/api/v1/employees", headers=team["owner"].headers,
                               params={"page_size": 200, "state": "all"}))["employees"]
    assert [e["email"] for e in listed].count(email) == 1


@pytest.mark.parametrize("patch, reason, field", [
    ({"email": "not-an-email"}, "INVALID_EMAIL", "employee.email"),
    ({"email": ""}, "FIELD_REQUIRED", "employee.email"),
    ({"first_name": ""}, "FIELD_REQUIRED", "employee.first_name"),
    ({"first_name": "F" * 101}, "FIELD_TOO_LONG", "employee.first_name"),
    ({"last_name": "L" * 101}, "FIELD_TOO_LONG", "employee.last_name"),
    ({"job_title": "J" * 51}, "FIELD_TOO_LONG", "employee.job_title"),
    ({"access_role": "admin"}, "INVALID_ROLE", "employee.access_role"),
    ({"access_role": "cashier"}, "INVALID_ROLE", "employee.access_role"),
    ({"hourly_rate_minor": "-1"}, "INVALID_HOURLY_RATE", "employee.hourly_rate_minor"),
    ({"start_date": "03/02/2025"}, "INVALID_START_DATE", "employee.start_date"),
    ({"start_date": "2025-02-30"}, "INVALID_START_DATE", "employee.start_date"),
    ({"phone": "call me maybe"}, "INVALID_PHONE", "employee.phone"),
])
async def test_bad_employee_fields_are_400_with_a_reason_and_nothing_is_created(edge, team, patch, reason, field):
    email = unique_email("bad")
    body = {"first_name": "Bad", "email": email, **patch}
    response = await edge.post("/api/v1/employees", headers=team["owner"].headers, json=body)
    assert response.status_code == 400, response.text
    assert (error_reason(response), error_metadata(response).get("field")) == (reason, field)
    listed = ok(await edge.get("/api/v1/employees", headers=team["owner"].headers,
                               params={"state": "all", "page_size": 200}))
    assert email not in json.dumps(listed)


async def test_a_weak_password_chosen_at_acceptance_is_refused_by_auth_with_its_reason(edge, team):
    email = unique_email("weak")
    ok(await edge.post("/api/v1/employees", headers=team["owner"].headers, json={
        "first_name": "Weak", "email": email}))
    mail = await default_mailbox().wait_for(to=email, subject_contains="invited you")
    response = await edge.post("/api/v1/invitations:accept", json={
        "token": token_from(mail), "password": "123"})
    assert response.status_code == 400 and error_reason(response) == "WEAK_PASSWORD"
    # Nothing was used up: the same link still works with a good password.
    retried = await edge.post("/api/v1/invitations:accept", json={
        "token": token_from(mail), "password": "a much better password"})
    assert retried.status_code == 200, retried.text


# --- who sees what ----------------------------------------------------------------------------


async def test_staff_see_the_directory_without_contact_details_or_pay_of_others(edge, team):
    listed = ok(await edge.get("/api/v1/employees", headers=team["staff"].headers))["employees"]
    others = [e for e in listed if e["id"] != team["staff"].employee_id]
    assert {e["access_role"] for e in others} >= {"owner", "manager"}
    for employee in others:
        assert {"first_name", "access_role", "active"} <= employee.keys()
        assert not {"email", "phone", "hourly_rate_minor", "start_date"} & employee.keys()
    manager = await get_employee(edge, team["staff"], team["manager"].employee_id)
    assert "phone" not in manager and "hourly_rate_minor" not in manager


async def test_everyone_sees_their_own_full_profile(edge, team):
    for session in team.values():
        me = await get_employee(edge, session, "me")
        assert me["id"] == session.employee_id and me["email"] == session.email
    staff_me = await get_employee(edge, team["staff"], "me")
    assert (staff_me["phone"], staff_me["hourly_rate_minor"], staff_me["job_title"]) == (
        "+44 20 7946 0002", "1250", "cook")


async def test_managers_see_contacts_but_not_the_pay_of_owners_and_managers(edge, team):
    seen = {e["id"]: e for e in ok(await edge.get("/api/v1/employees",
                                                  headers=team["manager"].headers))["employees"]}
    assert seen[team["staff"].employee_id]["hourly_rate_minor"] == "1250"
    assert "email" in seen[team["owner"].employee_id]
    assert "hourly_rate_minor" not in seen[team["owner"].employee_id]


# --- no escalation ----------------------------------------------------------------------------


async def test_a_manager_cannot_escalate_anyone_to_owner_or_manager(edge, stack):
    owner, _ = await create_restaurant_as_owner(edge)
    manager = await add_employee(edge, owner, "manager", hourly_rate_minor=2000)
    staff = await add_employee(edge, owner, "staff")
    attempts = [
        ("POST", "/api/v1/employees", {"first_name": "New", "email": unique_email("o"), "access_role": "owner"}),
        ("POST", "/api/v1/employees", {"first_name": "New", "email": unique_email("m"), "access_role": "manager"}),
        ("PATCH", employee_path(staff.employee_id), {"access_role": "manager", "version": 2}),
        ("PATCH", employee_path(staff.employee_id), {"access_role": "owner", "version": 2}),
        ("PATCH", employee_path("me"), {"access_role": "owner", "version": 2}),
        ("PATCH", employee_path("me"), {"hourly_rate_minor": "999999", "version": 2}),
        ("PATCH", employee_path(owner.employee_id), {"access_role": "staff", "version": 1}),
        ("DELETE", employee_path(owner.employee_id), None),
    ]
    for method, path, body in attempts:
        response = await edge.request(method, path, headers=manager.headers, json=body)
        assert response.status_code == 403, (method, path, body, response.text)
        assert error_reason(response) == "ROLE_FORBIDDEN"
        message = response.json()["message"]
        assert "staff." in message and "your role in this restaurant is manager" in message

    roles = {e["id"]: (e["access_role"], e["version"]) for e in ok(await edge.get(
        "/api/v1/employees", headers=owner.headers, params={"state": "all"}))["employees"]}
    assert roles == {owner.employee_id: ("owner", 1), manager.employee_id: ("manager", ACCEPTED),
                     staff.employee_id: ("staff", ACCEPTED)}
    # Each denial is a security event (the staff service logs it as it sends it to auth).
    staff_logs = stack.logs_since(dict.fromkeys(stack.replicas("staff"), 0))
    denials = [json.loads(line) for line in staff_logs.splitlines()
               if '"ACCESS_DENIED"' in line and manager.user_id in line]
    assert len(denials) >= len(attempts)
    assert {"staff.CreateEmployee", "staff.UpdateEmployee", "staff.DeleteEmployee"} <= {
        d["details"].get("permission") for d in denials}


async def test_a_manager_manages_staff_role_employees(edge):
    owner, _ = await create_restaurant_as_owner(edge)
    manager = await add_employee(edge, owner, "manager")
    hired = await add_employee(edge, manager, "staff", job_title="host")
    updated = ok(await edge.patch(employee_path(hired.employee_id), headers=manager.headers,
                                  json={"job_title": "server", "version": ACCEPTED}))
    assert (updated["job_title"], updated["version"]) == ("server", ACCEPTED + 1)
    gone = ok(await edge.delete(employee_path(hired.employee_id), headers=manager.headers))
    assert gone["active"] is False


# --- role changes and deactivation on live sessions -------------------------------------------


async def test_a_role_change_applies_immediately(edge):
    owner, _ = await create_restaurant_as_owner(edge)
    staff = await add_employee(edge, owner, "staff")
    denied = await edge.post("/api/v1/employees", headers=staff.headers,
                             json={"first_name": "X", "email": unique_email("x")})
    assert denied.status_code == 403 and error_reason(denied) == "ROLE_FORBIDDEN"

    promoted = ok(await edge.patch(employee_path(staff.employee_id), headers=owner.headers,
                                   json={"access_role": "manager", "version": ACCEPTED}))
    assert promoted["access_role"] == "manager"
    stale = await edge.get("/api/v1/employees", headers=staff.headers)
    assert stale.status_code == 401 and error_reason(stale) == "SESSION_REVOKED"

    again = await login(edge, staff.email, owner.restaurant_id)
    assert again.role == "manager"
    ok(await edge.post("/api/v1/employees", headers=again.headers,
                       json={"first_name": "Hired", "email": unique_email("hired")}))


async def test_deactivation_ends_the_users_live_sessions_at_once_and_keeps_the_record(edge):
    owner, _ = await create_restaurant_as_owner(edge)
    staff = await add_employee(edge, owner, "staff", job_title="runner")
    second_device = await login(edge, staff.email, owner.restaurant_id)
    for session in (staff, second_device):
        ok(await edge.get("/api/v1/employees", headers=session.headers))

    gone = ok(await edge.delete(employee_path(staff.employee_id), headers=owner.headers))
    assert gone["active"] is False and gone["deactivate_time"]
    for session in (staff, second_device):
        response = await edge.get(employee_path("me"), headers=session.headers)
        assert response.status_code == 401 and error_reason(response) == "SESSION_REVOKED"
    relogin = await edge.post("/api/v1/auth/login", json={
        "email": staff.email, "password": staff.password, "restaurant_id": owner.restaurant_id})
    assert relogin.status_code == 403 and error_reason(relogin) == "NOT_A_MEMBER"

    active = ok(await edge.get("/api/v1/employees", headers=owner.headers))["employees"]
    inactive = ok(await edge.get("/api/v1/employees", headers=owner.headers,
                                 params={"state": "inactive"}))["employees"]
    assert staff.employee_id not in {e["id"] for e in active}
    assert [(e["id"], e["job_title"]) for e in inactive] == [(staff.employee_id, "runner")]

    again = ok(await edge.delete(employee_path(staff.employee_id), headers=owner.headers))
    assert again["version"] == gone["version"]  # deleting twice changes nothing
    edit = await edge.patch(employee_path(staff.employee_id), headers=owner.headers,
                            json={"job_title": "cook", "version": gone["version"]})
    assert edit.status_code == 409 and error_reason(edit) == "EMPLOYEE_INACTIVE"


async def test_a_deactivated_employee_can_be_reactivated_with_their_role(edge):
    owner, _ = await create_restaurant_as_owner(edge)
    manager = await add_employee(edge, owner, "manager")
    gone = ok(await edge.delete(employee_path(manager.employee_id), headers=owner.headers))
    rehire = await edge.post("/api/v1/employees", headers=owner.headers,
                             json={"first_name": "Again", "email": manager.email})
    assert rehire.status_code == 409 and error_reason(rehire) == "EMPLOYEE_EXISTS"
    assert ":undelete" in rehire.json()["message"]

    back = ok(await edge.post(employee_path(manager.employee_id) + ":undelete", headers=owner.headers,
                              json={"version": gone["version"]}))
    assert back["active"] is True and "deactivate_time" not in back
    session = await login(edge, manager.email, owner.restaurant_id)
    assert session.role == "manager"


async def test_a_manager_cannot_reactivate_a_manager(edge):
    owner, _ = await create_restaurant_as_owner(edge)
    manager = await add_employee(edge, owner, "manager")
    other = await add_employee(edge, owner, "manager")
    ok(await edge.delete(employee_path(other.employee_id), headers=owner.headers))
    response = await edge.post(employee_path(other.employee_id) + ":undelete",
                               headers=manager.headers, json={})
    assert response.status_code == 403 and error_reason(response) == "ROLE_FORBIDDEN"


async def test_the_last_owner_can_neither_leave_nor_step_down(edge):
    owner, _ = await create_restaurant_as_owner(edge)
    leave = await edge.delete(employee_path("me"), headers=owner.headers)
    assert leave.status_code == 409 and error_reason(leave) == "LAST_OWNER"
    step_down = await edge.patch(employee_path("me"), headers=owner.headers,
                                 json={"access_role": "manager", "version": 1})
    assert step_down.status_code == 409 and error_reason(step_down) == "LAST_OWNER"

    co_owner = await add_employee(edge, owner, "owner")
    ok(await edge.patch(employee_path("me"), headers=owner.headers,
                        json={"access_role": "manager", "version": 1}))
    last = await edge.delete(employee_path("me"), headers=co_owner.headers)
    assert last.status_code == 409 and error_reason(last) == "LAST_OWNER"


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(edge):
    first, _ = await create_restaurant_as_owner(edge)
    second = await add_employee(edge, first, "owner")
    responses = await asyncio.gather(
        edge.patch(employee_path(second.employee_id), headers=first.headers,
                   json={"access_role": "manager", "version": ACCEPTED}),
        edge.patch(employee_path(first.employee_id), headers=second.headers,
                   json={"access_role": "manager", "version": 1}))
    # The restaurant lock runs them one after the other; the loser is refused either because its
    # session ended with its demotion (401), or because its recorded role is now manager (403),
    # or because it was the last owner (409): never do both go through.
    codes = sorted(r.status_code for r in responses)
    assert codes[0] == 200 and codes[1] in (401, 403, 409), [r.text for r in responses]
    survivor = first if responses[0].status_code != 200 else second
    owners = [e for e in ok(await edge.get("/api/v1/employees", headers=(
        await login(edge, survivor.email, first.restaurant_id)).headers))["employees"]
        if e["access_role"] == "owner"]
    assert len(owners) == 1


# --- PATCH and optimistic concurrency ---------------------------------------------------------


async def test_a_stale_update_is_a_409_version_conflict_and_changes_nothing(edge, team):
    hired = await add_employee(edge, team["owner"], "staff", job_title="host")
    path = employee_path(hired.employee_id)
    first = ok(await edge.patch(path, headers=team["owner"].headers,
                                json={"job_title": "server", "version": ACCEPTED}))
    assert first["version"] == ACCEPTED + 1
    stale = await edge.patch(path, headers=team["manager"].headers,
                             json={"job_title": "cook", "phone": "+44 1111 222333",
                                   "version": ACCEPTED})
    assert stale.status_code == 409 and error_reason(stale) == "VERSION_CONFLICT"
    assert error_metadata(stale)["current_version"] == str(ACCEPTED + 1)
    current = await get_employee(edge, team["owner"], hired.employee_id)
    assert (current["job_title"], current["version"]) == ("server", ACCEPTED + 1)
    assert "phone" not in current
    missing = await edge.patch(path, headers=team["owner"].headers, json={"job_title": "cook"})
    assert missing.status_code == 400 and error_reason(missing) == "VERSION_REQUIRED"


async def test_concurrent_updates_with_the_same_version_let_exactly_one_win(edge, team):
    hired = await add_employee(edge, team["owner"], "staff")
    path = employee_path(hired.employee_id)
    responses = await asyncio.gather(*(
        edge.patch(path, headers=team["owner"].headers,
                   json={"job_title": f"title {n}", "version": ACCEPTED})
        for n in range(5)))
    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409, 409]
    assert (await get_employee(edge, team["owner"], hired.employee_id))["version"] == ACCEPTED + 1


async def test_patch_changes_only_the_fields_present(edge, team):
    hired = await add_employee(edge, team["owner"], "staff", job_title="cook", phone="+44 20 7946 0123",
                               hourly_rate_minor=1100)
    path = employee_path(hired.employee_id)
    updated = ok(await edge.patch(path, headers=team["owner"].headers,
                                  json={"hourly_rate_minor": "0", "phone": "",
                                        "version": ACCEPTED}))
    assert updated["hourly_rate_minor"] == "0" and "phone" not in updated
    assert (updated["job_title"], updated["first_name"]) == ("cook", hired.employee["first_name"])
    masked = ok(await edge.patch(path, headers=team["owner"].headers, params={"update_mask": "job_title"},
                                 json={"first_name": "Ignored", "version": ACCEPTED + 1}))
    assert "job_title" not in masked and masked["first_name"] == hired.employee["first_name"]
    same = ok(await edge.patch(path, headers=team["owner"].headers,
                               json={"first_name": masked["first_name"],
                                     "version": ACCEPTED + 2}))
    assert same["version"] == ACCEPTED + 2  # nothing differed: no new version
    email = await edge.patch(path, headers=team["owner"].headers,
                             json={"email": unique_email("moved"), "version": ACCEPTED + 2})
    assert email.status_code == 400 and error_reason(email) == "EMAIL_IMMUTABLE"


# --- pagination -------------------------------------------------------------------------------


async def test_pagination_is_stable_while_employees_are_being_hired(edge):
    owner, _ = await create_restaurant_as_owner(edge)
    before = [await add_employee_fast(edge, owner, n) for n in range(11)]
    expected = [owner.employee_id, *before]
    hiring_done = asyncio.Event()

    async def keep_hiring():
        for n in range(8):
            await add_employee_fast(edge, owner, 100 + n)
            await asyncio.sleep(0)
        hiring_done.set()

    async def page_through():
        seen, token = [], ""
        while True:
            page = ok(await edge.get("/api/v1/employees", headers=owner.headers,
                                     params={"page_size": 3, "page_token": token,
                                             "state": "all"}))
            seen.extend(e["id"] for e in page["employees"])
            token = page["next_page_token"]
            if not token:
                return seen

    seen, _ = await asyncio.gather(page_through(), keep_hiring())
    assert len(seen) == len(set(seen)), "an employee appeared on two pages"
    assert seen[: len(expected)] == expected, "a pre-existing employee was skipped or reordered"


async def add_employee_fast(edge, owner: Session, n: int) -> str:
    """Invites without accepting (no mail read, no password hashed): for volume."""
    return ok(await edge.post("/api/v1/employees", headers=owner.headers, json={
        "first_name": f"Page{n}", "email": unique_email(f"page{n}")}))["id"]


async def test_list_filters_and_page_tokens_are_validated(edge, team):
    managers = ok(await edge.get("/api/v1/employees", headers=team["owner"].headers,
                                 params={"access_role": "manager"}))["employees"]
    assert managers and {e["access_role"] for e in managers} == {"manager"}
    for params, reason in [({"state": "fired"}, "INVALID_FILTER"),
                           ({"access_role": "boss"}, "INVALID_ROLE"),
                           ({"page_token": "garbage"}, "INVALID_PAGE_TOKEN"),
                           ({"page_size": -1}, "INVALID_PAGE_SIZE")]:
        response = await edge.get("/api/v1/employees", headers=team["owner"].headers, params=params)
        assert response.status_code == 400 and error_reason(response) == reason, params
    page = ok(await edge.get("/api/v1/employees", headers=team["owner"].headers, params={"page_size": 1}))
    reused = await edge.get("/api/v1/employees", headers=team["owner"].headers,
                            params={"page_size": 1, "page_token": page["next_page_token"],
                                    "state": "all"})
    assert reused.status_code == 400 and error_reason(reused) == "INVALID_PAGE_TOKEN"


# --- tenant context ---------------------------------------------------------------------------


async def test_an_x_restaurant_id_of_another_restaurant_is_403_tenant_mismatch_naming_both(edge, team):
    other = secrets.token_hex(4) + "-0000-4000-8000-" + secrets.token_hex(6)
    response = await edge.get("/api/v1/employees", headers={**team["owner"].headers,
                                                            "x-restaurant-id": other})
    assert response.status_code == 403 and error_reason(response) == "TENANT_MISMATCH"
    assert other in response.json()["message"] and team["owner"].restaurant_id in response.json()["message"]
    same = await edge.get("/api/v1/employees", headers={**team["owner"].headers,
                                                        "x-restaurant-id": team["owner"].restaurant_id})
    assert same.status_code == 200


async def test_a_token_without_a_restaurant_is_403_no_restaurant_context(edge):
    loner = await register(edge, "loner")
    response = await edge.get("/api/v1/employees", headers=loner.headers)
    assert response.status_code == 403 and error_reason(response) == "NO_RESTAURANT_CONTEXT"


async def test_without_a_token_it_is_401_not_403(edge):
    response = await edge.get("/api/v1/employees")
    assert response.status_code == 401 and error_reason(response) == "TOKEN_INVALID"
    garbage = await edge.get("/api/v1/employees", headers={"authorization": "Bearer not.a.token"})
    assert garbage.status_code == 401


async def test_an_employee_id_that_is_not_an_id_is_400(edge, team):
    response = await edge.get(employee_path("1%20OR%201=1"), headers=team["owner"].headers)
    assert response.status_code == 400 and error_reason(response) == "INVALID_ID"
