"""Admission control's rules (posmesh/common/admission.py), as pure logic."""

from __future__ import annotations

import pytest

from posmesh.common import permissions
from posmesh.common.admission import (
    DEADLINE_MARGIN_SECONDS,
    Admission,
    Priority,
    queued_seconds,
)
from posmesh.common.errors import ApiError


def refused(call) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


def test_reads_are_refused_first_while_other_calls_still_have_room():
    admission = Admission(max_in_flight=8, default_deadline_seconds=10)
    held = [admission.admit(Priority.SHEDDABLE) for _ in range(6)]  # 3/4 of the shared lane

    error = refused(lambda: admission.admit(Priority.SHEDDABLE))

    assert (error.reason, error.code.name) == ("OVERLOADED", "UNAVAILABLE")
    assert error.metadata["retry_after_seconds"] == "1"
    normal = [admission.admit(Priority.NORMAL) for _ in range(2)]
    assert refused(lambda: admission.admit(Priority.NORMAL)).reason == "OVERLOADED"
    for lane in held + normal:
        admission.release(lane)
    assert admission.shared.in_flight == 0 and admission.shared.refused == 2


def test_critical_calls_have_a_lane_of_their_own_that_a_read_storm_cannot_fill():
    admission = Admission(max_in_flight=4, default_deadline_seconds=10)
    for _ in range(3):
        admission.admit(Priority.SHEDDABLE)
    assert refused(lambda: admission.admit(Priority.SHEDDABLE)).reason == "OVERLOADED"

    critical = [admission.admit(Priority.CRITICAL) for _ in range(4)]

    assert refused(lambda: admission.admit(Priority.CRITICAL)).reason == "OVERLOADED"
    admission.release(critical[0])
    admission.admit(Priority.CRITICAL)


@pytest.mark.parametrize("priority, waited, admitted", [
    (Priority.SHEDDABLE, 0.05, True), (Priority.SHEDDABLE, 0.2, False),
    (Priority.NORMAL, 0.15, True), (Priority.NORMAL, 0.25, False),
    (Priority.CRITICAL, 0.45, True), (Priority.CRITICAL, 0.6, False),
])
def test_a_request_that_waited_too_long_to_be_useful_is_refused_before_any_work(
        priority, waited, admitted):
    admission = Admission(max_in_flight=8, default_deadline_seconds=10, max_queue_seconds=0.1)
    if admitted:
        admission.admit(priority, queued_seconds=waited)
    else:
        error = refused(lambda: admission.admit(priority, queued_seconds=waited))
        assert error.reason == "OVERLOADED" and "waited" in error.message
        assert admission._lane(priority).in_flight == 0


def test_the_budget_is_the_callers_deadline_less_a_margin_or_the_default():
    admission = Admission(max_in_flight=8, default_deadline_seconds=10)

    assert admission.budget(None) == 10
    assert admission.budget(2.0) == pytest.approx(2.0 - DEADLINE_MARGIN_SECONDS)
    late = refused(lambda: admission.budget(DEADLINE_MARGIN_SECONDS))
    assert (late.reason, late.code.name) == ("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED")


@pytest.mark.parametrize("stamp, expected", [
    ("t=1000.250", 0.75), ("1000.5", 0.5), (None, 0.0), ("", 0.0), ("t=soon", 0.0),
    ("t=1002", 0.0),  # the edge's clock ahead of ours: never negative
])
def test_the_edges_request_start_stamp_is_read_leniently(stamp, expected):
    assert queued_seconds(stamp, now=1001.0) == pytest.approx(expected)


def test_every_priority_list_names_rpcs_of_the_permission_table():
    for method in permissions.SHED_LAST | permissions.SHED_FIRST:
        assert method in permissions.PERMISSIONS, method
    assert permissions.rule_for("/posmesh.orders.v1.OrderService/CreateOrder").priority is \
        Priority.CRITICAL
    assert permissions.rule_for("/posmesh.orders.v1.OrderService/ListActiveOrders").priority is \
        Priority.SHEDDABLE
    assert permissions.rule_for("/grpc.health.v1.Health/Check").priority is None
