"""The governor's hot path: raw per-dialect SQL sent straight to the DBAPI cursor.

authorize and settle run on every request. Through SQLAlchemy Core each of their dozen
small statements costs 60–300 µs of Python (cache key, compiled-cache lookup, execution
context, result processing) — several times what SQLite needs to run it. So these
statements are plain SQL written once per dialect with named parameters (`:name` on
SQLite, `%(name)s` on PostgreSQL), sent through `Driver` inside SQLAlchemy's own
transaction (`db.writing`/`db.reading`: BEGIN IMMEDIATE on SQLite, commit, rollback,
pooling). Values are bound exactly as the column types (`models.Money`,
`models.UTCDateTime`) would bind them — `tests/test_hotpath.py` proves both paths write
and read identical values on SQLite and PostgreSQL. Everything else (admin, reports,
expiry, alerts, replays) stays SQLAlchemy Core.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, Connection, Enum, exc

from pricing.money import from_nano

from .models import Money, UTCDateTime, spending_rules, transactions

Params = Mapping[str, Any]


class Driver:
    """Statements sent straight to the DBAPI cursor of a SQLAlchemy connection.

    Driver errors are re-raised as SQLAlchemy's exception classes (IntegrityError,
    OperationalError…) so callers and `db.translate_db_error` see what Core would raise.
    """

    __slots__ = ("_error", "conn", "cur", "pg")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pg = conn.dialect.name == "postgresql"
        self.cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        self._error = conn.dialect.loaded_dbapi.Error

    def execute(self, sql: str, params: Params | None = None) -> Any:
        try:
            return self.cur.execute(sql, params or {})
        except self._error as err:
            raise self._wrap(err, sql, params) from err

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        try:
            self.cur.executemany(sql, rows)
        except self._error as err:
            raise self._wrap(err, sql, rows) from err

    def one(self, sql: str, params: Params | None = None) -> tuple[Any, ...] | None:
        self.execute(sql, params)
        row: tuple[Any, ...] | None = self.cur.fetchone()
        return row

    def all(self, sql: str, params: Params | None = None) -> list[tuple[Any, ...]]:
        self.execute(sql, params)
        return list(self.cur.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self.cur.rowcount)

    @property
    def lastrowid(self) -> int:
        return int(self.cur.lastrowid)

    def ts(self, value: datetime | None) -> Any:
        """A timestamp as `UTCDateTime` stores it: naive UTC (PostgreSQL), or SQLAlchemy's
        SQLite text form, so stored values sort and compare the same whichever path wrote them."""
        return bind_ts(value, self.pg)

    def _wrap(self, err: Exception, sql: str, params: Any) -> BaseException:
        """The driver's error as SQLAlchemy would raise it; a lost connection is invalidated
        so the pool does not hand it out again."""
        dialect = self.conn.dialect
        dbapi_conn = self.conn.connection.dbapi_connection
        gone = dialect.is_disconnect(err, dbapi_conn, self.cur)  # type: ignore[arg-type]
        if gone:
            self.conn.invalidate(err)
        return exc.DBAPIError.instance(sql, params, err, self._error, connection_invalidated=gone, dialect=dialect)


def bind_ts(value: datetime | None, pg: bool) -> Any:
    """A timestamp bound as `models.UTCDateTime` binds it (see `Driver.ts`)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the ledger; use ledger.clock")
    naive = value.astimezone(UTC).replace(tzinfo=None)
    return naive if pg else naive.strftime("%Y-%m-%d %H:%M:%S.%f")


def db_datetime(value: Any) -> datetime | None:
    """A stored timestamp (PostgreSQL: naive datetime; SQLite: text) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    result: datetime = value.replace(tzinfo=UTC)
    return result


# --- decoding raw rows as the column types would ----------------------------------------------

Decoder = Callable[[Any], Any] | None


def _money(value: Any) -> Any:
    return None if value is None else from_nano(int(value))


def _enum_decoder(cls: Any) -> Callable[[Any], Any]:
    def decode_enum(value: Any) -> Any:
        return None if value is None else cls(value)

    return decode_enum


def _bool(value: Any) -> Any:
    return None if value is None else bool(value)


def decoders(columns: Sequence[Any]) -> list[Decoder]:
    """Per column, what SQLAlchemy's result processing would do to a raw driver value."""
    out: list[Decoder] = []
    for col in columns:
        kind = col.type
        if isinstance(kind, Money):
            out.append(_money)
        elif isinstance(kind, UTCDateTime):
            out.append(db_datetime)
        elif isinstance(kind, Enum) and kind.enum_class is not None:
            out.append(_enum_decoder(kind.enum_class))
        elif isinstance(kind, Boolean):
            out.append(_bool)
        else:
            out.append(None)
    return out


def decode(row: Sequence[Any], decs: Sequence[Decoder]) -> list[Any]:
    return [v if f is None else f(v) for v, f in zip(row, decs)]


