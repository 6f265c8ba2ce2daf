"""Finance reports: where the money went, estimated vs actual, by agent, model, operation and period.

`Reports(engine)` answers from the ledger's own tables, through `ledger.store.spend`, the one
definition of what each status counts as held and spent:

- the window's whole UTC days are read from `spend_rollups` / `denial_rollups`: the ledger's
  raw nano-USD sums per day, agent, endpoint, model, operation and status, which database
  triggers keep in the same transaction as every ledger write (migration 0004) — tens of
  thousands of rows for a million transactions; the partial days at the window's edges
  (`--since 2026-11-25T12:00`) are summed from the ledger's transactions themselves;
- Python folds those per-status sums with the per-status CASE of `spend.sql_held` /
  `sql_spent` (without adjustments, what a status counts is linear in its estimate and actual,
  since an actual is never negative, so a sum of counts is the count of the sums);
- adjustments carry their exact correction: the rollups sum, per group, what each
  transaction's adjustments change in its spend (a credit never takes a transaction below
  zero); on the edge days it is summed in SQL from `spend.sql_spent` with and without them.

The same fold serves every report, so `summary`, `spend`, `leaderboard`, `chart` and
`statement` reconcile to the nano-USD. Periods are UTC: `since` inclusive, `until` exclusive;
days start at midnight, weeks on Monday (ISO), months on the 1st.

Columns, as every report names them (money in USD, `Decimal`):
`transactions` authorized requests (every status but denied) · `denials` denied requests ·
`images` / `billable_mp` output images and billable megapixels of the transactions counted as
spent (completed, unknown), as priced · `estimated` estimates of the transactions that count
(held or spent) · `actual` actual costs of completed transactions · `adjustments` adjustment
lines, in full · `held` estimates still held (pending) · `unknown` estimates counted as spent
because the outcome is unknown · `net` what counts as spent (settled actuals with adjustments,
and unknown estimates) · `variance` actual minus estimate of the completed transactions.

`tests/test_rollups.py` checks the rollups against the ledger after random operations, and
the reports against a recount in Python, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import functools
import gc
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal
from operator import itemgetter
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, TextIO, TypeVar

from sqlalchemy import (
    BigInteger,
    Connection,
    Date,
    Engine,
    String,
    cast,
    func,
    literal,
    literal_column,
    select,
    true,
    type_coerce,
)
from sqlalchemy.sql import ColumnElement

from pricing import PriceBook, default_book
from pricing.errors import ModelNotFound
from pricing.money import NANO, ZERO, usd_str

from ..clock import Clock, iso, utcnow
from ..errors import InvalidRequest, NotFound
from ..records import TxStatus
from ..store.db import reading
from ..store.models import agents, cost_lines, denial_rollups, spend_rollups, spending_rules, transactions
from ..store.spend import COUNTS_REQUEST, HELD_AS, SPENT_AS, sql_held, sql_spent
from ..validation import validate_agent_name

if TYPE_CHECKING:
    from .focus import FocusExport

GROUP_KEYS = ("agent", "model", "operation")
PERIODS = ("day", "week", "month")
LEADERBOARDS = ("agent", "model", "rule")
OPERATIONS = ("generate", "transform", "upscale")
MAX_TOP = 1000
#: A chart of more points than this asks for a coarser period or a shorter window.
MAX_POINTS = 20_000
#: PostgreSQL settings for a report's (read-only) transaction: hash aggregates in memory; no JIT
#: compilation, which costs more than it saves on one scan; and index lookups priced as the cached
#: reads they are, so the few adjusted transactions are fetched by key, not by a scan of the ledger.
_PG_REPORT_SETTINGS = ("SET LOCAL work_mem = '64MB'", "SET LOCAL jit = off", "SET LOCAL random_page_cost = 1.1")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
#: Wide enough that nano-USD times 10^-9 is always exact (a BIGINT has at most 19 digits).
_EXACT = Context(prec=40)
_F = TypeVar("_F", bound=Callable[..., Any])


def _collector_paused(method: _F) -> _F:
    """Run a report with Python's cyclic garbage collector paused: a report builds tens of
    thousands of small acyclic records, and the collections they would trigger (each walking
    every live object) cost a report of 59,000 rows a third of its time. Resumed after, unless
    something else had paused it."""

    @functools.wraps(method)
    def paused(*args: Any, **kwargs: Any) -> Any:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return method(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return paused  # type: ignore[return-value]


def from_nano(nano: int) -> Decimal:
    """Integer nano-USD (or nano-MP) → USD: the same value as `pricing.money.from_nano`, built in a
    quarter of the time (reports convert hundreds of thousands of sums)."""
    return _EXACT.multiply(Decimal(nano), NANO)


def usd_text(nano: int) -> str:
    """`usd_str(from_nano(nano))` straight from the integer: "0.01185", "-2", "0"."""
    whole, frac = divmod(abs(nano), 1_000_000_000)
    text = f"{whole}.{frac:09d}".rstrip("0") if frac else str(whole)
    return "-" + text if nano < 0 else text


# --- records ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """A reporting window in UTC: `since` inclusive, `until` exclusive; None is unbounded."""

    since: datetime | None
    until: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {"since": iso(self.since), "until": iso(self.until)}


#: The columns of `Totals.to_json()`, in order.
TOTALS_COLUMNS = (
    "transactions",
    "denials",
    "images",
    "billable_mp",
    "estimated",
    "actual",
    "adjustments",
    "held",
    "unknown",
    "net",
    "variance",
)


class Totals(NamedTuple):
    """The money and counts of a set of transactions (see the module docstring for each column).

    Amounts are kept as the ledger keeps them, exact integers of nano-USD (`*_nano`; billable
    megapixels in nano-MP), and read as `Decimal` USD through the property of the same name
    without the suffix. Immutable (a NamedTuple: reports build tens of thousands of these)."""

    transactions: int = 0
    denials: int = 0
    images: int = 0
    billable_mp_nano: int = 0
    estimated_nano: int = 0
    actual_nano: int = 0
    adjustments_nano: int = 0
    held_nano: int = 0
    unknown_nano: int = 0
    net_nano: int = 0
    variance_nano: int = 0

    @property
    def billable_mp(self) -> Decimal:
        return from_nano(self.billable_mp_nano)

    @property
    def estimated(self) -> Decimal:
        return from_nano(self.estimated_nano)

    @property
    def actual(self) -> Decimal:
        return from_nano(self.actual_nano)

    @property
    def adjustments(self) -> Decimal:
        return from_nano(self.adjustments_nano)

    @property
    def held(self) -> Decimal:
        return from_nano(self.held_nano)

    @property
    def unknown(self) -> Decimal:
        return from_nano(self.unknown_nano)

    @property
    def net(self) -> Decimal:
        return from_nano(self.net_nano)

    @property
    def variance(self) -> Decimal:
        return from_nano(self.variance_nano)

    @property
    def settled(self) -> Decimal:
        """Spend of completed transactions (actuals with their adjustments)."""
        return from_nano(self.net_nano - self.unknown_nano)

    def to_json(self) -> dict[str, Any]:
        return {
            "transactions": self.transactions,
            "denials": self.denials,
            "images": self.images,
            "billable_mp": usd_text(self.billable_mp_nano),
            "estimated": usd_text(self.estimated_nano),
            "actual": usd_text(self.actual_nano),
            "adjustments": usd_text(self.adjustments_nano),
            "held": usd_text(self.held_nano),
            "unknown": usd_text(self.unknown_nano),
            "net": usd_text(self.net_nano),
            "variance": usd_text(self.variance_nano),
        }

    @classmethod
    def of(cls, acc: Sequence[int]) -> Totals:
        """From a fold accumulator (see `_accumulators`)."""
        return cls(
            acc[_TX],
            acc[_DENIED],
            acc[_IMAGES],
            acc[_MP],
            acc[_EST],
            acc[_ACTUAL],
            acc[_ADJ],
            acc[_HELD],
            acc[_UNKNOWN],
            acc[_NET],
            acc[_ACTUAL] - acc[_EST_SETTLED],
        )


class SpendRow(NamedTuple):
    """One group of `report spend`: its key values (agent, model, operation, day/week/month) and totals."""

    key: Mapping[str, str]
    totals: Totals

    def to_json(self) -> dict[str, Any]:
        return {**self.key, **self.totals.to_json()}


@dataclass(frozen=True, slots=True)
class SpendReport:
    """`report spend`: rows grouped by `by`, in key order, and their total."""

    by: tuple[str, ...]
    window: Window
    filters: Mapping[str, str]
    rows: tuple[SpendRow, ...]
    total: Totals

    @property
    def columns(self) -> list[str]:
        return [*self.by, *TOTALS_COLUMNS]

    def to_json(self) -> dict[str, Any]:
        return {
            "by": list(self.by),
            **self.window.to_json(),
            "filters": dict(self.filters),
            "rows": [r.to_json() for r in self.rows],
            "total": self.total.to_json(),
        }


@dataclass(frozen=True, slots=True)
class RuleDenials:
    """How many denied requests named a rule (a paused agent's denials: `rule` None)."""

    rule: str | None
    type: str
    denials: int

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "type": self.type, "denials": self.denials}


