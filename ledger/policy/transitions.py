"""What every step of the governor shares: the locked transaction row, the status change with its
cost line and facts, and the counter movement `ledger.store.spend` defines between two statuses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from pricing import PriceBook, default_book
from pricing.money import MAX_USD, from_nano, parse_usd, to_nano, usd_str

from ..clock import Clock, utcnow
from ..errors import Conflict, InvalidRequest, NotFound, SettledByGateway
from ..records import Transaction, TxStatus
from ..settings import DEFAULT_HOLD_TTL
from ..store.db import dialect_insert, reading
from ..store.hotpath import SQL, Driver, TxRow, rule_row, tx_row
from ..store.queries import load_transaction
from ..store.spend import Counted
from .rules import Rule


def parse_amount(text: str | Decimal, field: str, *, allow_negative: bool = False) -> Decimal:
    """A USD amount from a user (decimal string), or InvalidRequest naming `field`."""
    try:
        return parse_usd(text, allow_negative=allow_negative)
    except ValueError as exc:
        raise InvalidRequest(f"{field}: {exc}", field=field) from None


def storable(amount: Decimal, field: str) -> Decimal:
    """`amount`, or InvalidRequest when the ledger could not store it (rather than a driver overflow)."""
    if abs(amount) > MAX_USD:
        raise InvalidRequest(
            f"{field}: {usd_str(amount)} is above the largest amount the ledger holds ({usd_str(MAX_USD)})", field=field
        )
    return amount


class RuleCache:
    """Rules decoded once per distinct stored version: a row is an immutable tuple keyed by every
    column, so a changed rule is simply a new key. One per `Governor` (per `Ledger`)."""

    __slots__ = ("_rules",)
    LIMIT = 4096

    def __init__(self) -> None:
        self._rules: dict[tuple[Any, ...], Rule] = {}

    def get(self, raw: Sequence[Any]) -> Rule:
        key = tuple(raw)
        rule = self._rules.get(key)
        if rule is None:
            if len(self._rules) >= self.LIMIT:
                self._rules.clear()
            rule = self._rules[key] = Rule.from_row(rule_row(key))
        return rule


class Transitions:
    """The state a governor's steps share (one engine, clock, hold TTL, price book, rule cache and the
    dialect's statements) and the moves every step makes."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock = utcnow,
        hold_ttl: float = DEFAULT_HOLD_TTL,
        auto_create: bool = True,
        book: PriceBook | None = None,
    ) -> None:
        """`hold_ttl`: seconds before a pending hold expires; `auto_create`: create agents on first
        use by name; `book`: the price book settlements re-price with (default: the shipped book)."""
        if not hold_ttl > 0:
            raise InvalidRequest("hold_ttl: must be greater than zero", field="hold_ttl")
        self.engine = engine
        self.clock = clock
        self.hold_ttl = hold_ttl
        self.auto_create = auto_create
        self.book = book or default_book()
        self._pg = engine.dialect.name == "postgresql"
        self._sql = SQL[self._pg]
        self._rules = RuleCache()
        self._upsert = dialect_insert(engine.dialect.name)

    def transaction(self, tx_id: int, *, detail: bool = False) -> Transaction:
        """One transaction; with `detail`, its stored request, cost lines, facts and result. NotFound."""
        with reading(self.engine) as conn:
            return load_transaction(conn, tx_id, detail=detail)

    def _lock_tx(
        self, d: Driver, tx_id: int, allowed: tuple[TxStatus, ...], verb: str, *, by_agent: bool = False
    ) -> Any:
        """The transaction's row (with its agent's name), locked (PostgreSQL: FOR UPDATE).
        `by_agent`: the agent asks, and may move only a hold it forwards by itself."""
        raw = d.one(self._sql.lock_tx, {"tx_id": tx_id})
        if raw is None:
            raise NotFound(f"no transaction {tx_id}", id=tx_id)
        row = tx_row(raw)
        if by_agent and row.forwarder is not None:
            raise SettledByGateway(
                f"cannot {verb} transaction {tx_id}: pixelgov forwarded it ({row.forwarder}) and settles it from "
                f"the upstream's answer (it is {row.status.value})",
                id=tx_id,
                status=row.status.value,
            )
        if row.status not in allowed:
            raise Conflict(
                f"cannot {verb} transaction {tx_id}: it is {row.status.value}, not "
                f"{' or '.join(s.value for s in allowed)}",
                id=tx_id,
                status=row.status.value,
            )
        return row

    def _set_status(
        self,
        d: Driver,
        row: Any,
        to: TxStatus,
        now: datetime,
        *,
        line: tuple[str, Decimal] | None = None,
        notes: Iterable[tuple[str, Any]] = (),
        **values: Any,
    ) -> Any:
        """Move the transaction to `to`, setting the values given (None: left as is), and add its
        cost line and facts; returns the row as it now stands. PostgreSQL: one statement, which
        also locks the transaction's rules for the `_move_counters(locked=True)` that follows."""
        values = {k: v for k, v in values.items() if v is not None}
        params: dict[str, Any] = {}
        for key, value in values.items():
            if key == "actual_cost":
                value = to_nano(value)
            elif key == "completed_at":
                value = d.ts(value)
            params[key] = value
        ts = d.ts(now)
        facts_ = [(k, v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in notes]
        params.update(status=to.value, tx_id=row.id, from_status=row.status.value, created_at=ts)
        if self._pg:
            sql = self._sql.set_status(tuple(values), line=line is not None)
            if line is not None:
                params.update(line_kind=line[0], line_amount=to_nano(line[1]))
            params.update(fact_keys=[k for k, _ in facts_], fact_values=[v for _, v in facts_])
            done = d.one(sql, params)[0]  # type: ignore[index]
        else:
            d.execute(self._sql.set_status(tuple(values)), params)
            done = d.rowcount
        if done != 1:  # pragma: no cover - guarded by the row lock; kept as a last line of defence
            raise Conflict(f"transaction {row.id} changed while it was being resolved")
        if not self._pg:
            if line is not None:
                d.execute(
                    self._sql.insert_line,
                    {"tx_id": row.id, "kind": line[0], "amount": to_nano(line[1]), "note": None, "created_at": ts},
                )
            if facts_:
                d.executemany(
                    self._sql.insert_fact,
                    [{"tx_id": row.id, "key": k, "value": v, "created_at": ts} for k, v in facts_],
                )
        shown = {k: v for k, v in values.items() if k in TxRow._fields}
        if "actual_cost" in shown:
            shown["actual_cost"] = from_nano(to_nano(shown["actual_cost"]))  # as stored: whole nano-USD
        return row._replace(status=to, **shown)

    def _move_counters(self, d: Driver, tx_id: int, moved: Counted, *, locked: bool = False) -> None:
        if moved.held == 0 and moved.spent == 0:
            return
        if self._pg and not locked:
            d.execute(self._sql.lock_rules_of_tx, {"tx_id": tx_id})
        d.execute(self._sql.move_counters, {"held": to_nano(moved.held), "spent": to_nano(moved.spent), "tx_id": tx_id})

    def _add_facts(self, d: Driver, tx_id: int, values: Mapping[str, Any], now: datetime) -> None:
        if values:
            ts = d.ts(now)
            d.executemany(
                self._sql.insert_fact,
                [
                    {
                        "tx_id": tx_id,
                        "key": k,
                        "value": v if isinstance(v, str) else json.dumps(v, default=str),
                        "created_at": ts,
                    }
                    for k, v in values.items()
                ],
            )

    def _cutoff(self, now: datetime, older_than: float | None = None) -> datetime:
        seconds = self.hold_ttl if older_than is None else older_than
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError:  # older than the calendar: nothing is that old
            return datetime.min.replace(tzinfo=now.tzinfo)
