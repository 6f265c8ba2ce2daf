"""The fold every report reads with: where the money went, estimated vs actual, by any key and period.

`ReportReader` (the base of `Reports`) answers from the ledger's own tables, through `ledger.store.spend`, the one
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

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

from pricing import PriceBook, default_book

from ..clock import Clock, utcnow
from ..records import TxStatus
from ..store.db import reading
from ..store.models import cost_lines, denial_rollups, spend_rollups, transactions
from ..store.spend import COUNTS_REQUEST, HELD_AS, SPENT_AS, sql_held, sql_spent
from .filters import Days, Filter, agent_names, rollup_terms, split_days, transaction_terms
from .records import ACC_ADJ, ACC_DENIED, ACC_NET, ACC_TX, ACC_WIDTH, RuleDenials, Totals

#: PostgreSQL settings for a report's (read-only) transaction: hash aggregates in memory; no JIT
#: compilation, which costs more than it saves on one scan; and index lookups priced as the cached
#: reads they are, so the few adjusted transactions are fetched by key, not by a scan of the ledger.
_PG_REPORT_SETTINGS = ("SET LOCAL work_mem = '64MB'", "SET LOCAL jit = off", "SET LOCAL random_page_cost = 1.1")


_F = TypeVar("_F", bound=Callable[..., Any])


def collector_paused(method: _F) -> _F:
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


def merge(into: list[int], other: Sequence[int]) -> None:
    for i in range(ACC_WIDTH):
        into[i] += other[i]


def column_sums(accs: Iterable[Sequence[int]]) -> list[int]:
    sums = [sum(column) for column in zip(*accs, strict=True)]
    return sums or [0] * ACC_WIDTH


class ReportReader:
    """What every report reads with: one engine, its clock and price book, and the fold of the
    rollups and the ledger into per-key sums. Every report reads in one read-only transaction.

    `clock` decides "now" (for `summary(period=...)` and an open-ended previous period); `book`
    is the price book that names models (default: the shipped one)."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow, book: PriceBook | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.book = book or default_book()
        self._sqlite = engine.dialect.name == "sqlite"

    def _read(self) -> Any:
        return _ReportTransaction(self)

    def _fold(
        self, conn: Connection, f: Filter, keys: Sequence[str], period: str | None
    ) -> dict[tuple[Any, ...], list[int]]:
        """A fold accumulator per key: the `keys` values (agent id, model, operation, endpoint, status),
        then the first day of the `period` (ISO text) if one is given. The window's whole UTC days
        come from the rollups, the partial days at its edges from the ledger itself."""
        out: dict[tuple[Any, ...], list[int]] = {}
        days, edges = split_days(f)
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
        days: Days,
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
        sums_end = width + ACC_WIDTH  # the fold's sums, then the adjustments, then their net correction
        for row in conn.execute(query):
            values = list(row[width:sums_end])  # integers already (BIGINT sums)
            values[ACC_NET] += row[sums_end]
            key = key_of(row)
            acc = out.get(key)
            if acc is None:
                out[key] = values
            else:
                merge(acc, values)

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
            acc = out.setdefault(key_of(row), [0] * ACC_WIDTH)
            for i in range(ACC_WIDTH - 1):
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
            acc = out.setdefault(key_of(row), [0] * ACC_WIDTH)  # (always there already: its transaction is)
            acc[ACC_ADJ] += int(row[width] or 0)
            acc[ACC_NET] += int(row[width + 1] or 0)

    def _agent_names(self, conn: Connection) -> dict[int, str]:
        return agent_names(conn)

    def _denials_by_rule(self, conn: Connection, f: Filter) -> tuple[RuleDenials, ...]:
        """Denied requests per rule they name (a denial naming two rules counts for both): the
        whole days from `denial_rollups`, the partial days at the window's edges from the ledger."""
        f = Filter(f.since, f.until, f.agent_id, f.model, f.operation)
        counts: dict[tuple[str | None, str], int] = {}
        days, edges = split_days(f)
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


class _ReportTransaction:
    """`db.reading`, plus PostgreSQL's settings for an analytical query."""

    def __init__(self, reports: ReportReader) -> None:
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


def status_totals(groups: Mapping[tuple[Any, ...], Sequence[int]]) -> tuple[Totals, dict[str, int], int]:
    """From a fold keyed by (agent, status): the totals, the counts per status, and active agents."""
    total = [0] * ACC_WIDTH
    by_status = {s.value: 0 for s in TxStatus}
    agents_seen = set()
    for (agent_id, status), acc in groups.items():
        merge(total, acc)
        by_status[status] += acc[ACC_TX] + acc[ACC_DENIED]
        agents_seen.add(agent_id)
    return Totals.of(total), by_status, len(agents_seen)