@dataclass(frozen=True, slots=True)
class Summary:
    """`report summary`: totals, counts by status, denials by rule, and the change against the
    previous period of the same length (None when the window is unbounded)."""

    window: Window
    totals: Totals
    by_status: Mapping[str, int]
    agents: int  #: agents with at least one request in the window
    denials_by_rule: tuple[RuleDenials, ...]
    previous_window: Window | None = None
    previous: Totals | None = None
    previous_agents: int | None = None

    @staticmethod
    def headline(totals: Totals, agents: int) -> dict[str, int | Decimal]:
        """The seed platform's four figures: transactions, spend (net), denials, active agents."""
        return {
            "total_transactions": totals.transactions,
            "total_spend": totals.net,
            "total_denials": totals.denials,
            "total_agents": agents,
        }

    def to_json(self) -> dict[str, Any]:
        t = self.totals
        now = self.headline(t, self.agents)
        doc: dict[str, Any] = {
            **self.window.to_json(),
            **{k: _json(v) for k, v in now.items()},
            "requests": t.transactions + t.denials,
            "settled_spend": usd_str(t.settled),
            "held_spend": usd_str(t.held),
            "unknown_spend": usd_str(t.unknown),
            "estimated": usd_str(t.estimated),
            "actual": usd_str(t.actual),
            "adjustments": usd_str(t.adjustments),
            "variance": usd_str(t.variance),
            "images": t.images,
            "billable_megapixels": usd_str(t.billable_mp),
            "transactions_by_status": dict(self.by_status),
            "denials_by_rule": [d.to_json() for d in self.denials_by_rule],
            "previous": None,
            "change": None,
        }
        if self.previous is not None and self.previous_window is not None:
            before = self.headline(self.previous, self.previous_agents or 0)
            doc["previous"] = {**self.previous_window.to_json(), **{k: _json(v) for k, v in before.items()}}
            doc["change"] = {k: _change(now[k], before[k]) for k in before}
        return doc


