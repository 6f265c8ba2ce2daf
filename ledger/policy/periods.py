"""Budget periods and rolling windows as counter buckets.

A calendar period is keyed by its start in UTC (a day by its midnight, an ISO week
by its Monday, a month by its first day), so budgets reset exactly at the calendar
boundary and never drift. A rolling window is a run of fixed-size buckets: the
window counts every bucket that overlaps (now - window, now], so its granularity
is one bucket (the largest of 1 min, 5 min, 15 min, 1 h, 6 h, 1 day that still
cuts the window into at least 24 buckets). Spend is never under-counted.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

SPEND_PERIODS = ("hour", "day", "week", "month", "total")
RATE_PERIODS = ("minute", "hour", "day")
_GRANULARITIES = (60, 300, 900, 3600, 21600, 86400)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_WINDOW = re.compile(r"^ *([0-9]{1,9}) *([smhdw]) *$")
MIN_WINDOW = 60
MAX_WINDOW = 366 * 86400


def period_start(period: str, now: datetime) -> datetime:
    now = now.astimezone(UTC)
    if period == "minute":
        return now.replace(second=0, microsecond=0)
    if period == "hour":
        return now.replace(minute=0, second=0, microsecond=0)
    if period == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return day - timedelta(days=day.weekday())
    if period == "month":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if period == "total":
        return datetime(1970, 1, 1, tzinfo=UTC)
    raise ValueError(f"unknown period {period!r}")


def parse_window(text: str) -> int:
    """`"24h"` → 86400. Raises ValueError with what is allowed."""
    match = _WINDOW.match(text or "")
    if not match:
        raise ValueError(f"window {text!r} is not a number and a unit (s, m, h, d, w), e.g. 30m, 24h, 7d")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not MIN_WINDOW <= seconds <= MAX_WINDOW:
        raise ValueError(f"window {text!r} must be between 1m and 366d")
    return seconds


def format_window(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def granularity(window_seconds: int) -> int:
    best = _GRANULARITIES[0]
    for g in _GRANULARITIES:
        if window_seconds // g >= 24:
            best = g
    return best


def _epoch(ts: datetime) -> int:
    return int(ts.timestamp())


def buckets(period: str | None, window_seconds: int | None, now: datetime) -> tuple[int, int]:
    """(bucket to count this request in, lowest bucket the check sums)."""
    if window_seconds:
        g = granularity(window_seconds)
        t = _epoch(now)
        current = t - t % g
        return current, t - window_seconds - g + 1
    start = _epoch(period_start(period or "total", now))
    return start, start
