"""The one definition of spend: what a transaction in each status counts as held and as spent.

Every place that moves or sums money reads it from here: settle, fail, void, expire,
mark-unknown and add-cost move rule counters by the difference between what a
transaction counted before and after (`movement`); the counter recount and the
reports sum `counted` over the ledger (in Python here, in SQL through `sql_held` /
`sql_spent`, built from the same table).

| status      | held         | spent                                   |
|-------------|--------------|-----------------------------------------|
| `pending`   | the estimate | 0                                       |
| `completed` | 0            | actual + adjustments, never below zero  |
| `unknown`   | 0            | the estimate (it may have been served)  |
| `failed`, `voided`, `expired`, `denied` | 0 | 0                             |

Adjustments (credits and corrections, `tx add-cost`) change what a completed transaction
counts as spent, but a credit never takes a transaction below zero: a credit larger than
what was spent is recorded in full on the ledger and in reports' `adjustments` column, yet
it frees no more budget than the transaction had consumed, so it can never raise a
budget's headroom above its limit.

Pure: no I/O. `sql_held`/`sql_spent` import SQLAlchemy only when called.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

from pricing.money import ZERO

from ..records import TxStatus

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement

#: What each status counts: "estimate", "settled" (actual + adjustments, floored at zero) or nothing.
HELD_AS: dict[TxStatus, str | None] = {s: None for s in TxStatus}
SPENT_AS: dict[TxStatus, str | None] = {s: None for s in TxStatus}
HELD_AS[TxStatus.pending] = "estimate"
SPENT_AS[TxStatus.completed] = "settled"
SPENT_AS[TxStatus.unknown] = "estimate"

#: Statuses that count towards a rule's request count (everything authorized, i.e. not denied).
COUNTS_REQUEST = frozenset(s for s in TxStatus if s != TxStatus.denied)


class Counted(NamedTuple):
    """What one transaction counts in its budgets, in USD."""

    held: Decimal
    spent: Decimal

    @property
    def total(self) -> Decimal:
        return self.held + self.spent


NOTHING = Counted(ZERO, ZERO)


def settled_amount(actual: Decimal | None, adjustments: Decimal = ZERO) -> Decimal:
    """A completed transaction's spend: its actual cost plus its adjustments, never below zero."""
    total = (actual or ZERO) + adjustments
    return total if total > 0 else ZERO


def _term(kind: str | None, estimate: Decimal, actual: Decimal | None, adjustments: Decimal) -> Decimal:
    if kind is None:
        return ZERO
    if kind == "estimate":
        return estimate
    return settled_amount(actual, adjustments)


def counted(
    status: TxStatus | str, estimate: Decimal, actual: Decimal | None = None, adjustments: Decimal = ZERO
) -> Counted:
    """What a transaction in `status` counts as held and as spent (USD)."""
    s = TxStatus(status)
    return Counted(_term(HELD_AS[s], estimate, actual, adjustments), _term(SPENT_AS[s], estimate, actual, adjustments))


def movement(before: Counted, after: Counted) -> Counted:
    """How a transition moves its budgets' counters: (held delta, spent delta)."""
    return Counted(after.held - before.held, after.spent - before.spent)


def _sql_term(kind: str, estimate: Any, actual: Any, adjustments: Any) -> Any:
    from sqlalchemy import BigInteger, case, func, literal, type_coerce

    if kind == "estimate":
        return type_coerce(estimate, BigInteger)
    zero = literal(0, BigInteger)
    total = func.coalesce(type_coerce(actual, BigInteger), zero) + func.coalesce(
        type_coerce(adjustments, BigInteger), zero
    )
    return case((total > 0, total), else_=zero)


def _sql_case(
    table: dict[TxStatus, str | None], status: Any, estimate: Any, actual: Any, adjustments: Any
) -> ColumnElement[Any]:
    """A CASE over the status column; money columns are read as raw nano-USD integers (the result
    is nano-USD too, so a SUM over a million rows stays an integer sum in the database)."""
    from sqlalchemy import BigInteger, case, literal

    whens = [
        (status == s, _sql_term(kind, estimate, actual, adjustments)) for s, kind in table.items() if kind is not None
    ]
    return case(*whens, else_=literal(0, BigInteger))


def sql_held(status: Any, estimate: Any, actual: Any, adjustments: Any) -> ColumnElement[Any]:
    """`counted(...).held` as a SQL expression in nano-USD (for sums over many rows).

    `adjustments` is the transaction's summed adjustment lines (a subquery column or NULL)."""
    return _sql_case(HELD_AS, status, estimate, actual, adjustments)


def sql_spent(status: Any, estimate: Any, actual: Any, adjustments: Any) -> ColumnElement[Any]:
    """`counted(...).spent` as a SQL expression in nano-USD (for sums over many rows)."""
    return _sql_case(SPENT_AS, status, estimate, actual, adjustments)