TX_FIELDS = (
    "id",
    "agent_id",
    "endpoint",
    "model",
    "operation",
    "status",
    "estimated_cost",
    "actual_cost",
    "price_book",
    "created_at",
    "completed_at",
    "idempotency_key",
    "denial_json",
    "upstream_request_id",
    "upstream_status",
    "outcome",
    "forwarder",
)
TxRow: Any = namedtuple("TxRow", (*TX_FIELDS, "agent_name"))  # type: ignore[misc]
KeyRow: Any = namedtuple("KeyRow", ("id", "request_hash"))
TX_DECODERS = [*decoders([transactions.c[name] for name in TX_FIELDS]), None]

#: Every rule column but the timestamps (a rule check never reads them; decoding them costs).
RULE_COLUMNS = tuple(c for c in spending_rules.c if not isinstance(c.type, UTCDateTime))
_RuleRow: Any = namedtuple("_RuleRow", [c.name for c in RULE_COLUMNS])  # type: ignore[misc]
_RULE_DECODERS = decoders(RULE_COLUMNS)


def tx_row(raw: Sequence[Any]) -> Any:
    """A raw `Sql.tx_row` result as a decoded `TxRow`."""
    return TxRow(*decode(raw, TX_DECODERS))


def rule_row(raw: Sequence[Any]) -> Any:
    """A raw rule row (the `RULE_COLUMNS`, in order) decoded as the column types would decode it."""
    return _RuleRow(*decode(raw, _RULE_DECODERS))


# --- the statements ---------------------------------------------------------------------------

INSERT_TX_COLUMNS = (
    "agent_id",
    "endpoint",
    "model",
    "operation",
    "request_json",
    "request_hash",
    "price_book",
    "estimated_cost",
    "status",
    "idempotency_key",
    "denial_json",
    "created_at",
    "images",
    "billable_mp_nano",
    "forwarder",
)


def _pg_param(name: str) -> str:
    return f"%({name})s"


def _sqlite_param(name: str) -> str:
    return f":{name}"


