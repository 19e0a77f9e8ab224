"""Money arithmetic: integer minor units, tax per line rounded half up, rates in ppm."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from services.orders import money

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("amount", "rate_ppm", "expected"),
    [
        # 8.875 % (New York City sales tax): not expressible in basis points.
        (400, 88_750, 36),  # 35.5 exactly -> half up -> 36
        (1000, 88_750, 89),  # 88.75 -> 89
        (999, 88_750, 89),  # 88.66125 -> 89
        (56, 88_750, 5),  # 4.97 -> 5
        (5, 88_750, 0),  # 0.44375 -> 0
        # 12.5 %: exact halves round up, never to even.
        (4, 125_000, 1),  # 0.5 -> 1
        (12, 125_000, 2),  # 1.5 -> 2
        (20, 125_000, 3),  # 2.5 -> 3 (banker's rounding would give 2)
        (7, 125_000, 1),  # 0.875 -> 1
        # 0.01 %
        (4999, 100, 0),  # 0.4999 -> 0
        (5000, 100, 1),  # 0.5 -> 1
        (15000, 100, 2),  # 1.5 -> 2
        # 33.33 %
        (150, 333_300, 50),  # 49.995 -> 50
        (3, 333_300, 1),  # 0.9999 -> 1
        (1, 333_300, 0),  # 0.3333 -> 0
        # Edges.
        (0, 200_000, 0),
        (12345, 0, 0),
        (12345, 1_000_000, 12345),  # 100 %
        (999 * money.MAX_UNIT_PRICE_MINOR, 333_300, 332_966_700_000),  # no overflow, no float
    ],
)
def test_tax_is_rounded_half_up_to_a_minor_unit(amount: int, rate_ppm: int, expected: int) -> None:
    assert money.tax_minor(amount, rate_ppm) == expected


@given(amount=st.integers(0, 10**15), rate=st.integers(0, money.PPM))
def test_tax_equals_the_exact_product_rounded_half_up(amount: int, rate: int) -> None:
    exact = Fraction(amount * rate, money.PPM)
    # Round half up is floor(exact + 1/2): within half a unit, and exact halves go up.
    assert exact - Fraction(1, 2) < money.tax_minor(amount, rate) <= exact + Fraction(1, 2)


def test_line_total_is_exact_price_times_quantity() -> None:
    assert money.line_total_minor(333, 3) == 999
    assert money.line_total_minor(money.MAX_UNIT_PRICE_MINOR, money.MAX_QUANTITY) == 999_000_000_000


@pytest.mark.parametrize("bad", [1.5, "10", True, None])
def test_floats_and_other_non_integers_are_refused(bad) -> None:
    with pytest.raises(TypeError):
        money.tax_minor(bad, 1000)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        money.line_total_minor(bad, 1)  # type: ignore[arg-type]


def test_negative_amounts_and_out_of_range_rates_are_refused() -> None:
    with pytest.raises(ValueError):
        money.tax_minor(-1, 1000)
    with pytest.raises(ValueError):
        money.tax_minor(100, -1)
    with pytest.raises(ValueError):
        money.tax_minor(100, money.PPM + 1)
    with pytest.raises(ValueError):
        money.line_total_minor(100, -2)


@pytest.mark.parametrize(("ppm", "text"), [(88_750, "8.875 %"), (125_000, "12.5 %"), (100, "0.01 %"),
                                           (333_300, "33.33 %"), (200_000, "20 %"), (0, "0 %")])
def test_rates_format_for_people(ppm: int, text: str) -> None:
    assert money.format_rate(ppm) == text
