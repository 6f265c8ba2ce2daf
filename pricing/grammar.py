"""The one grammar of numbers and sizes a user writes, for the CLI, the gateway, the price book and
the library alike: ASCII digits only, bounded length, explicit ranges.

Python reads far more as a number than a user means: `int("١٠")` is 10 (Arabic-Indic digits),
`"²".isdigit()` is true but `int("²")` fails, `Decimal("1e400")` is a number, and a 5,000-digit
string exceeds the int-conversion limit. Here nothing but `[0-9]` is a digit, every value has a
length bound before it is converted, and every refusal is an InvalidRequest naming the field, the
value and what is allowed. Money has its own pattern beside these (`pricing.money.USD_TEXT`).
"""

from __future__ import annotations

import re
from decimal import Decimal

from .errors import InvalidRequest

INTEGER = re.compile(r"-?[0-9]{1,30}")  #: bounded: never near the int-conversion limit
DECIMAL = re.compile(r"-?[0-9]{1,18}(\.[0-9]{1,18})?")
SIZE = re.compile(r"([0-9]{1,9})[xX]([0-9]{1,9})")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def parse_int(text: str, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer of ASCII digits (an optional `-`), within [minimum, maximum]."""
    if not isinstance(text, str) or not INTEGER.fullmatch(text):
        raise InvalidRequest(f"{field}: {_shown(str(text))} is not an integer of ASCII digits", field=field)
    value = int(text)
    _in_range(value, text, field, minimum, maximum)
    return value


def parse_decimal(text: str, field: str, *, minimum: Decimal | None = None, maximum: Decimal | None = None) -> Decimal:
    """A decimal of ASCII digits (`2.5`, `-1`, no exponent), within [minimum, maximum]."""
    if not isinstance(text, str) or not DECIMAL.fullmatch(text):
        raise InvalidRequest(
            f"{field}: {_shown(str(text))} is not a number of ASCII digits like 2.5 (no exponent)", field=field
        )
    value = Decimal(text)
    _in_range(value, text, field, minimum, maximum)
    return value


def parse_size(text: str, field: str) -> tuple[int, int]:
    """`WxH` of ASCII digits → (width, height); their range is the request schema's and the book's
    (a zero side is refused there, naming `width` or `height`)."""
    match = SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidRequest(
            f"{field}: {_shown(str(text))} is not WIDTHxHEIGHT of ASCII digits (e.g. 1280x720)", field=field
        )
    return int(match.group(1)), int(match.group(2))


def _in_range(
    value: int | Decimal, text: str, field: str, minimum: int | Decimal | None, maximum: int | Decimal | None
) -> None:
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            allowed = f"{minimum} to {maximum}"
        else:
            allowed = f"at least {minimum}" if minimum is not None else f"at most {maximum}"
        raise InvalidRequest(f"{field}: {text} is out of range (allowed: {allowed})", field=field)
