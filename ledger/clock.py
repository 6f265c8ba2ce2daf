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
