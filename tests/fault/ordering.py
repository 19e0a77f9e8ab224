"""Suite order: the fuzz tests after the rest, the fault tests last (stable otherwise). Both
conftests install it, so the order holds whichever of the two directories a run collects."""

from __future__ import annotations

import pytest


def fault_tests_last(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("fault"):
            return 2
        if item.get_closest_marker("fuzz"):
            return 1
        return 0

    items[:] = sorted(items, key=rank)