@dataclass(frozen=True, slots=True)
class LeaderboardEntry:
    """One agent, model or rule: its spend, transactions and denials (`type` for rules).

    For a rule, `transactions` and `spend` are those of the requests in its scope (agent, model
    glob, operation); they are None for a rule that no longer exists."""

    name: str | None
    transactions: int | None
    spend: Decimal | None
    denials: int
    type: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "transactions": self.transactions,
            "spend": usd_str(self.spend),
            "denials": self.denials,
        }
        if self.type is not None:
            doc["type"] = self.type
        return doc


@dataclass(frozen=True, slots=True)
class Leaderboard:
    """`report leaderboard`: the top entries (agents and models by spend, rules by denials)."""

    by: str
    window: Window
    top: int
    entries: tuple[LeaderboardEntry, ...]

    @property
    def columns(self) -> list[str]:
        return ["rank", "name", *(["type"] if self.by == "rule" else []), "transactions", "spend", "denials"]

    def rows(self) -> list[dict[str, Any]]:
        return [{"rank": i, **e.to_json()} for i, e in enumerate(self.entries, 1)]

    def to_json(self) -> dict[str, Any]:
        return {
            "by": self.by,
            **self.window.to_json(),
            "top": self.top,
            f"top_{self.by}s": [e.to_json() for e in self.entries],
        }


@dataclass(frozen=True, slots=True)
class ChartPoint:
    """One bar of `report chart`: the period's start, requests authorized, spend (net) and denials."""

    date: date
    usage: int
    spend: Decimal
    denials: int

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.date.isoformat(),
            "usage": self.usage,
            "spend": usd_str(self.spend),
            "denials": self.denials,
        }


@dataclass(frozen=True, slots=True)
class Chart:
    """`report chart`: one point per day, week (starting Monday) or month, gaps filled with zeros."""

    by: str
    window: Window
    points: tuple[ChartPoint, ...]

    def to_json(self) -> dict[str, Any]:
        return {"by": self.by, **self.window.to_json(), "points": [p.to_json() for p in self.points]}


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One model (and operation) on an agent's statement."""

    model: str
    operation: str
    totals: Totals

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "operation": self.operation, **self.totals.to_json()}


@dataclass(frozen=True, slots=True)
class StatementAdjustment:
    """An adjustment line on a transaction of the statement's month, with its note."""

    transaction_id: int
    model: str
    amount: Decimal
    note: str | None
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "model": self.model,
            "amount": usd_str(self.amount),
            "note": self.note,
            "created_at": iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class AgentStatement:
    """One agent's month: per-model lines, the adjustments with their notes, and the total."""

    agent: str
    lines: tuple[StatementLine, ...]
    adjustments: tuple[StatementAdjustment, ...]
    total: Totals

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "lines": [line.to_json() for line in self.lines],
            "adjustments": [a.to_json() for a in self.adjustments],
            "total": self.total.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Statement:
    """`report statement`: a month-end statement per agent; totals reconcile with `spend` for the month.

    Transactions belong to the month they were created in, and so do their adjustments
    (whenever those were recorded)."""

    month: str
    window: Window
    agents: tuple[AgentStatement, ...]
    total: Totals

    def to_json(self) -> dict[str, Any]:
        return {
            "month": self.month,
            **self.window.to_json(),
            "agents": [a.to_json() for a in self.agents],
            "total": self.total.to_json(),
        }


def _json(value: Any) -> Any:
    return usd_str(value) if isinstance(value, Decimal) else value


