"""Accounts for e2e tests: registered and signed in over the wire, through Envoy.

    member = await register_and_login(edge, restaurant_id, "manager", stack=stack)
    await edge.get("/api/v1/auth/me", headers=member.headers)

Registration and login go through the public JSON API (`POST /api/v1/auth/register`, `/login`).
A membership is granted through the auth service's internal AuthAdminService over gRPC at
`stack.addr("auth")` (internal RPCs are not routable through the edge). Emails are unique per
call, so tests stay independent of each other and of their order.
"""

from __future__ import annotations

import json
import secrets
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import asyncpg

from google.protobuf import json_format
import httpx

from posmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from tests.support.restaurants import verify_email

PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Account:
    user_id: str
    email: str
    password: str
    full_name: str
    access_token: str
    refresh_token: str
    restaurant_id: str = ""
    role: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.access_token}"}

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.access_token}"),)

    def with_tokens(self, body: dict[str, Any]) -> "Account":
        """This account with the pair of a login/refresh/switch reply."""
        return Account(self.user_id, self.email, self.password, self.full_name,
                       body["access_token"], body["refresh_token"],
                       body.get("restaurant_id", ""), body.get("role", ""))


def unique_email(label: str = "user") -> str:
    return f"{label}-{secrets.token_hex(6)}@auth.test"


def error_reason(response: httpx.Response) -> str:
    """The google.rpc.ErrorInfo reason of a JSON error body ('' when there is none)."""
    detail = _error_info(response)
    return detail.get("reason", "") if detail else ""


def error_metadata(response: httpx.Response) -> dict[str, str]:
    detail = _error_info(response)
    return dict(detail.get("metadata", {})) if detail else {}


def _error_info(response: httpx.Response) -> dict | None:
    try:
        body = response.json()
    except (json.JSONDecodeError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    for detail in body.get("details", []):
        if isinstance(detail, dict) and "reason" in detail:
            return detail
    return None


async def _json(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, f"{response.request.url}: {response.status_code} {response.text}"
    return response.json()


async def register(client: httpx.AsyncClient, stack, *, email: str | None = None,
                   password: str = PASSWORD, full_name: str = "Test User") -> dict[str, Any]:
    """POST /api/v1/auth/register (which answers nothing about the account); the new user as
    JSON, looked up over the internal API (a sign-in would add a session tests may count)."""
    email = email or unique_email()
    assert await _json(await client.post("/api/v1/auth/register", json={
        "email": email, "password": password, "full_name": full_name})) == {}
    found = await admin_call(stack, "FindUserByEmail",
                             auth_pb2.FindUserByEmailRequest(email=email))
    return json_format.MessageToDict(found.user, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD,
                restaurant_id: str | None = None) -> httpx.Response:
    """POST /api/v1/auth/login; the raw response (tests check errors too)."""
    payload = {"email": email, "password": password}
    if restaurant_id:
        payload["restaurant_id"] = restaurant_id
    return await client.post("/api/v1/auth/login", json=payload)


async def admin_call(stack, method: str, request) -> Any:
    """Calls AuthAdminService.<method> on the auth service directly (never through the edge),
    as a service the caller table lets call it (staff for the admin RPCs)."""
    from posmesh.common import callers

    caller = sorted(callers.CALLERS[f"/posmesh.auth.v1.AuthAdminService/{method}"])[0]
    async with stack.channel("auth", as_identity=caller) as channel:
        stub = auth_pb2_grpc.AuthAdminServiceStub(channel)
        return await getattr(stub, method)(request, timeout=10)


@asynccontextmanager
async def auth_db(stack) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the stack's database with the `auth` schema first on the search path,
    for tests that must look at (or age) stored rows."""
    url = stack.settings.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    connection = await asyncpg.connect(url, server_settings={"search_path": "auth,public"})
    try:
        yield connection
    finally:
        await connection.close()


@asynccontextmanager
async def staff_db(stack) -> AsyncIterator[asyncpg.Connection]:
    """The same for the `staff` schema (e.g. to age an invitation past its resend gap)."""
    url = stack.settings.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    connection = await asyncpg.connect(url, server_settings={"search_path": "staff,public"})
    try:
        yield connection
    finally:
        await connection.close()


async def grant_membership(stack, user_id: str, restaurant_id: str, role: str,
                           restaurant_name: str = "") -> auth_pb2.GrantMembershipResponse:
    return await admin_call(stack, "GrantMembership", auth_pb2.GrantMembershipRequest(
        user_id=user_id, restaurant_id=restaurant_id, role=role,
        restaurant_name=restaurant_name or f"Restaurant {restaurant_id[:8]}"))


async def register_and_login(client: httpx.AsyncClient, restaurant_id: str | None = None,
                             role: str | None = None, *, stack=None, label: str = "user",
                             password: str = PASSWORD, full_name: str = "Test User",
                             restaurant_name: str = "") -> Account:
    """A new user, signed in. With `restaurant_id` and/or `role` (needs `stack`), the user is
    first made a member of that restaurant (a new random one when only the role is given; the
    role defaults to staff) and signed in there."""
    email = unique_email(label)
    if restaurant_id is not None or role is not None:
        if stack is None:
            raise ValueError("granting a membership needs `stack` (the internal auth API)")
        user = await register(client, stack, email=email, password=password, full_name=full_name)
        await verify_email(client, email)  # only verified addresses get memberships
        restaurant_id = restaurant_id or str(uuid.uuid4())
        role = role or "staff"
        await grant_membership(stack, user["id"], restaurant_id, role, restaurant_name)
    else:
        assert await _json(await client.post("/api/v1/auth/register", json={
            "email": email, "password": password, "full_name": full_name})) == {}
    body = await _json(await login(client, email, password, restaurant_id))
    return Account(user_id=body["user"]["id"], email=email, password=password,
                   full_name=full_name,
                   access_token=body["access_token"], refresh_token=body["refresh_token"],
                   restaurant_id=body.get("restaurant_id", ""), role=body.get("role", ""))
