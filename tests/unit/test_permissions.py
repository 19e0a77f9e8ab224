"""The permission table is complete and is what the README prints."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import posmesh
from posmesh.common import permissions
from posmesh.common.permissions import Access

ROOT = Path(__file__).resolve().parents[2]


def _generated_services():
    """Every service of every generated posmesh.<svc>.v1 module."""
    # posmesh/<svc>/ are namespace packages (only the generated v1 folders are packages).
    package_root = Path(posmesh.__file__).parent
    for path in sorted(package_root.glob("*/v*/*_pb2.py")):
        name = ".".join(path.relative_to(package_root.parent).with_suffix("").parts)
        yield from importlib.import_module(name).DESCRIPTOR.services_by_name.values()


def _generated_rpcs() -> list[str]:
    return sorted(f"/{service.full_name}/{method.name}"
                  for service in _generated_services() for method in service.methods)


def test_the_generated_code_has_every_service():
    names = {service.full_name for service in _generated_services()}
    assert {"posmesh.auth.v1.AuthService", "posmesh.auth.v1.AuthAdminService",
            "posmesh.staff.v1.StaffService", "posmesh.orders.v1.OrderService"} <= names


@pytest.mark.parametrize("rpc", _generated_rpcs())
def test_every_rpc_of_every_service_has_a_row_in_the_permission_table(rpc):
    assert permissions.rule_for(rpc) is not None, f"{rpc} is missing from posmesh/common/permissions.py"


def test_every_row_names_an_rpc_that_exists():
    served = set(_generated_rpcs())
    stale = [rpc for rpc in permissions.PERMISSIONS
             if rpc.startswith("/posmesh.") and rpc not in served]
    assert stale == []


def test_restaurant_rules_name_known_roles_only():
    for rpc, rule in permissions.PERMISSIONS.items():
        if rule.access is Access.RESTAURANT:
            assert rule.roles and rule.roles <= permissions.EVERY_ROLE, rpc
        else:
            assert not rule.roles, rpc


def test_staff_rows_give_owners_everything_managers_staff_management_and_staff_reads():
    staff = "/posmesh.staff.v1.StaffService/"
    writes = ("CreateEmployee", "UpdateEmployee", "DeleteEmployee", "UndeleteEmployee")
    for rpc in writes:
        assert permissions.rule_for(staff + rpc).roles == permissions.MANAGERS
    for rpc in ("ListEmployees", "GetEmployee"):
        assert permissions.rule_for(staff + rpc).roles == permissions.EVERY_ROLE
    assert permissions.rule_for(staff + "UpdateRestaurant").roles == {permissions.OWNER}
    for rpc in ("CreateRestaurant", "ListRestaurants", "GetRestaurant"):
        assert permissions.rule_for(staff + rpc).access is Access.SIGNED_IN


def test_internal_rpcs_are_never_signed_in_or_public():
    for rpc in _generated_rpcs():
        if ".AuthAdminService/" in rpc or "OrderFeedService/" in rpc:
            assert permissions.rule_for(rpc).access is Access.INTERNAL, rpc


def test_the_matrix_has_one_line_per_posmesh_rpc():
    lines = permissions.matrix_markdown().splitlines()
    rows = [rpc for rpc in permissions.PERMISSIONS if rpc.startswith("/posmesh.")]
    assert len(lines) == 2 + len(rows)
    assert "| `staff.UpdateEmployee` | yes | yes | — |" in lines[2 + rows.index(
        "/posmesh.staff.v1.StaffService/UpdateEmployee")]


def _readme_matrix(readme: str) -> str | None:
    heading = "## Permission matrix"
    if heading not in readme:
        return None
    section = readme.split(heading, 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    return "\n".join(table)


def test_the_readme_prints_the_permission_table():
    matrix = _readme_matrix((ROOT / "README.md").read_text())
    assert matrix is not None, "README.md lost its '## Permission matrix' section"
    assert matrix == permissions.matrix_markdown()


def test_the_readme_prints_the_manager_override_actions():
    readme = (ROOT / "README.md").read_text()
    heading = "## Manager override"
    assert heading in readme, "README.md lost its '## Manager override' section"
    section = readme.split(heading, 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    assert table == permissions.overrides_markdown()


def test_device_tokens_may_call_only_what_their_type_is_listed_for():
    kitchen = {rpc for rpc, rule in permissions.PERMISSIONS.items()
               if permissions.KITCHEN_SCREEN in rule.devices}
    assert kitchen == {"/posmesh.orders.v1.MenuService/GetMenu",
                       "/posmesh.orders.v1.OrderService/ListActiveOrders",
                       "/posmesh.orders.v1.OrderService/GetOrder",
                       "/posmesh.orders.v1.OrderService/UpdateOrderStatus",
                       "/posmesh.orders.v1.OrderService/WatchOrders"}
    for rpc, rule in permissions.PERMISSIONS.items():
        if rule.access is Access.DEVICE:
            assert rule.devices == permissions.PIN_PADS, rpc
