"""The records reports return: totals, spend rows, summaries, leaderboards, chart points,
statements; immutable, typed, exact (`Decimal` USD read from integer nano-USD), with `to_json()`.

The fold's accumulator layout is defined here, beside `Totals.of` that reads it: one list of
integers per key (nano-USD, nano-MP, counts) in the order of the `ACC_*` indices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any, NamedTuple

from pricing.money import NANO, usd_str

from ..clock import iso

#: Wide enough that nano-USD times 10^-9 is always exact (a BIGINT has at most 19 digits).
_EXACT = Context(prec=40)


def from_nano(nano: int) -> Decimal:
    """Integer nano-USD (or nano-MP) → USD: the same value as `pricing.money.from_nano`, built in a
    quarter of the time (reports convert hundreds of thousands of sums)."""
    return _EXACT.multiply(Decimal(nano), NANO)


def usd_text(nano: int) -> str:
    """`usd_str(from_nano(nano))` straight from the integer: "0.01185", "-2", "0"."""
    whole, frac = divmod(abs(nano), 1_000_000_000)
    text = f"{whole}.{frac:09d}".rstrip("0") if frac else str(whole)
    return "-" + text if nano < 0 else text


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
            acc[ACC_TX],
            acc[ACC_DENIED],
            acc[ACC_IMAGES],
            acc[ACC_MP],
            acc[ACC_EST],
            acc[ACC_ACTUAL],
            acc[ACC_ADJ],
            acc[ACC_HELD],
            acc[ACC_UNKNOWN],
            acc[ACC_NET],
            acc[ACC_ACTUAL] - acc[ACC_EST_SETTLED],
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
            **{k: json_value(v) for k, v in now.items()},
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
            doc["previous"] = {**self.previous_window.to_json(), **{k: json_value(v) for k, v in before.items()}}
            doc["change"] = {k: change(now[k], before[k]) for k in before}
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


def json_value(value: Any) -> Any:
    return usd_str(value) if isinstance(value, Decimal) else value


def percent_change(now: int | Decimal, before: int | Decimal) -> Decimal | None:
    """The change from `before` to `now` in percent, to one decimal (half-up); None when `before` is zero."""
    if not before:
        return None
    return (Decimal(now - before) * 100 / Decimal(before)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def change(now: int | Decimal, before: int | Decimal) -> dict[str, Any]:
    """The change from `before` to `now`: the difference, and the percentage (a decimal string)."""
    percent = percent_change(now, before)
    return {"delta": json_value(now - before), "percent": None if percent is None else usd_str(percent)}


(
    ACC_TX,
    ACC_DENIED,
    ACC_IMAGES,
    ACC_MP,
    ACC_EST,
    ACC_ACTUAL,
    ACC_EST_SETTLED,
    ACC_HELD,
    ACC_UNKNOWN,
    ACC_NET,
    ACC_ADJ,
) = range(11)


ACC_WIDTH = 11
