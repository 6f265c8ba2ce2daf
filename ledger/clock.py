"""The one clock. Every timestamp pixelgov writes comes from here (or from a clock
passed in by a caller, as the tests do: they never sleep)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    """An ISO-8601 UTC timestamp with a Z, as every JSON shape carries it."""
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


#: The calendar pixelgov takes from users (`--since`, `--until`, report periods and months, the
#: APIs' time filters): 1970-01-01 to 9000-01-01 UTC (that instant itself as an exclusive end).
#: Far enough for any real ledger, and narrow enough that every period, previous period and window
#: computed from it is a date.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def within_calendar(ts: datetime) -> bool:
    """Whether an aware `ts` lies in [EARLIEST, LATEST]."""
    try:
        return EARLIEST <= ts <= LATEST
    except OverflowError:  # a zone offset at the calendar's edge
        return False