class Sql:
    """The hot path's statements for one dialect, with named parameters."""

    def __init__(self, pg: bool) -> None:
        self.pg = pg
        p: Callable[[str], str] = _pg_param if pg else _sqlite_param
        self.p = p
        rule_cols = ", ".join(f"r.{c.name}" for c in RULE_COLUMNS)
        self.agent_and_rules = (
            f"SELECT a.id, a.status, {rule_cols} FROM agents a LEFT JOIN spending_rules r "
            f"ON r.enabled = {'TRUE' if pg else '1'} AND (r.agent_id IS NULL OR r.agent_id = a.id) "
            f"WHERE a.name = {p('name')} ORDER BY r.id"
        )
        self.by_key = (
            f"SELECT id, request_hash FROM transactions "
            f"WHERE agent_id = {p('agent_id')} AND idempotency_key = {p('key')}"
        )
        self.lock_rules = (
            f"SELECT {', '.join(c.name for c in RULE_COLUMNS)} FROM spending_rules "
            "WHERE id = ANY(%(rule_ids)s) ORDER BY id FOR NO KEY UPDATE"
        )
        self.lock_rules_of_tx = (
            "SELECT id FROM spending_rules WHERE id IN (SELECT rule_id FROM holds "
            "WHERE transaction_id = %(tx_id)s) ORDER BY id FOR NO KEY UPDATE"
        )
        values = ", ".join(p(c) for c in INSERT_TX_COLUMNS)
        self.insert_tx = f"INSERT INTO transactions ({', '.join(INSERT_TX_COLUMNS)}) VALUES ({values})"
        if pg:
            self.insert_tx += " RETURNING id"
            # PostgreSQL: the transaction, its estimate line, its holds and the counter increments in
            # one round trip. Every sub-statement of a WITH runs exactly once, referenced or not.
            self.insert_held_tx = (
                f"WITH t AS ({self.insert_tx}), "
                "l AS (INSERT INTO cost_lines (transaction_id, kind, amount, note, created_at) "
                "SELECT t.id, 'estimate', %(estimated_cost)s, NULL, %(created_at)s FROM t), "
                "h AS (INSERT INTO holds (transaction_id, rule_id, bucket) SELECT t.id, x.rule_id, x.bucket "
                "FROM t CROSS JOIN unnest(%(rule_ids)s::int[], %(buckets)s::bigint[]) AS x(rule_id, bucket)), "
                "c AS (INSERT INTO rule_counters (rule_id, bucket, spent, held, requests) "
                "SELECT x.rule_id, x.bucket, 0, %(estimated_cost)s, 1 "
                "FROM unnest(%(rule_ids)s::int[], %(buckets)s::bigint[]) AS x(rule_id, bucket) "
                "ORDER BY x.rule_id ON CONFLICT (rule_id, bucket) DO UPDATE SET "
                "held = rule_counters.held + excluded.held, requests = rule_counters.requests + excluded.requests) "
                "SELECT id FROM t"
            )
        self.insert_line = (
            "INSERT INTO cost_lines (transaction_id, kind, amount, note, created_at) "
            f"VALUES ({p('tx_id')}, {p('kind')}, {p('amount')}, {p('note')}, {p('created_at')})"
        )
        self.insert_fact = (
            'INSERT INTO facts (transaction_id, "key", value, created_at) '
            f"VALUES ({p('tx_id')}, {p('key')}, {p('value')}, {p('created_at')})"
        )
        tx_cols = ", ".join(f"t.{c}" for c in TX_FIELDS)
        self.tx_row = (
            f"SELECT {tx_cols}, a.name FROM transactions t JOIN agents a ON a.id = t.agent_id WHERE t.id = {p('tx_id')}"
        )
        self.lock_tx = self.tx_row + (" FOR UPDATE OF t" if pg else "")
        self.adjustments = (
            f"SELECT COALESCE(SUM(amount), 0) FROM cost_lines "
            f"WHERE transaction_id = {p('tx_id')} AND kind = 'adjustment'"
        )
        self.move_counters = (
            f"UPDATE rule_counters SET held = held + {p('held')}, spent = spent + {p('spent')} "
            "WHERE (rule_id, bucket) IN "
            f"(SELECT rule_id, bucket FROM holds WHERE transaction_id = {p('tx_id')})"
        )
        self._cache: dict[Any, Any] = {}

    def usage(self, n: int) -> str:
        """Sum the counters of n rules, each over its bucket range (`r{i}`, `lo{i}`, `hi{i}`)."""
        key = ("usage", n)
        if key not in self._cache:
            p = self.p
            where = " OR ".join(
                f"(rule_id = {p(f'r{i}')} AND bucket BETWEEN {p(f'lo{i}')} AND {p(f'hi{i}')})" for i in range(n)
            )
            self._cache[key] = (
                f"SELECT rule_id, SUM(spent), SUM(held), SUM(requests) FROM rule_counters "
                f"WHERE {where} GROUP BY rule_id"
            )
        sql: str = self._cache[key]
        return sql

    def hold_counters(self, n: int) -> tuple[str, str]:
        """SQLite: upsert n counters (`r{i}`, `b{i}`, `est`), insert n holds (`tx_id`, `r{i}`, `b{i}`)."""
        key = ("hold", n)
        if key not in self._cache:
            self._cache[key] = (
                "INSERT INTO rule_counters (rule_id, bucket, spent, held, requests) VALUES "
                + ", ".join(f"(:r{i}, :b{i}, 0, :est, 1)" for i in range(n))
                + " ON CONFLICT (rule_id, bucket) DO UPDATE SET held = rule_counters.held + excluded.held, "
                "requests = rule_counters.requests + excluded.requests",
                "INSERT INTO holds (transaction_id, rule_id, bucket) VALUES "
                + ", ".join(f"(:tx_id, :r{i}, :b{i})" for i in range(n)),
            )
        pair: tuple[str, str] = self._cache[key]
        return pair

    def set_status(self, columns: tuple[str, ...], *, line: bool = False) -> str:
        """UPDATE of a transaction's status (and `columns`) from the status it was read with
        (`status`, each column by name, `tx_id`, `from_status`).

        PostgreSQL: one statement that also adds the cost line (`line`: `line_kind`, `line_amount`)
        and the facts (`fact_keys`, `fact_values`, `created_at`), and locks the transaction's rules in
        id order (as the counter move that follows needs them) — the transaction's own row is already
        locked, so this adds no new lock-order edge. It returns (rows updated, rules locked)."""
        key = ("status", columns, line)
        if key not in self._cache:
            p = self.p
            sets = ", ".join(f"{c} = {p(c)}" for c in ("status", *columns))
            update_sql = f"UPDATE transactions SET {sets} WHERE id = {p('tx_id')} AND status = {p('from_status')}"
            if self.pg:
                parts = [f"u AS ({update_sql} RETURNING id)"]
                if line:
                    parts.append(
                        "l AS (INSERT INTO cost_lines (transaction_id, kind, amount, note, created_at) "
                        "SELECT u.id, %(line_kind)s, %(line_amount)s, NULL, %(created_at)s FROM u)"
                    )
                parts.append(
                    'f AS (INSERT INTO facts (transaction_id, "key", value, created_at) '
                    "SELECT u.id, x.k, x.v, %(created_at)s FROM u CROSS JOIN "
                    "unnest(%(fact_keys)s::text[], %(fact_values)s::text[]) WITH ORDINALITY AS x(k, v, n) "
                    "ORDER BY x.n)"
                )
                parts.append(
                    "lk AS (SELECT id FROM spending_rules WHERE id IN "
                    "(SELECT rule_id FROM holds WHERE transaction_id = %(tx_id)s) ORDER BY id "
                    "FOR NO KEY UPDATE)"
                )
                update_sql = f"WITH {', '.join(parts)} SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM lk)"
            self._cache[key] = update_sql
        sql: str = self._cache[key]
        return sql


SQL = {False: Sql(False), True: Sql(True)}
