"""The fault suite shares the session `stack` with the e2e tests. Each fault test restores what it
broke in `finally`, and the suite runs after every other test (below), so a fault that leaves
something slow to settle cannot disturb a timing-sensitive e2e test."""

from __future__ import annotations

import asyncio
import signal

import pytest

from stack.supervisor import Stack
from tests.fault.ordering import fault_tests_last
from tests.support.orders import Party, add_menu_item, open_restaurant


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    fault_tests_last(items)


async def kill_service(stack: Stack, name: str) -> None:
    """SIGKILL a service process (no drain, no goodbye), without the stack treating it as a
    crash; `stack.start_service(name)` brings it back."""
    child = stack.children[name]
    child.stopping = True
    process = child.process
    if process is None or process.returncode is not None:
        return
    process.send_signal(signal.SIGKILL)
    await process.wait()
    if child._pump is not None:
        await child._pump


@pytest.fixture
async def party(edge) -> Party:
    return await open_restaurant(edge)


@pytest.fixture
async def dish(edge, party) -> dict:
    return await add_menu_item(edge, party.manager, price_minor=650, tax_rate_ppm=200_000)


async def eventually(check, *, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Polls the async `check()` until it returns a truthy value; returns that value."""
    deadline = asyncio.get_running_loop().time() + timeout
    last_error: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            value = await check()
            if value:
                return value
        except Exception as exc:  # still recovering
            last_error = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last error: {last_error!r})")