def percent_change(now: int | Decimal, before: int | Decimal) -> Decimal | None:
    """The change from `before` to `now` in percent, to one decimal (half-up); None when `before` is zero."""
    if not before:
        return None
    return (Decimal(now - before) * 100 / Decimal(before)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def _change(now: int | Decimal, before: int | Decimal) -> dict[str, Any]:
    """The change from `before` to `now`: the difference, and the percentage (a decimal string)."""
    percent = percent_change(now, before)
    return {"delta": _json(now - before), "percent": None if percent is None else usd_str(percent)}


# --- the fold --------------------------------------------------------------------------------
#
# A report's sums arrive as a list of integers per key (nano-USD, nano-MP, counts), in this order.

_TX, _DENIED, _IMAGES, _MP, _EST, _ACTUAL, _EST_SETTLED, _HELD, _UNKNOWN, _NET, _ADJ = range(11)
_WIDTH = 11

#: Status sets, read from `ledger.store.spend`'s tables (never listed by hand here).
_REQUESTS = tuple(s.value for s in TxStatus if s in COUNTS_REQUEST)
_DENIALS = tuple(s.value for s in TxStatus if s not in COUNTS_REQUEST)
_SPENT = tuple(s.value for s in TxStatus if SPENT_AS[s] is not None)
_SETTLED = tuple(s.value for s in TxStatus if SPENT_AS[s] == "settled")
_ON_ESTIMATE = tuple(s.value for s in TxStatus if SPENT_AS[s] == "estimate")
_COUNTED = tuple(s.value for s in TxStatus if SPENT_AS[s] is not None or HELD_AS[s] is not None)


def _accumulators(status: Any, n: Any, est: Any, act: Any, images: Any, mp: Any) -> list[Any]:
    """The SQL sums of a fold accumulator, over rows already summed per status (an inner query).

    Held and spent come from `spend.sql_held` / `sql_spent` applied to those per-status sums:
    without adjustments what a status counts is linear in its estimate and actual (an actual is
    never negative, so the floor at zero never applies), so the count of the sums is the sum of
    the counts. Adjustments are added per transaction by `_fold_adjustments`."""

    def total(value: Any) -> Any:
        # BIGINT: PostgreSQL would return NUMERIC (a Decimal per value to decode); a window would
        # need more than 9.2 billion USD to overflow it.
        return cast(func.coalesce(func.sum(value), 0), BigInteger)

    def when(statuses: tuple[str, ...], value: Any) -> Any:
        # An aggregate FILTER, not a CASE inside the sum: PostgreSQL skips the rows instead of
        # adding zeros (a 59,000-group report's aggregate runs in a third of the time).
        return cast(func.coalesce(func.sum(value).filter(status.in_(statuses)), 0), BigInteger)

    return [
        when(_REQUESTS, n),
        when(_DENIALS, n),
        when(_SPENT, images),
        when(_SPENT, mp),
        when(_COUNTED, est),
        when(_SETTLED, act),
        when(_SETTLED, est),
        total(sql_held(status, est, act, None)),
        when(_ON_ESTIMATE, est),
        total(sql_spent(status, est, act, None)),
    ]


def _merge(into: list[int], other: Sequence[int]) -> None:
    for i in range(_WIDTH):
        into[i] += other[i]


def _column_sums(accs: Iterable[Sequence[int]]) -> list[int]:
    sums = [sum(column) for column in zip(*accs, strict=True)]
    return sums or [0] * _WIDTH


# --- filters and periods ---------------------------------------------------------------------


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
    """`value` in UTC (naive: taken as UTC); InvalidRequest if that falls outside the calendar."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise InvalidRequest(
            f"{field_name}: {value.isoformat()} is outside the years 1 to 9999 in UTC", field=field_name
        ) from None


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


def rollup_terms(table: Any, f: Filter, days: _Days) -> list[ColumnElement[bool]]:
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
    match = _MONTH.match(text.strip()) if isinstance(text, str) else None
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1:
        raise InvalidRequest(f"{field_name}: {text!r} is not a month like 2026-11", field=field_name)
    first = date(int(match.group(1)), int(match.group(2)), 1)
    try:
        return _midnight(first), _midnight(next_bucket("month", first))
    except OverflowError:
        raise InvalidRequest(
            f"{field_name}: {text!r} is past the last month the calendar holds", field=field_name
        ) from None


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class _Days(NamedTuple):
    """Whole UTC days of a window, `first` inclusive, `end` exclusive; None is unbounded."""

    first: date | None
    end: date | None


def _split_days(f: Filter) -> tuple[_Days | None, list[Filter]]:
    """A window as its whole UTC days (read from the rollups; None if it has none) and the partial
    days at its edges (read from the ledger: at most a day each)."""
    try:
        first = None if f.since is None else f.since.date()
        if f.since is not None and first is not None and f.since != _midnight(first):
            first += timedelta(days=1)
        end = None if f.until is None else f.until.date()  # until is exclusive: its own day is partial
        if first is not None and end is not None and first >= end:
            return None, [f]
        edges = []
        if f.since is not None and first is not None and f.since != _midnight(first):
            edges.append(replace(f, until=_midnight(first)))
        if f.until is not None and end is not None and f.until != _midnight(end):
            edges.append(replace(f, since=_midnight(end)))
    except OverflowError:  # a window ending in the calendar's last day: read it from the ledger
        return None, [f]
    return _Days(first, end), edges


class _Scope(NamedTuple):
    """What `Rule.applies_to` reads of a request: its endpoint, model and operation."""

    endpoint: str
    model: str
    operation: str


# --- the reports -----------------------------------------------------------------------------


class Reports:
    """Finance reports over one ledger database. Every method reads in one read-only transaction.

    `clock` decides "now" (for `summary(period=...)` and an open-ended previous period); `book`
    is the price book that names models (default: the shipped one)."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow, book: PriceBook | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.book = book or default_book()
        self._sqlite = engine.dialect.name == "sqlite"

    # --- public reports ---------------------------------------------------------------------

    @_collector_paused
    def spend(
        self,
        by: Sequence[str] = ("agent",),
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        agent: str | None = None,
        model: str | None = None,
        operation: str | None = None,
        status: str | None = None,
    ) -> SpendReport:
        """Spend grouped by any of agent, model, operation and at most one of day, week, month."""
        by, keys, period = _parse_by(by)
        with self._read() as conn:
            f = check_filter(conn, self.book, since, until, agent, model, operation, status)
            groups = self._fold(conn, f, keys, period)
            names = self._agent_names(conn) if "agent" in keys else {}
        order = [*keys] + ([period] if period else [])
        at = [order.index(k) for k in by]
        agent_at = order.index("agent") if "agent" in keys else None
        month_at = len(order) - 1 if period == "month" else None
        agent_label: dict[Any, str] = {}
        labelled = []
        for key, acc in groups.items():
            shown = []
            for i in at:
                value = key[i]
                if i == agent_at:
                    label = agent_label.get(value)
                    if label is None:
                        label = agent_label[value] = names.get(value, str(value))
                    value = label
                elif i == month_at:
                    value = value[:7]  # 2026-11-01 → 2026-11
                shown.append(value)
            labelled.append((tuple(shown), acc))
        labelled.sort(key=itemgetter(0))
        of = Totals.of
        rows = tuple(SpendRow(dict(zip(by, shown)), of(acc)) for shown, acc in labelled)
        return SpendReport(tuple(by), f.window(), f.shown, rows, Totals.of(_column_sums(groups.values())))

    @_collector_paused
    def summary(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        period: str | None = None,
        agent: str | None = None,
        model: str | None = None,
    ) -> Summary:
        """Totals, counts by status and denials by rule, against the previous period of the same length.

        `period` is day, week or month (the current one, by the clock) or a month `YYYY-MM`; its
        previous period is the calendar period before it. With `since` and `until` the previous
        period is the same length just before `since` (`until` defaults to now when `since` is given)."""
        since, until, previous = self._summary_windows(since, until, period)
        with self._read() as conn:
            f = check_filter(conn, self.book, since, until, agent, model, None, None)
            current = self._fold(conn, f, ("agent", "status"), None)
            denials = self._denials_by_rule(conn, f)
            before = None
            if previous is not None:
                pf = Filter(previous.since, previous.until, f.agent_id, f.model)
                before = self._fold(conn, pf, ("agent", "status"), None)
        totals, by_status, active = _status_totals(current)
        summary = Summary(f.window(), totals, by_status, active, denials)
        if before is not None:
            prev_totals, _, prev_active = _status_totals(before)
            summary = Summary(f.window(), totals, by_status, active, denials, previous, prev_totals, prev_active)
        return summary

    @_collector_paused
    def leaderboard(
        self, by: str = "agent", *, top: int = 10, since: datetime | None = None, until: datetime | None = None
    ) -> Leaderboard:
        """The top `top` agents or models by spend, or rules by denials."""
        if by not in LEADERBOARDS:
            raise InvalidRequest(f"by: {by!r} is not one of {', '.join(LEADERBOARDS)}", field="by")
        if not 1 <= top <= MAX_TOP:
            raise InvalidRequest(f"top: must be between 1 and {MAX_TOP} (got {top})", field="top")
        with self._read() as conn:
            f = check_filter(conn, self.book, since, until, None, None, None, None)
            if by == "rule":
                entries = self._rule_entries(conn, f)
            else:
                groups = self._fold(conn, f, (by,), None)
                names = self._agent_names(conn) if by == "agent" else {}
                entries = [
                    LeaderboardEntry(
                        names.get(k[0], str(k[0])) if by == "agent" else k[0],
                        acc[_TX],
                        from_nano(acc[_NET]),
                        acc[_DENIED],
                    )
                    for k, acc in groups.items()
                ]
                entries.sort(key=lambda e: (-(e.spend or ZERO), -(e.transactions or 0), -e.denials, e.name or ""))
        return Leaderboard(by, f.window(), top, tuple(entries[:top]))

    @_collector_paused
    def chart(
        self,
        by: str = "day",
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        agent: str | None = None,
        model: str | None = None,
    ) -> Chart:
        """Requests, spend and denials per day, week or month, every period of the window present."""
        if by not in PERIODS:
            raise InvalidRequest(f"by: {by!r} is not one of {', '.join(PERIODS)}", field="by")
        with self._read() as conn:
            f = check_filter(conn, self.book, since, until, agent, model, None, None)
            groups = {date.fromisoformat(k[0]): acc for k, acc in self._fold(conn, f, (), by).items()}
        points: list[ChartPoint] = []
        if groups or (f.since and f.until):
            first = bucket_start(by, f.since.date()) if f.since else min(groups)
            last = bucket_start(by, (f.until - timedelta(microseconds=1)).date()) if f.until else max(groups)
            day = first
            while day <= last:
                if len(points) >= MAX_POINTS:
                    raise InvalidRequest(
                        f"by: more than {MAX_POINTS} {by}s in the window; choose a coarser period or a shorter window",
                        field="by",
                    )
                acc = groups.get(day)
                points.append(
                    ChartPoint(day, acc[_TX], from_nano(acc[_NET]), acc[_DENIED])
                    if acc
                    else ChartPoint(day, 0, ZERO, 0)
                )
                try:
                    day = next_bucket(by, day)
                except OverflowError:  # the last period of year 9999
                    break
        return Chart(by, f.window(), tuple(points))

    @_collector_paused
    def statement(self, month: str, *, agent: str | None = None) -> Statement:
        """The month-end statement (`YYYY-MM`) of every agent with transactions that month, or of one."""
        since, until = parse_month(month)
        with self._read() as conn:
            f = check_filter(conn, self.book, since, until, agent, None, None, None)
            groups = self._fold(conn, f, ("agent", "model", "operation"), None)
            adjustments = self._adjustment_lines(conn, f)
            names = self._agent_names(conn)
        by_agent: dict[int, list[StatementLine]] = {}
        totals: dict[int, list[int]] = {}
        grand = [0] * _WIDTH
        for (agent_id, model_name, op), acc in groups.items():
            by_agent.setdefault(agent_id, []).append(StatementLine(model_name, op, Totals.of(acc)))
            _merge(totals.setdefault(agent_id, [0] * _WIDTH), acc)
            _merge(grand, acc)
        statements = []
        for agent_id in sorted(by_agent, key=lambda a: names.get(a, "")):
            lines = tuple(sorted(by_agent[agent_id], key=lambda line: (line.model, line.operation)))
            statements.append(
                AgentStatement(
                    names.get(agent_id, str(agent_id)),
                    lines,
                    tuple(adjustments.get(agent_id, ())),
                    Totals.of(totals[agent_id]),
                )
            )
        return Statement(month.strip(), f.window(), tuple(statements), Totals.of(grand))

    def export_focus(
        self, out: str | os.PathLike[str] | TextIO, *, since: datetime | None = None, until: datetime | None = None
    ) -> FocusExport:
        """The ledger as a FOCUS 1.0 CSV (see `ledger.reports.focus`), for transactions created in the window.

        `out` is a path (written whole or not at all; checked before anything is read) or a text stream."""
        from .focus import write_focus

        since, until = check_window(since, until)
        if isinstance(out, str | os.PathLike):
            path = check_writable(out, "path")
            with self._read() as conn, atomic_output(path, "path") as stream:
                return write_focus(conn, cast_text(stream), since=since, until=until, book=self.book, path=str(path))
        with self._read() as conn:
            return write_focus(conn, out, since=since, until=until, book=self.book)

    def _summary_windows(
        self, since: datetime | None, until: datetime | None, period: str | None
    ) -> tuple[datetime | None, datetime | None, Window | None]:
        if period is not None:
            if since is not None or until is not None:
                raise InvalidRequest("period: give a period, or since/until, not both", field="period")
            if period in PERIODS:
                start = bucket_start(period, self.clock().astimezone(UTC).date())
                before = {
                    "day": start - timedelta(days=1),
                    "week": start - timedelta(days=7),
                    "month": (start - timedelta(days=1)).replace(day=1),
                }[period]
                return (
                    _midnight(start),
                    _midnight(next_bucket(period, start)),
                    Window(_midnight(before), _midnight(start)),
                )
            if not _MONTH.match(period.strip()):
                raise InvalidRequest(
                    f"period: {period!r} is not day, week, month or a month like 2026-11", field="period"
                )
            first, after = parse_month(period, "period")
            before = (first - timedelta(days=1)).replace(day=1)
            return first, after, Window(before, first)
        since, until = check_window(since, until)
        if since is not None and until is None:
            with suppress(OverflowError):  # since at the very end of year 9999: no end, no previous period
                until = max(self.clock().astimezone(UTC), since + timedelta(microseconds=1))
        previous = None
        if since is not None and until is not None:
            with suppress(OverflowError):  # a window reaching back to year 1 has no previous period
                previous = Window(since - (until - since), since)
        return since, until, previous

    # --- queries ------------------------------------------------------------------------------

    def _read(self) -> Any:
        return _ReportTransaction(self)

    def _fold(
        self, conn: Connection, f: Filter, keys: Sequence[str], period: str | None
    ) -> dict[tuple[Any, ...], list[int]]:
        """A fold accumulator per key: the `keys` values (agent id, model, operation, endpoint, status),
        then the first day of the `period` (ISO text) if one is given. The window's whole UTC days
        come from the rollups, the partial days at its edges from the ledger itself."""
        out: dict[tuple[Any, ...], list[int]] = {}
        days, edges = _split_days(f)
        if days is not None:
            self._fold_rollups(conn, f, days, keys, period, out)
        for edge in edges:
            self._fold_ledger(conn, edge, keys, period, out)
        return out

    def _period_of(self, day: Any, created_at: Any, period: str) -> Any:
        return _sqlite_bucket(day, period) if self._sqlite else _pg_bucket(created_at, period)

    def _fold_rollups(
        self,
        conn: Connection,
        f: Filter,
        days: _Days,
        keys: Sequence[str],
        period: str | None,
        out: dict[tuple[Any, ...], list[int]],
    ) -> None:
        r = spend_rollups.c
        columns = {"agent": r.agent_id, "model": r.model, "operation": r.operation, "endpoint": r.endpoint}
        group = [r.status if k == "status" else columns[k] for k in keys]
        if period is not None:
            group.append(self._period_of(r.day, r.day, period))
        sums = _accumulators(r.status, r.tx_count, _nano(r.estimated), _nano(r.actual), r.images, r.billable_mp_nano)
        query = (
            select(*group, *sums, _int_sum(r.adjustments), _int_sum(r.adjusted_net))
            .where(r.tx_count > 0, *rollup_terms(spend_rollups, f, days))
            .group_by(*group)
        )
        width = len(group)
        key_of = _key_function(width, period)
        sums_end = width + _WIDTH  # the fold's sums, then the adjustments, then their net correction
        for row in conn.execute(query):
            values = list(row[width:sums_end])  # integers already (BIGINT sums)
            values[_NET] += row[sums_end]
            key = key_of(row)
            acc = out.get(key)
            if acc is None:
                out[key] = values
            else:
                _merge(acc, values)

    def _ledger_group(self, keys: Sequence[str], period: str | None) -> list[Any]:
        t = transactions.c
        columns = {
            "agent": t.agent_id,
            "model": t.model,
            "operation": t.operation,
            "endpoint": t.endpoint,
            "status": type_coerce(t.status, String),  # the stored text: no enum conversion per row
        }
        group = [columns[k] for k in keys]
        if period is not None:
            day = func.substr(t.created_at, literal_column("1"), literal_column("10"))
            group.append(self._period_of(day, t.created_at, period))
        return group

    def _fold_ledger(
        self,
        conn: Connection,
        f: Filter,
        keys: Sequence[str],
        period: str | None,
        out: dict[tuple[Any, ...], list[int]],
    ) -> None:
        """Add the ledger's transactions in `f`'s window (a partial day), as the rollups would."""
        t = transactions.c
        group = self._ledger_group(keys, period)
        status = type_coerce(t.status, String)
        sums = _accumulators(
            status, literal(1, BigInteger), _nano(t.estimated_cost), _nano(t.actual_cost), t.images, t.billable_mp_nano
        )
        width = len(group)
        key_of = _key_function(width, period)
        for row in conn.execute(select(*group, *sums).where(*transaction_terms(f)).group_by(*group)):
            acc = out.setdefault(key_of(row), [0] * _WIDTH)
            for i in range(_WIDTH - 1):
                acc[i] += int(row[width + i])
        self._fold_adjustments(conn, f, keys, period, out)

    def _fold_adjustments(
        self,
        conn: Connection,
        f: Filter,
        keys: Sequence[str],
        period: str | None,
        out: dict[tuple[Any, ...], list[int]],
    ) -> None:
        """Add the adjustment lines, and what they change in the spend of their transactions
        (`spend.sql_spent` with and without them: a credit never takes a transaction below zero)."""
        t = transactions.c
        adj = (
            select(cost_lines.c.transaction_id, func.sum(_nano(cost_lines.c.amount)).label("amount"))
            .where(cost_lines.c.kind == "adjustment")
            .group_by(cost_lines.c.transaction_id)
            .subquery()
        )
        group = self._ledger_group(keys, period)
        with_adj = sql_spent(t.status, t.estimated_cost, t.actual_cost, adj.c.amount)
        without = sql_spent(t.status, t.estimated_cost, t.actual_cost, None)
        query = (
            select(*group, func.sum(adj.c.amount), func.sum(with_adj - without))
            .select_from(adj.join(transactions, t.id == adj.c.transaction_id))
            .where(*transaction_terms(f))
            .group_by(*group)
        )
        width = len(group)
        key_of = _key_function(width, period)
        for row in conn.execute(query):
            acc = out.setdefault(key_of(row), [0] * _WIDTH)  # (always there already: its transaction is)
            acc[_ADJ] += int(row[width] or 0)
            acc[_NET] += int(row[width + 1] or 0)

    def _agent_names(self, conn: Connection) -> dict[int, str]:
        return agent_names(conn)

    def _denials_by_rule(self, conn: Connection, f: Filter) -> tuple[RuleDenials, ...]:
        """Denied requests per rule they name (a denial naming two rules counts for both): the
        whole days from `denial_rollups`, the partial days at the window's edges from the ledger."""
        f = Filter(f.since, f.until, f.agent_id, f.model, f.operation)
        counts: dict[tuple[str | None, str], int] = {}
        days, edges = _split_days(f)
        if days is not None:
            d = denial_rollups.c
            query = (
                select(d.rule, d.rule_type, func.sum(d.denials))
                .where(*rollup_terms(denial_rollups, f, days))
                .group_by(d.rule, d.rule_type)
            )
            for rule, kind, n in conn.execute(query):
                key = (rule or None, kind or "")  # a denial naming no rule (a paused agent) is stored as ""
                counts[key] = counts.get(key, 0) + int(n)
        for edge in edges:
            for rule, kind, n in conn.execute(self._ledger_denials(edge)):
                key = (rule, kind or "")
                counts[key] = counts.get(key, 0) + int(n)
        found = [RuleDenials(rule, kind, n) for (rule, kind), n in counts.items() if n]
        found.sort(key=lambda d: (-d.denials, d.rule or ""))
        return tuple(found)

    def _ledger_denials(self, f: Filter) -> Any:
        """(rule, type, count) of the denied transactions in `f`'s window, from their denial JSON."""
        t = transactions.c
        each: Any
        if self._sqlite:
            each = func.json_each(t.denial_json, "$.denials").table_valued("value")
            rule = func.json_extract(each.c.value, "$.rule")
            kind = func.json_extract(each.c.value, "$.type")
        else:
            from sqlalchemy.dialects.postgresql import JSONB

            each = func.jsonb_array_elements(cast(t.denial_json, JSONB)["denials"]).table_valued("value").lateral()
            rule = func.jsonb_extract_path_text(each.c.value, "rule")
            kind = func.jsonb_extract_path_text(each.c.value, "type")
        return (
            select(rule, kind, func.count())
            .select_from(transactions)
            .join(each, true())
            .where(t.status == TxStatus.denied.value, *transaction_terms(f))
            .group_by(rule, kind)
        )

    def _rule_entries(self, conn: Connection, f: Filter) -> list[LeaderboardEntry]:
        from ..policy.rules import Rule

        denials = {(d.rule, d.type): d.denials for d in self._denials_by_rule(conn, f)}
        scope = self._fold(conn, f, ("agent", "endpoint", "model", "operation"), None)
        entries = []
        for row in conn.execute(select(spending_rules).order_by(spending_rules.c.id)):
            rule = Rule.from_row(row)
            acc = [0] * _WIDTH
            for (agent_id, endpoint, model_name, op), group in scope.items():
                if rule.applies_to(agent_id, _Scope(endpoint, model_name, op)):
                    _merge(acc, group)
            count = sum(n for (name, _kind), n in denials.items() if name == rule.name)
            entries.append(LeaderboardEntry(rule.name, acc[_TX], from_nano(acc[_NET]), count, rule.type))
        known = {e.name for e in entries}
        for (name, kind), n in denials.items():
            if name not in known:  # a deleted rule, or a paused agent (no rule)
                entries.append(LeaderboardEntry(name, None, None, n, kind))
        entries.sort(key=lambda e: (-e.denials, -(e.spend or ZERO), e.name or ""))
        return entries

    def _adjustment_lines(self, conn: Connection, f: Filter) -> dict[int, list[StatementAdjustment]]:
        t, c = transactions.c, cost_lines.c
        query = (
            select(t.agent_id, c.transaction_id, t.model, c.amount, c.note, c.created_at)
            .select_from(cost_lines.join(transactions, t.id == c.transaction_id))
            .where(c.kind == "adjustment", *transaction_terms(f))
            .order_by(t.agent_id, c.created_at, c.id)
        )
        out: dict[int, list[StatementAdjustment]] = {}
        for row in conn.execute(query):
            out.setdefault(row[0], []).append(StatementAdjustment(row[1], row[2], row[3], row[4], row[5]))
        return out


def check_writable(path: str | os.PathLike[str], field_name: str) -> Path:
    """`path` if a file can be written there; InvalidRequest naming `field_name` otherwise."""
    target = Path(path)
    parent = target.parent
    if str(target) in ("", ".") or target.is_dir():
        raise InvalidRequest(f"{field_name}: {str(target)!r} is a directory, not a file", field=field_name)
    if not parent.is_dir():
        raise InvalidRequest(
            f"{field_name}: cannot write {target}: the directory {parent} does not exist", field=field_name
        )
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise InvalidRequest(f"{field_name}: cannot write {target}: permission denied", field=field_name)
    return target


@contextmanager
def atomic_output(path: Path, field_name: str, *, binary: bool = False) -> Iterator[IO[Any]]:
    """A stream whose content replaces `path` only when the block succeeds (else nothing is written)."""
    check_writable(path, field_name)
    handle: IO[Any]
    try:  # closed below, then renamed into place or removed
        if binary:
            handle = tempfile.NamedTemporaryFile(
                "wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
            )
        else:
            handle = tempfile.NamedTemporaryFile(
                "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False, encoding="utf-8", newline=""
            )
    except OSError as exc:
        raise InvalidRequest(f"{field_name}: cannot write {path}: {exc.strerror}", field=field_name) from None
    try:
        with handle:
            yield handle
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def agent_names(conn: Connection) -> dict[int, str]:
    """Every agent's name by id."""
    return {row[0]: row[1] for row in conn.execute(select(agents.c.id, agents.c.name))}


def cast_text(stream: IO[Any]) -> TextIO:
    """A text stream opened by `atomic_output` (typed as such)."""
    return stream  # type: ignore[return-value]


class _ReportTransaction:
    """`db.reading`, plus PostgreSQL's settings for an analytical query."""

    def __init__(self, reports: Reports) -> None:
        self._cm = reading(reports.engine)
        self._pg = not reports._sqlite

    def __enter__(self) -> Connection:
        conn = self._cm.__enter__()
        if self._pg:
            for statement in _PG_REPORT_SETTINGS:
                conn.exec_driver_sql(statement)
        return conn

    def __exit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc)


