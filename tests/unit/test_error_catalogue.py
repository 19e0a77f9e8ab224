"""The error catalogue (protos/posmesh/api/v1/errors.proto) cannot drift from the code: every
reason a service or the edge answers with is in it, with the code (and HTTP status) it is really
sent with, and every RPC declares what it can fail with."""

from __future__ import annotations

import re
from functools import lru_cache

import pytest

from posmesh.common import permissions
from stack import codegen, contract, error_reasons
from stack.error_reasons import Catalogue
from tests.unit.reason_scan import ROOT, scan

TEMPLATE = ROOT / "envoy" / "envoy.yaml.j2"
# The modules whose errors every RPC can meet (the generator implies them from the access kind).
SHARED_MODULES = ("interceptors.py", "tokens.py", "authn.py", "context.py", "admission.py",
                  "database_errors.py")
# gRPC code numbers as the edge template writes them.
CODE_NUMBERS = {"UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
                "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
                "FAILED_PRECONDITION": 9, "ABORTED": 10, "INTERNAL": 13, "UNAVAILABLE": 14,
                "UNAUTHENTICATED": 16}


@lru_cache(maxsize=1)
def catalogue() -> Catalogue:
    return Catalogue(contract.load(codegen.DESCRIPTOR_SET))


@lru_cache(maxsize=1)
def raised_in_code():
    return scan([ROOT / "services", ROOT / "posmesh" / "common"])


def edge_replies() -> list[tuple[str, int, int | None]]:
    """(reason, gRPC code number, HTTP status or None) of every error body the edge template
    writes: `local_reply(http, code, "REASON", ...)` and `error_body(code, "REASON", ...)`."""
    text = TEMPLATE.read_text()
    replies = [(reason, int(code), int(status)) for status, code, reason in
               re.findall(r'local_reply\((\d+), (\d+), "([A-Z_]+)"', text)]
    replies += [(reason, int(code), None) for code, reason in
                re.findall(r'error_body\((\d+), "([A-Z_]+)"', text)]
    return replies


def test_the_scan_sees_every_reason_the_code_builds_an_error_from():
    raised, unseen = raised_in_code()

    assert len(raised) > 50
    assert unseen == [], "errors built from a reason the scan cannot read:\n" + "\n".join(unseen)


def test_every_reason_raised_in_the_code_is_catalogued_with_the_code_it_is_raised_with():
    reasons = catalogue().reasons
    raised, _ = raised_in_code()

    missing = sorted({f"{item.reason} ({item.where})" for item in raised if item.reason not in reasons})
    wrong = sorted(f"{item.reason}: raised as {item.code} at {item.where}, catalogued as "
                   f"{reasons[item.reason].code}"
                   for item in raised if item.reason in reasons and reasons[item.reason].code != item.code)
    assert missing == [], "add these to posmesh.api.v1.ErrorReason:\n" + "\n".join(missing)
    assert wrong == [], "\n".join(wrong)


def test_every_reason_the_edge_answers_with_is_catalogued_with_its_code_and_http_status():
    reasons = catalogue().reasons
    replies = edge_replies()

    assert {"TOKEN_EXPIRED", "PAYLOAD_TOO_LARGE", "SERVICE_UNAVAILABLE"} <= {r for r, _, _ in replies}
    for reason, code, status in replies:
        assert reason in reasons, f"the edge answers {reason}; add it to posmesh.api.v1.ErrorReason"
        assert CODE_NUMBERS[reasons[reason].code] == code, reason
        if status is not None:
            assert status in reasons[reason].http_statuses, (reason, status)


def test_what_the_generator_implies_for_every_rpc_covers_the_shared_interceptor():
    implied = {*error_reasons.EVERY_RPC, *error_reasons.TENANT_CHECKED,
               *error_reasons.ADMITTED_UNARY,
               *(name for names in error_reasons.BY_ACCESS.values() for name in names)}
    raised, _ = raised_in_code()
    shared = {item.reason for item in raised if item.where.startswith("posmesh/common/")
              and item.where.split(":")[0].endswith(SHARED_MODULES)}

    assert {"TOKEN_EXPIRED", "ROLE_FORBIDDEN", "DATABASE_UNAVAILABLE"} <= shared
    assert shared - implied == set()


def test_the_edge_reasons_the_generator_adds_are_catalogued():
    edge = {*error_reasons.EDGE_EVERY_ROUTE, *error_reasons.EDGE_UNARY,
            *error_reasons.EDGE_WITH_BODY, *error_reasons.EDGE_WITH_QUERY,
            *error_reasons.EDGE_WITH_PATH_PARAMETERS, *error_reasons.EDGE_PROTECTED}

    assert edge - set(catalogue().reasons) == set()


def test_every_catalogued_reason_is_answered_by_someone():
    raised, _ = raised_in_code()
    answered = ({item.reason for item in raised} | {reason for reason, _, _ in edge_replies()}
                | set(error_reasons.EDGE_WITH_BODY) | set(error_reasons.EDGE_WITH_QUERY))

    assert set(catalogue().reasons) - answered == set()


def _posmesh_rpcs() -> list[tuple[str, str]]:
    services = contract.load(codegen.DESCRIPTOR_SET).services
    return [(name, method.name) for name, service in services.items() if name.startswith("posmesh.")
            for method in service.proto.method]


@pytest.mark.parametrize("service, method", _posmesh_rpcs())
def test_every_rpc_declares_its_error_reasons_without_repeating_what_its_access_implies(
        service, method):
    from posmesh.api.v1 import errors_pb2

    found = contract.load(codegen.DESCRIPTOR_SET).services[service]
    (rpc,) = [item for item in found.proto.method if item.name == method]
    declared = {catalogue().reasons_by_number()[number]
                for number in rpc.options.Extensions[errors_pb2.method_errors].reasons}

    assert rpc.options.HasExtension(errors_pb2.method_errors), f"{service}.{method}"
    assert declared & set(error_reasons.implied_by_access(f"/{service}/{method}")) == set()
    assert permissions.rule_for(f"/{service}/{method}") is not None


def test_an_rpc_answers_with_its_own_its_services_and_its_access_kinds_reasons():
    create_order = {r.name for r in catalogue().rpc_reasons("posmesh.orders.v1.OrderService",
                                                            "CreateOrder")}
    login = {r.name for r in catalogue().rpc_reasons("posmesh.auth.v1.AuthService", "Login")}

    assert {"ITEM_UNAVAILABLE", "DATABASE_TIMEOUT", "ROLE_FORBIDDEN", "TENANT_MISMATCH",
            "TOKEN_EXPIRED", "INTERNAL"} <= create_order
    assert {"INVALID_CREDENTIALS", "RATE_LIMITED"} <= login
    assert not {"TOKEN_EXPIRED", "ROLE_FORBIDDEN"} & login


def test_reasons_carry_the_http_status_of_their_code_unless_the_edge_answers_otherwise():
    reasons = catalogue().reasons

    assert reasons["VERSION_CONFLICT"].http_statuses == (409,)
    assert reasons["ORDER_EMPTY"].http_statuses == (409,)  # FAILED_PRECONDITION, via the Lua fix
    assert reasons["PAYLOAD_TOO_LARGE"].http_statuses == (413,)
    assert reasons["SERVICE_UNAVAILABLE"].http_statuses == (502, 503)
    assert all(reason.description for reason in reasons.values())
