"""The caller table says which process may call each RPC, and the README prints it."""

from __future__ import annotations

from pathlib import Path

import pytest

from posmesh.common import callers, permissions
from posmesh.common.callers import EDGE, EVERY_SERVICE, may_call
from posmesh.common.permissions import Access

ROOT = Path(__file__).resolve().parents[2]
_ADMIN = "/posmesh.auth.v1.AuthAdminService/"
_INTERNAL = [m for m, rule in permissions.PERMISSIONS.items() if rule.access is Access.INTERNAL]


def test_every_rpc_of_the_permission_table_has_a_row():
    assert set(callers.CALLERS) == set(permissions.PERMISSIONS)


@pytest.mark.parametrize("method", _INTERNAL)
def test_no_internal_rpc_is_callable_by_the_edge(method):
    assert not may_call(EDGE, method)


@pytest.mark.parametrize("rpc", ["ClaimAccount", "FindUserByEmail", "BatchGetUsers",
                                 "GrantMembership", "RevokeMembership", "RevokeUserSessions"])
def test_admin_rpcs_are_callable_by_staff_only(rpc):
    assert {c for c in callers.MESH if may_call(c, _ADMIN + rpc)} == {"staff"}


def test_the_order_feed_is_callable_by_realtime_only():
    method = "/posmesh.orders.v1.OrderFeedService/WatchRestaurantOrders"
    assert {c for c in callers.MESH if may_call(c, method)} == {"realtime"}


def test_every_service_may_record_a_security_event():
    assert {c for c in callers.MESH if may_call(c, _ADMIN + "RecordSecurityEvent")} == EVERY_SERVICE


@pytest.mark.parametrize("method", [m for m, rule in permissions.PERMISSIONS.items()
                                    if m.startswith("/posmesh.") and rule.access is not Access.INTERNAL])
def test_every_public_rpc_is_callable_by_the_edge(method):
    assert may_call(EDGE, method)


def test_an_unidentified_or_unknown_caller_may_call_nothing():
    for method in callers.CALLERS:
        assert not may_call(None, method)
        assert not may_call("intruder", method)


def test_the_readme_prints_the_caller_table():
    readme = (ROOT / "README.md").read_text()
    assert "## Caller table" in readme, "README.md lost its '## Caller table' section"
    section = readme.split("## Caller table", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    assert table == callers.matrix_markdown()