def _int_sum(column: Any) -> Any:
    """SUM of a money column as a BIGINT nano-USD integer, 0 over no rows."""
    return cast(func.coalesce(func.sum(_nano(column)), 0), BigInteger)


def _nano(column: Any) -> Any:
    """A money column as its stored integer (nano-USD), so sums stay integer sums in SQL."""
    return type_coerce(column, BigInteger)


def _parse_by(by: Sequence[str] | str) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """(every key in the order given, the grouping keys, the period or None); InvalidRequest if bad."""
    if isinstance(by, str):
        by = [part.strip() for part in by.split(",") if part.strip()]
    allowed = (*GROUP_KEYS, *PERIODS)
    if not by:
        raise InvalidRequest(f"by: give at least one of {', '.join(allowed)}", field="by")
    unknown = [k for k in by if k not in allowed]
    if unknown:
        raise InvalidRequest(f"by: unknown {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}", field="by")
    if len(set(by)) != len(by):
        raise InvalidRequest("by: a key is given twice", field="by")
    periods = [k for k in by if k in PERIODS]
    if len(periods) > 1:
        raise InvalidRequest(f"by: at most one of {', '.join(PERIODS)} (got {', '.join(periods)})", field="by")
    return tuple(by), tuple(k for k in by if k in GROUP_KEYS), (periods[0] if periods else None)


