"""The aggregated health's rules: one check serves a burst of callers, and who sees details."""

from __future__ import annotations

import asyncio

import pytest

from posmesh.common import context
from posmesh.common.health import SystemHealth
from posmesh.common.settings import Settings
from posmesh.health.v1 import health_pb2 as system_pb2


class CountingHealth(SystemHealth):
    """Answers from a counter instead of probing services."""

    def __init__(self, cache_seconds: float) -> None:
        super().__init__("orders", Settings(HEALTH_CACHE_SECONDS=cache_seconds))
        self.checks = 0

    async def check(self) -> system_pb2.GetSystemHealthResponse:
        self.checks += 1
        await asyncio.sleep(0.05)
        return system_pb2.GetSystemHealthResponse(
            status="SERVING", answered_by="orders", version=f"check-{self.checks}",
            services=[system_pb2.ComponentHealth(name="auth", status="SERVING")])


async def test_a_burst_of_callers_shares_one_check():
    health = CountingHealth(cache_seconds=5)

    reports = await asyncio.gather(*(health.latest() for _ in range(50)))

    assert health.checks == 1
    assert {report.version for report in reports} == {"check-1"}


async def test_a_report_older_than_the_cache_interval_is_checked_again():
    health = CountingHealth(cache_seconds=0.1)
    await health.latest()
    await asyncio.sleep(0.15)

    assert (await health.latest()).version == "check-2"


def _as(*, via_edge: bool, role: str | None) -> None:
    context.set_request(context.RequestInfo(method="/posmesh.health.v1.SystemHealthService/"
                                            "GetSystemHealth", client_ip="203.0.113.9",
                                            bearer_token="", via_edge=via_edge))
    context.set_caller(None if role is None else context.Caller(
        user_id="u-1", session_id="s-1", restaurant_id="r-1", role=role, token_id="t-1",
        expires_at=0))


@pytest.mark.parametrize("via_edge, role, detailed", [
    (True, None, False),  # anyone on the internet
    (True, "staff", False),
    (True, "", False),  # signed in, no restaurant
    (True, "manager", True),
    (True, "owner", True),
    (False, None, True),  # inside the mesh: operators, load balancers on the internal network
])
async def test_details_are_for_owners_managers_and_the_mesh(via_edge, role, detailed):
    health = CountingHealth(cache_seconds=5)

    async def ask() -> system_pb2.GetSystemHealthResponse:
        _as(via_edge=via_edge, role=role)
        return await health.GetSystemHealth(system_pb2.GetSystemHealthRequest(), None)

    reply = await asyncio.create_task(ask())  # its own context, like an RPC

    assert reply.status == "SERVING"
    assert bool(reply.services) is detailed
    assert (reply.answered_by == "orders") is detailed
