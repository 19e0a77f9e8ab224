"""Revocations while Redis is down: every service keeps a local revocation set, loaded from the
auth service (PostgreSQL) every REVOCATION_POLL_SECONDS while the revocation channel is down, so
a logout or a deactivation is refused everywhere within seconds, not accepted again for the
token's lifetime; and a service restarted meanwhile loads what was revoked before it started."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fault.conftest import eventually
from tests.support.orders import error_reason
from tests.support.realtime import new_session, signed_in
from tests.support.restaurants import add_employee

pytestmark = pytest.mark.fault

# A poll interval, a call to auth, and a busy two-core machine.
REFUSED_WITHIN_SECONDS = 8.0
# Each service's sample request for a restaurant member, through the edge.
ENDPOINTS = {"orders": "/api/v1/orders/active", "staff": "/api/v1/employees"}


async def _answers(edge, session) -> dict[str, tuple[int, str]]:
    replies = await asyncio.gather(*(edge.get(path, headers=session.headers)
                                     for path in ENDPOINTS.values()))
    return {name: (reply.status_code, error_reason(reply))
            for name, reply in zip(ENDPOINTS, replies)}


async def _served_everywhere(edge, session) -> bool:
    return all(status == 200 for status, _ in (await _answers(edge, session)).values())


async def _refused_everywhere(edge, session) -> bool:
    return set((await _answers(edge, session)).values()) == {(401, "SESSION_REVOKED")}


async def _refused_within(edge, session, seconds: float, what: str) -> None:
    await eventually(lambda: _refused_everywhere(edge, session), timeout=seconds, interval=0.25,
                     what=what)


async def _revocation_health(edge, manager) -> dict[str, str]:
    """What the answering service says about Redis and its revocation set (owners and managers
    see every component)."""
    body = (await edge.get("/api/v1/health", headers=manager.headers)).json()
    return {component["name"]: component["status"] for component in body["dependencies"]}


async def test_during_a_redis_outage_a_logout_and_a_deactivation_are_refused_everywhere_within_seconds(
        stack, edge, party):
    leaving = await new_session(edge, party.staff)  # this device signs out
    removed = await add_employee(edge, party.owner, "staff")  # this employee is deactivated
    leaving_socket = await signed_in(stack, leaving, "kitchen")
    removed_socket = await signed_in(stack, removed, "pos")
    bystander_socket = await signed_in(stack, party.manager, "kitchen")
    for session in (leaving, removed, party.manager):
        assert await _served_everywhere(edge, session)

    await stack.stop_redis()
    try:
        # Valid tokens keep working without Redis: nothing asks it per request any more.
        await eventually(lambda: _served_everywhere(edge, leaving), timeout=5,
                         what="a valid token served during the outage")
        started = time.monotonic()
        logout = await edge.post("/api/v1/auth/logout", headers=leaving.headers, json={})
        assert logout.status_code == 200, logout.text
        await _refused_within(edge, leaving, REFUSED_WITHIN_SECONDS,
                              "the signed-out token refused by orders and staff")
        after_logout = time.monotonic() - started
        started = time.monotonic()
        deactivated = await edge.delete(f"/api/v1/employees/{removed.employee_id}",
                                        headers=party.owner.headers)
        assert deactivated.status_code == 200, deactivated.text
        await _refused_within(edge, removed, REFUSED_WITHIN_SECONDS,
                              "the deactivated employee's token refused by orders and staff")
        after_deactivation = time.monotonic() - started
        print(f"refused by orders and staff {after_logout:.1f}s after the logout was sent, "
              f"{after_deactivation:.1f}s after the deactivation was sent")

        # Their sockets are closed the same way, on whichever realtime process holds them.
        error = await leaving_socket.next("auth_error", timeout=REFUSED_WITHIN_SECONDS)
        assert error["data"]["code"] == "SESSION_REVOKED"
        assert await leaving_socket.closed() == (4001, "LOGOUT")
        error = await removed_socket.next("auth_error", timeout=REFUSED_WITHIN_SECONDS)
        assert error["data"]["code"] == "MEMBERSHIP_REVOKED"
        assert (await removed_socket.closed())[0] == 4003

        # Everyone else is untouched, and health says Redis is down but revocations are kept.
        assert await _served_everywhere(edge, party.manager)
        assert (await bystander_socket.ping())["type"] == "pong"
        health = await _revocation_health(edge, party.manager)
        assert health["redis"] == "NOT_SERVING" and health["revocations"] == "SERVING", health
    finally:
        await stack.start_redis()

    async def signs_in_again():
        return await new_session(edge, party.staff)
    again = await eventually(signs_in_again, timeout=15, what="a sign-in after Redis returned")
    assert await _served_everywhere(edge, again)
    assert await _refused_everywhere(edge, leaving) and await _refused_everywhere(edge, removed)
    await (await signed_in(stack, again, "kitchen")).close()
    assert (await bystander_socket.ping())["type"] == "pong"
    await bystander_socket.close()


async def test_a_service_restarted_during_a_redis_outage_still_refuses_sessions_revoked_before(
        stack, edge, party):
    before_outage = await new_session(edge, party.staff)
    during_outage = await new_session(edge, party.staff)
    assert (await edge.post("/api/v1/auth/logout", headers=before_outage.headers,
                            json={})).status_code == 200
    await _refused_within(edge, before_outage, REFUSED_WITHIN_SECONDS,
                          "a token signed out before the outage refused")

    await stack.stop_redis()
    try:
        assert (await edge.post("/api/v1/auth/logout", headers=during_outage.headers,
                                json={})).status_code == 200
        await _refused_within(edge, during_outage, REFUSED_WITHIN_SECONDS,
                              "a token signed out during the outage refused")

        await stack.stop_every("orders")
        await stack.start_every("orders")

        # The new process loaded recent revocations from auth before it served its first call.
        for session in (before_outage, during_outage):
            reply = await edge.get(ENDPOINTS["orders"], headers=session.headers)
            assert (reply.status_code, error_reason(reply)) == (401, "SESSION_REVOKED"), reply.text
        served = await edge.get(ENDPOINTS["orders"], headers=party.manager.headers)
        assert served.status_code == 200, served.text
    finally:
        await stack.start_redis()