def _sqlite_bucket(day: Any, period: str) -> Any:
    """SQLite: the first day (YYYY-MM-DD text) of the period containing a YYYY-MM-DD text day."""
    if period == "week":  # the Monday on or before: the next Sunday (or the day itself), less six days
        return func.date(day, "weekday 0", "-6 days")
    if period == "month":
        return func.substr(day, literal_column("1"), literal_column("7")).concat("-01")
    return day


def _pg_bucket(created_at: Any, period: str) -> Any:
    """PostgreSQL: the first day of the period of a timestamp (a day by a cast: cheaper than date_trunc)."""
    return cast(created_at, Date) if period == "day" else func.date_trunc(period, created_at)


def _key_function(width: int, period: str | None) -> Any:
    """A function from a grouped row to its key: the first `width` values, the last one (the
    period's first day: SQLite's text, or PostgreSQL's timestamp) as ISO text, YYYY-MM-DD."""
    if period is None:
        return lambda row: tuple(row[:width])
    cache: dict[Any, str] = {}

    def text(raw: Any) -> str:
        found = cache.get(raw)
        if found is None:
            found = cache[raw] = (
                raw if isinstance(raw, str) else (raw.date() if isinstance(raw, datetime) else raw).isoformat()
            )
        return found

    return lambda row: (*row[: width - 1], text(row[width - 1]))


def _status_totals(groups: Mapping[tuple[Any, ...], Sequence[int]]) -> tuple[Totals, dict[str, int], int]:
    """From a fold keyed by (agent, status): the totals, the counts per status, and active agents."""
    total = [0] * _WIDTH
    by_status = {s.value: 0 for s in TxStatus}
    agents_seen = set()
    for (agent_id, status), acc in groups.items():
        _merge(total, acc)
        by_status[status] += acc[_TX] + acc[_DENIED]
        agents_seen.add(agent_id)
    return Totals.of(total), by_status, len(agents_seen)
