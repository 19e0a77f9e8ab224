"""Money in integer minor units (pence, cents). No floats and no Decimal: every amount is an int.

The one rounding rule (docs/orders.md):
- Prices are tax exclusive. A line's total is `unit_price_minor × quantity` (exact).
- A line's tax is `line_total_minor × tax_rate_ppm / 1,000,000`, rounded half up (away from zero
  at exactly .5) to a whole minor unit. Tax rates are in parts per million so that rates such as
  8.875 % (88,750 ppm) are exact.
- An order's tax is the sum of its lines' taxes; its total is subtotal + tax. So the receipt adds
  up line by line, and adding or removing a line never changes another line's tax.
"""

from __future__ import annotations

PPM = 1_000_000
MAX_TAX_RATE_PPM = PPM  # 100 %
MAX_UNIT_PRICE_MINOR = 1_000_000_000  # 10,000,000.00 in a two-decimal currency
MAX_QUANTITY = 999


def line_total_minor(unit_price_minor: int, quantity: int) -> int:
    _check_non_negative(unit_price_minor, "unit_price_minor")
    _check_non_negative(quantity, "quantity")
    return unit_price_minor * quantity


def tax_minor(amount_minor: int, tax_rate_ppm: int) -> int:
    """`amount × rate`, rounded half up to a minor unit, in integer arithmetic only."""
    _check_non_negative(amount_minor, "amount_minor")
    if not 0 <= tax_rate_ppm <= MAX_TAX_RATE_PPM:
        raise ValueError(f"tax_rate_ppm must be within 0..{MAX_TAX_RATE_PPM}, got {tax_rate_ppm}")
    # floor((a·r + PPM/2) / PPM) is round-half-up for non-negative a·r.
    return (amount_minor * tax_rate_ppm + PPM // 2) // PPM


def _check_non_negative(value: int, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int (minor units), got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")


def format_rate(tax_rate_ppm: int) -> str:
    """'8.875 %' for 88750: for messages and docs, never for arithmetic."""
    whole, fraction = divmod(tax_rate_ppm, PPM // 100)
    return f"{whole}.{fraction:04d}".rstrip("0").rstrip(".") + " %"
