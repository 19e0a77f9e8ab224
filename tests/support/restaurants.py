"""Restaurants and their people for e2e tests, over the public JSON API through Envoy.

    owner, restaurant = await create_restaurant_as_owner(edge, stack)
    manager = await add_employee(edge, owner, "manager")
    staff = await add_employee(edge, owner, "staff", job_title="cook")
    await edge.get("/api/v1/employees", headers=staff.headers)

Sessions (`Session`: ids, email, password, tokens, `headers`, `grpc_metadata`, and for employees
`employee_id` and the `employee` record) come from the public API only: unlike
tests/support/accounts.py's register_and_login, which grants a bare membership in auth, these
create real employee records, as a POS client would. Every session returned has an access token
whose context is the restaurant (creating a restaurant does not change the creator's token, so the
owner's session is switched into it with POST /api/v1/auth/switch-restaurant, as a real client
must do; switching rotates the session, so keep using the session returned). Emails are unique per
call, so tests stay independent of each other and of their order.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from tests.support.mail import default_mailbox, token_from

PASSWORD = "correct horse battery staple"
VERIFY_SUBJECT = "Confirm your email address"
INVITATION_SUBJECT = "invited you to join"
ACCOUNT_EXISTS_SUBJECT = "You already have a posmesh account"


@dataclass(frozen=True)
class Session:
    user_id: str
    email: str
    access_token: str
    refresh_token: str
    restaurant_id: str = ""
    role: str = ""
    employee_id: str = ""
    employee: dict[str, Any] = field(default_factory=dict, compare=False)
    password: str = PASSWORD

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.access_token}"}

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        """For native gRPC calls (through the edge or to a service directly)."""
        return (("authorization", f"Bearer {self.access_token}"),)


def unique_email(label: str) -> str:
    return f"{label}-{secrets.token_hex(6)}@staff.test"


def error_reason(response: httpx.Response) -> str:
    """The google.rpc.ErrorInfo reason of a JSON error body ('' when there is none)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, ValueError):
        return ""
    if not isinstance(body, dict):
        return ""
    for detail in body.get("details", []):
        if isinstance(detail, dict) and "reason" in detail:
            return detail["reason"]
    return body.get("reason", "")


def error_metadata(response: httpx.Response) -> dict[str, str]:
    for detail in response.json().get("details", []):
        if isinstance(detail, dict) and "reason" in detail:
            return detail.get("metadata", {})
    return {}


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, (
        f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}")
    return response.json()


async def register(client: httpx.AsyncClient, label: str = "user", *,
                   restaurant_id: str = "", verified: bool = True) -> Session:
    """A new account, logged in (with `restaurant_id` as context when given); its address
    verified with the link the stack mailed it, unless `verified=False`."""
    email = unique_email(label)
    ok(await client.post("/api/v1/auth/register", json={
        "email": email, "password": PASSWORD, "full_name": f"{label.title()} Tester"}))
    if verified:
        await verify_email(client, email)
    return await login(client, email, restaurant_id)


async def verify_email(client: httpx.AsyncClient, email: str) -> dict[str, Any]:
    """Uses the newest verification link mailed to `email` (read from the dev mail server)."""
    mail = await default_mailbox().wait_for(to=email, subject_contains=VERIFY_SUBJECT)
    return ok(await client.post("/api/v1/auth/email:verify", json={"token": token_from(mail)}))


async def accept_invitation(client: httpx.AsyncClient, email: str, *,
                            password: str = PASSWORD, count: int = 1) -> dict[str, Any]:
    """Accepts the newest invitation mailed to `email` as someone not signed in, choosing
    `password` (`count`: wait until that many invitations have arrived)."""
    mail = await default_mailbox().wait_for(to=email, subject_contains=INVITATION_SUBJECT,
                                            count=count)
    return ok(await client.post("/api/v1/invitations:accept", json={
        "token": token_from(mail), "password": password}))


async def login(client: httpx.AsyncClient, email: str, restaurant_id: str = "", *,
                user_id: str = "", password: str = PASSWORD) -> Session:
    body = ok(await client.post("/api/v1/auth/login", json={
        "email": email, "password": password, "restaurant_id": restaurant_id}))
    return Session(user_id=user_id or body["user"]["id"], email=email,
                   access_token=body["access_token"], refresh_token=body["refresh_token"],
                   restaurant_id=body.get("restaurant_id", ""), role=body.get("role", ""),
                   password=password)


async def switch_restaurant(client: httpx.AsyncClient, session: Session, restaurant_id: str) -> Session:
    body = ok(await client.post("/api/v1/auth/switch-restaurant", headers=session.headers, json={
        "restaurant_id": restaurant_id}))
    return replace(session, access_token=body["access_token"], refresh_token=body["refresh_token"],
                   restaurant_id=body["restaurant_id"], role=body["role"])


async def create_restaurant_as_owner(client: httpx.AsyncClient, stack: Any = None, *,
                                     owner: Session | None = None, name: str | None = None,
                                     timezone: str = "Europe/London", currency: str = "GBP",
                                     address: dict[str, str] | None = None
                                     ) -> tuple[Session, dict[str, Any]]:
    """(owner session whose token is for the new restaurant, the restaurant as created).
    `owner` creates it when given; otherwise a new account does. `stack` is accepted for symmetry
    with the other helpers; the client already points at its edge."""
    creator = owner or await register(client, "owner")
    restaurant = ok(await client.post("/api/v1/restaurants", headers=creator.headers, json={
        "name": name or f"Bistro {secrets.token_hex(3)}", "timezone": timezone,
        "currency": currency, "address": address or {"line1": "1 High Street", "city": "London",
                                                     "postal_code": "N1 1AA", "country": "GB"}}))
    switched = await switch_restaurant(client, creator, restaurant["id"])
    me = ok(await client.get("/api/v1/employees/me", headers=switched.headers))
    return replace(switched, employee_id=me["id"], employee=me), restaurant


async def add_employee(client: httpx.AsyncClient, owner: Session, role: str = "staff", *,
                       email: str | None = None, first_name: str | None = None,
                       last_name: str = "Tester", job_title: str | None = None,
                       hourly_rate_minor: int | None = None, phone: str | None = None,
                       start_date: str | None = None) -> Session:
    """Hires someone into `owner`'s restaurant (`owner` may be any session allowed to): invites
    them, accepts the mailed invitation with a password of their own, and returns their session,
    logged in to that restaurant, with `employee` as it is after acceptance."""
    email = email or unique_email(role)
    body: dict[str, Any] = {"first_name": first_name or role.title(), "last_name": last_name,
                            "email": email, "access_role": role}
    for key, value in (("job_title", job_title), ("phone", phone), ("start_date", start_date),
                       ("hourly_rate_minor", None if hourly_rate_minor is None else str(hourly_rate_minor))):
        if value is not None:
            body[key] = value
    ok(await client.post("/api/v1/employees", headers=owner.headers, json=body))
    accepted = await accept_invitation(client, email)
    employee = accepted["employee"]
    session = await login(client, email, owner.restaurant_id, user_id=employee["user_id"])
    assert session.restaurant_id == owner.restaurant_id and session.role == role, session
    return replace(session, employee_id=employee["id"], employee=employee)
