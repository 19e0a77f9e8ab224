"""Shared by the bad-input suite: two restaurants with people, a dish and an order each, and a
check that no service logged an unhandled exception while a test ran."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

import pytest
import pytest_asyncio

from tests.fault.ordering import fault_tests_last
from tests.support.orders import Party, add_menu_item, line, open_restaurant, place_order


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    fault_tests_last(items)


@dataclass(frozen=True)
class FuzzWorld:
    a: Party
    b: Party
    a_dish: dict
    a_order: dict
    b_dish: dict
    b_order: dict


@pytest_asyncio.fixture(scope="session")
async def fuzz_world(edge) -> FuzzWorld:
    a, b = await open_restaurant(edge), await open_restaurant(edge, currency="JPY",
                                                               timezone="Asia/Tokyo")
    a_dish = await add_menu_item(edge, a.manager, price_minor=500)
    b_dish = await add_menu_item(edge, b.manager, price_minor=900, name="Secret Sashimi B")
    return FuzzWorld(a, b, a_dish, await place_order(edge, a.staff, [line(a_dish)]),
                     b_dish, await place_order(edge, b.staff, [line(b_dish)]))


def unhandled_lines(text: str) -> list[str]:
    """Log lines of an exception nobody handled: the interceptor's "unhandled error" (INTERNAL),
    or any record at error level or above."""
    found = []
    for raw in text.splitlines():
        try:
            record = json.loads(raw)
        except ValueError:
            if "Traceback (most recent call last)" in raw:
                found.append(raw)
            continue
        if not isinstance(record, dict):
            continue
        message = str(record.get("msg"))
        if record.get("logger") == "posmesh.security" and message.startswith("security event "):
            continue  # a critical security event is logged at error level on purpose
        if record.get("level") in ("error", "critical") or "unhandled error" in message:
            found.append(raw[:2000])
    return found


@pytest.fixture
def no_unhandled_errors(stack) -> Iterator[None]:
    """Fails the test if any service logged an unhandled exception while it ran."""
    offsets = {name: len(stack.service_log(name)) for name in stack.service_names}
    yield
    problems = {}
    for name in stack.service_names:
        lines = unhandled_lines(stack.service_log(name)[offsets[name]:])
        if lines:
            problems[name] = lines[:5]
    assert not problems, f"unhandled exceptions in the service logs: {json.dumps(problems, indent=1)}"


# Lines a test reports for the end of the run (the schemathesis summary), printed after the
# results so they can be quoted.
_REPORTED: list[str] = []


def report(lines: list[str]) -> None:
    _REPORTED.extend(lines)


def pytest_terminal_summary(terminalreporter) -> None:
    if _REPORTED:
        terminalreporter.section("API conformance")
        for line in _REPORTED:
            terminalreporter.write_line(line)
