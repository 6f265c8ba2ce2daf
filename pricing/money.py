"""Money: exact decimal USD in Python, integer nano-USD in storage.

Never use floating point for money. Every amount enters through `D()` or
`parse_usd()` and leaves as a decimal string (`usd_str`) or a display price
(`display_price`).
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, ROUND_HALF_UP, Context, Decimal, InvalidOperation

ZERO = Decimal(0)
NANO_PER_USD = 1_000_000_000
#: The smallest amount the ledger can hold: one nano-USD.
NANO = Decimal("0.000000001")
#: The largest amount a ledger column (BIGINT nano-USD) holds.
MAX_USD = Decimal(2**63 - 1).scaleb(-9)
#: Display prices are rounded half-up to a tenth of a cent.
DISPLAY_STEP = Decimal("0.001")


def D(value: str | int | Decimal) -> Decimal:
    """A Decimal from a string, an int or a Decimal; floats are refused."""
    if isinstance(value, float):  # pragma: no cover - a programming error
        raise TypeError("money must not be a float")
    return value if isinstance(value, Decimal) else Decimal(value)


#: The one grammar of an amount a user writes: ASCII digits, at most 9 decimals, no exponent, no
#: spaces; an optional leading `$`, and a `-` where a negative amount is allowed (adjustments).
USD_TEXT = re.compile(r"\$?-?[0-9]{1,19}(\.[0-9]{1,19})?")


def parse_usd(text: str | int | Decimal, *, allow_zero: bool = True, allow_negative: bool = False) -> Decimal:
    """Parse a user-supplied USD amount; raise ValueError with a clear reason.

    Text must match `USD_TEXT` (`0.05`, `12`, `$5.5`, `-0.01` where negatives are allowed): other
    digits (`١`, `²`), exponents (`1e-3`), signs (`+1`), spaces and bare points (`1.`, `.5`) are
    refused, never read as a number. An `int` or a `Decimal` from code is taken as it is."""
    if isinstance(text, bool) or isinstance(text, float):
        raise ValueError("amounts must be decimal strings, not floats")
    if isinstance(text, str):
        if len(text) > 40 or not USD_TEXT.fullmatch(text):
            shown = text if len(text) <= 40 else text[:40] + "…"
            raise ValueError(f"{shown!r} is not a decimal amount: ASCII digits like 0.05 (no exponent, sign or space)")
        raw = text.removeprefix("$")
    else:
        raw = str(text)
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a decimal amount") from None
    if not amount.is_finite():
        raise ValueError(f"{text!r} is not a finite amount")
    if abs(amount) > MAX_USD:
        raise ValueError(f"{text!r} is above the largest amount the ledger holds ({MAX_USD})")
    if amount != amount.quantize(NANO, rounding=ROUND_HALF_UP):
        raise ValueError(f"{text!r} has more precision than one nano-USD (9 decimals)")
    if amount < 0 and not allow_negative:
        raise ValueError(f"{text!r} must not be negative")
    if amount == 0 and not allow_zero:
        raise ValueError(f"{text!r} must be greater than zero")
    return amount


def to_nano(amount: Decimal) -> int:
    """USD → integer nano-USD. Amounts finer than a nano-USD are rounded up, towards +∞ (an
    estimate is never stored below its exact value), exactly at any precision of the amount."""
    parts = amount.as_tuple()
    digits = len(parts.digits)
    if isinstance(parts.exponent, int) and parts.exponent >= -9 and digits <= 40:
        return int(amount.scaleb(9, context=_EXACT))  # whole nano-USD already (the hot path): exact
    exact = Context(prec=digits + 30)  # scaling by 10^9 and rounding must not lose a digit
    return int(amount.scaleb(9, context=exact).to_integral_value(rounding=ROUND_CEILING, context=exact))


#: Enough precision for any amount of at most 9 decimals the ledger can hold (19 digits + 9).
_EXACT = Context(prec=60)


def from_nano(nano: int) -> Decimal:
    """Integer nano-USD → USD."""
    return Decimal(nano).scaleb(-9)


def usd_str(amount: Decimal | None) -> str | None:
    """The canonical decimal string of an amount: no exponent, no trailing zeros ("0.01185")."""
    if amount is None:
        return None
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def display_price(amount: Decimal) -> str:
    """A display price: half-up to three decimals, e.g. "$0.012"."""
    exact = Context(prec=len(amount.as_tuple().digits) + 10)  # never short of digits for a huge amount
    return f"${amount.quantize(DISPLAY_STEP, rounding=ROUND_HALF_UP, context=exact)}"
