"""What a report reads: the validated filter (`Filter`, `check_filter`), its SQL terms over the
ledger and the rollups, and the calendar of report periods (UTC days, ISO weeks, months).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, select
from sqlalchemy.sql import ColumnElement

from pricing import PriceBook
from pricing.errors import ModelNotFound

from ..clock import EARLIEST, LATEST, iso, within_calendar
from ..errors import InvalidRequest, NotFound
from ..records import TxStatus
from ..store.models import agents, spend_rollups, transactions
from ..validation import validate_agent_name
from .records import Window

PERIODS = ("day", "week", "month")


OPERATIONS = ("generate", "transform", "upscale")


MONTH = re.compile(r"^([0-9]{4})-([0-9]{2})$")


@dataclass(frozen=True, slots=True)
class Filter:
    """Which transactions a report (or a listing: `ledger.reports.history`) reads, validated by
    `check_filter`: each field None means any; `since` inclusive, `until` exclusive (aware UTC)."""

    since: datetime | None = None
    until: datetime | None = None
    agent_id: int | None = None
    model: str | None = None
    operation: str | None = None
    status: str | None = None
    shown: Mapping[str, str] = field(default_factory=dict)  #: as the user gave them (for the report)

    def window(self) -> Window:
        return Window(self.since, self.until)


def _utc(value: datetime | None, field_name: str) -> datetime | None:
    """`value` in UTC (naive: taken as UTC); InvalidRequest outside the calendar pixelgov takes
    (`ledger.clock.EARLIEST`–`LATEST`)."""
    if value is None:
        return None
    try:
        ts = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        ts = None
    if ts is None or not within_calendar(ts):
        raise InvalidRequest(
            f"{field_name}: {value.isoformat()} is outside the years {EARLIEST.year} to {LATEST.year - 1} (UTC)",
            field=field_name,
        ) from None
    return ts


def check_window(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    """`since`/`until` as aware UTC; InvalidRequest when until is not after since."""
    since, until = _utc(since, "since"), _utc(until, "until")
    if since is not None and until is not None and until <= since:
        raise InvalidRequest(f"until: {iso(until)} must be later than since ({iso(since)})", field="until")
    return since, until


def check_filter(
    conn: Connection,
    book: PriceBook,
    since: datetime | None,
    until: datetime | None,
    agent: str | None,
    model: str | None,
    operation: str | None,
    status: str | None,
) -> Filter:
    """The filter, validated: InvalidRequest (a malformed agent name, an unknown operation or
    status, until not after since, a date outside the calendar) or NotFound (an agent or a model
    the ledger does not know), each naming its field. A model given as an endpoint or alias is
    resolved to the price book's model."""
    since, until = check_window(since, until)
    shown: dict[str, str] = {}
    agent_id = None
    if agent is not None:
        validate_agent_name(agent)
        agent_id = conn.execute(select(agents.c.id).where(agents.c.name == agent)).scalar()
        if agent_id is None:
            raise NotFound(f"unknown agent {agent!r}", agent=agent, field="agent")
        shown["agent"] = agent
    if model is not None:
        model = canonical_model(conn, book, model)
        shown["model"] = model
    if operation is not None:
        if operation not in OPERATIONS:
            raise InvalidRequest(f"operation: {operation!r} is not one of {', '.join(OPERATIONS)}", field="operation")
        shown["operation"] = operation
    if status is not None:
        if status not in TxStatus.__members__:
            raise InvalidRequest(f"status: {status!r} is not one of {', '.join(TxStatus.__members__)}", field="status")
        shown["status"] = status
    return Filter(since, until, agent_id, model, operation, status, shown)


def canonical_model(conn: Connection, book: PriceBook, name: str) -> str:
    """The price book's name for a model (an alias or image-to-image path resolves to it), or a
    model the ledger has transactions for; NotFound otherwise."""
    try:
        return book.endpoint(name).model
    except ModelNotFound:
        pass
    if conn.execute(select(spend_rollups.c.day).where(spend_rollups.c.model == name).limit(1)).first():
        return name
    raise NotFound(
        f"unknown model {name!r}: not in the price book ({book.version}) and not in the ledger",
        model=name,
        field="model",
    )


def _dimension_terms(c: Any, f: Filter) -> list[ColumnElement[bool]]:
    """The agent, model, operation and status filters over a table's columns `c` (a table without
    a status column takes none)."""
    where: list[ColumnElement[bool]] = []
    if f.agent_id is not None:
        where.append(c.agent_id == f.agent_id)
    if f.model is not None:
        where.append(c.model == f.model)
    if f.operation is not None:
        where.append(c.operation == f.operation)
    if f.status is not None and "status" in c:
        where.append(c.status == f.status)
    return where


def transaction_terms(f: Filter) -> list[ColumnElement[bool]]:
    """The window and filters as SQL terms over the ledger's transactions."""
    t = transactions.c
    where = _dimension_terms(t, f)
    if f.since is not None:
        where.append(t.created_at >= f.since)
    if f.until is not None:
        where.append(t.created_at < f.until)
    return where


def rollup_terms(table: Any, f: Filter, days: Days) -> list[ColumnElement[bool]]:
    """Whole days and the filters as SQL terms over a rollup table."""
    r = table.c
    where = _dimension_terms(r, f)
    if days.first is not None:
        where.append(r.day >= days.first)
    if days.end is not None:
        where.append(r.day < days.end)
    return where


def bucket_start(period: str, day: date) -> date:
    """The first day of the day/week (Monday)/month containing `day`."""
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def next_bucket(period: str, start: date) -> date:
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def parse_month(text: str, field_name: str = "month") -> tuple[datetime, datetime]:
    """`YYYY-MM` → [first instant, first instant of the next month) in UTC."""
    match = MONTH.match(text.strip()) if isinstance(text, str) else None
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise InvalidRequest(f"{field_name}: {text!r} is not a month like 2026-11", field=field_name)
    if not EARLIEST.year <= int(match.group(1)) < LATEST.year:
        raise InvalidRequest(
            f"{field_name}: {text!r} is outside the years {EARLIEST.year} to {LATEST.year - 1}", field=field_name
        )
    first = date(int(match.group(1)), int(match.group(2)), 1)
    try:
        return midnight(first), midnight(next_bucket("month", first))
    except OverflowError:
        raise InvalidRequest(
            f"{field_name}: {text!r} is past the last month the calendar holds", field=field_name
        ) from None


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class Days(NamedTuple):
    """Whole UTC days of a window, `first` inclusive, `end` exclusive; None is unbounded."""

    first: date | None
    end: date | None


def split_days(f: Filter) -> tuple[Days | None, list[Filter]]:
    """A window as its whole UTC days (read from the rollups; None if it has none) and the partial
    days at its edges (read from the ledger: at most a day each)."""
    try:
        first = None if f.since is None else f.since.date()
        if f.since is not None and first is not None and f.since != midnight(first):
            first += timedelta(days=1)
        end = None if f.until is None else f.until.date()  # until is exclusive: its own day is partial
        if first is not None and end is not None and first >= end:
            return None, [f]
        edges = []
        if f.since is not None and first is not None and f.since != midnight(first):
            edges.append(replace(f, until=midnight(first)))
        if f.until is not None and end is not None and f.until != midnight(end):
            edges.append(replace(f, since=midnight(end)))
    except OverflowError:  # a window ending in the calendar's last day: read it from the ledger
        return None, [f]
    return Days(first, end), edges


def agent_names(conn: Connection) -> dict[int, str]:
    """Every agent's name by id."""
    return {row[0]: row[1] for row in conn.execute(select(agents.c.id, agents.c.name))}
