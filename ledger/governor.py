"""The governor: check, authorize (hold), settle, fail, void, expire, mark unknown.

One module used by the CLI and the gateway alike. Each operation is one short
database transaction. Authorization reads the matching rules, locks the counted
ones (PostgreSQL: `SELECT … FOR UPDATE` in id order; SQLite: the write lock that
`BEGIN IMMEDIATE` takes), reads their counters, decides, and writes the
transaction, its estimate, its holds and the counter increments before
committing — so the check and the hold are one atomic step and no number of
concurrent processes can overspend a `deny` budget.

Counters (`rule_counters`) make a rule check independent of ledger size; the
`holds` rows record which counters a transaction was counted in, so settlement
moves exactly those, and counters can always be recounted from the rows.

Lock order, everywhere (PostgreSQL): a transaction's own row (settle, fail, void,
mark unknown, adjust: `SELECT … FOR UPDATE`), then rule rows in id order, then
counter rows (upserted in rule id order). Authorization takes no transaction row
lock; expiry marks its transactions first, then locks their rules in id order.

The per-request statements (authorize, settle, fail, void, mark unknown) go
straight to the DBAPI cursor (`db.Driver`) as SQL written once per dialect: the
same rows and locks, without SQLAlchemy's per-statement Python cost. The
transaction's JSON is built from the values written, not re-read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Boolean, Connection, Engine, Enum, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from pricing import Quote
from pricing.money import ZERO, display_price, from_nano, parse_usd, to_nano, usd_str

from .clock import Clock, iso, utcnow
from .db import Driver, db_datetime, reading, writing
from .errors import Conflict, InvalidRequest, NotFound
from .models import (
    AgentStatus, Money, RuleAction, TxStatus, UTCDateTime, agents, alerts, cost_lines, facts, holds,
    spending_rules, transactions,
)
from .periods import buckets
from .rules import Rule, Usage, Verdict, evaluate

DEFAULT_HOLD_TTL = 900.0
MAX_KEY_LENGTH = 200  #: the idempotency_key column's width
_SECRET_HINTS = ("key", "token", "secret", "password", "authorization", "credential")


def hold_ttl_from_env() -> float:
    raw = os.environ.get("PIXELGOV_HOLD_TTL")
    try:
        ttl = float(raw) if raw else DEFAULT_HOLD_TTL
    except ValueError:
        raise InvalidRequest(f"PIXELGOV_HOLD_TTL: {raw!r} is not a number of seconds") from None
    if ttl <= 0:
        raise InvalidRequest("PIXELGOV_HOLD_TTL: must be greater than zero")
    return ttl


def auto_create_from_env() -> bool:
    return os.environ.get("PIXELGOV_AUTO_CREATE_AGENTS", "true").strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class AgentRef:
    id: int | None  #: None: an agent that would be created on first use
    name: str
    status: str


@dataclass
class Decision:
    """The outcome of the rule check for one request."""

    quote: Quote
    agent: AgentRef
    denials: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return not self.denials

    @property
    def only_rate_limited(self) -> bool:
        return bool(self.denials) and all(d["type"] == "rate-limit" for d in self.denials)

    def to_json(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "agent": self.agent.name, "quote": self.quote.to_json(),
                "denials": self.denials, "alerts": self.alerts}


@dataclass
class Authorization:
    transaction: dict[str, Any]
    decision: Decision | None  #: None when an idempotent retry replayed an earlier transaction
    replayed: bool = False

    @property
    def allowed(self) -> bool:
        return self.transaction["status"] != TxStatus.denied


def request_hash(endpoint: str, body: Mapping[str, Any]) -> str:
    canonical = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def stored_request(body: Mapping[str, Any], quote: Quote) -> dict[str, Any]:
    """Request parameters as the ledger keeps them: secrets dropped, data: URIs summarized,
    and an upscale's input size (as priced) recorded so the request can be re-priced."""
    kept = _without_secrets(body)
    if quote.operation == "upscale":
        kept["input_size"] = f"{quote.input_width}x{quote.input_height}"
    return kept


def _without_secrets(value: Any) -> Any:
    """`value` with secret-like keys dropped at every depth and long data: URIs summarized."""
    if isinstance(value, Mapping):
        return {k: _without_secrets(v) for k, v in value.items()
                if not any(h in str(k).lower() for h in _SECRET_HINTS)}
    if isinstance(value, list | tuple):
        return [_without_secrets(v) for v in value]
    if isinstance(value, str) and value.startswith("data:") and len(value) > 200:
        return f"{value[:value.find(',') + 1]}…({len(value)} chars)"
    return value


# --- the hot path's SQL ---------------------------------------------------------------------------
#
# authorize and settle run on every request, so their statements skip SQLAlchemy's per-call
# machinery (see `db.Driver`): plain SQL written once per dialect and sent to the DBAPI cursor.
# Everything else (admin, reports, expiry, alerts, replays) stays SQLAlchemy Core.

_TX_FIELDS = ("id", "agent_id", "endpoint", "model", "operation", "status", "estimated_cost", "actual_cost",
              "price_book", "created_at", "completed_at", "idempotency_key", "denial_json",
              "upstream_request_id", "upstream_status", "outcome")
_TxRow = namedtuple("_TxRow", (*_TX_FIELDS, "agent_name"))  # type: ignore[misc]
_KeyRow = namedtuple("_KeyRow", ("id", "request_hash"))


def _decoder(columns: Sequence[Any]) -> list[Callable[[Any], Any] | None]:
    """Per column, what SQLAlchemy's result processing would do to a raw driver value."""
    out: list[Callable[[Any], Any] | None] = []
    for col in columns:
        kind = col.type
        if isinstance(kind, Money):
            out.append(lambda v: None if v is None else from_nano(int(v)))
        elif isinstance(kind, UTCDateTime):
            out.append(db_datetime)
        elif isinstance(kind, Enum) and kind.enum_class is not None:
            out.append(lambda v, cls=kind.enum_class: None if v is None else cls(v))
        elif isinstance(kind, Boolean):
            out.append(lambda v: None if v is None else bool(v))
        else:
            out.append(None)
    return out


def _decode(row: Sequence[Any], decoders: Sequence[Callable[[Any], Any] | None]) -> list[Any]:
    return [v if f is None else f(v) for v, f in zip(row, decoders)]


#: Every rule column but the timestamps (a rule check never reads them; decoding them costs).
_RULE_COLUMNS = tuple(c for c in spending_rules.c if not isinstance(c.type, UTCDateTime))
_RuleRow = namedtuple("_RuleRow", [c.name for c in _RULE_COLUMNS])  # type: ignore[misc]
_RULE_DECODERS = _decoder(_RULE_COLUMNS)
_TX_DECODERS = _decoder([transactions.c[name] for name in _TX_FIELDS]) + [None]
_RULE_CACHE: dict[tuple[Any, ...], Rule] = {}


def _rule_from_raw(raw: Sequence[Any]) -> Rule:
    """A rule from its stored columns, decoded once per distinct stored version (rows are
    immutable tuples keyed by every column, so a changed rule is simply a new key)."""
    key = tuple(raw)
    rule = _RULE_CACHE.get(key)
    if rule is None:
        if len(_RULE_CACHE) >= 4096:
            _RULE_CACHE.clear()
        rule = _RULE_CACHE[key] = Rule.from_row(_RuleRow(*_decode(key, _RULE_DECODERS)))
    return rule
_INSERT_TX_COLUMNS = ("agent_id", "endpoint", "model", "operation", "request_json", "request_hash", "price_book",
                      "estimated_cost", "status", "idempotency_key", "denial_json", "created_at")


class _Sql:
    """The hot path's statements for one dialect (SQLite: `?`; PostgreSQL: `%s`)."""

    def __init__(self, pg: bool) -> None:
        self.pg = pg
        p = "%s" if pg else "?"
        rule_cols = ", ".join(f"r.{c.name}" for c in _RULE_COLUMNS)
        self.agent_and_rules = (
            f"SELECT a.id, a.status, {rule_cols} FROM agents a LEFT JOIN spending_rules r "
            f"ON r.enabled = {'TRUE' if pg else '1'} AND (r.agent_id IS NULL OR r.agent_id = a.id) "
            f"WHERE a.name = {p} ORDER BY r.id")
        self.by_key = f"SELECT id, request_hash FROM transactions WHERE agent_id = {p} AND idempotency_key = {p}"
        self.lock_rules = (f"SELECT {', '.join(c.name for c in _RULE_COLUMNS)} FROM spending_rules "
                           "WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE")
        self.lock_rules_of_tx = ("SELECT id FROM spending_rules WHERE id IN "
                                 "(SELECT rule_id FROM holds WHERE transaction_id = %s) ORDER BY id FOR NO KEY UPDATE")
        values = ", ".join([p] * len(_INSERT_TX_COLUMNS))
        self.insert_tx = f"INSERT INTO transactions ({', '.join(_INSERT_TX_COLUMNS)}) VALUES ({values})"
        if pg:
            self.insert_tx += " RETURNING id"
            # PostgreSQL: the transaction, its estimate line, its holds and the counter increments in
            # one round trip. Every sub-statement of a WITH runs exactly once, referenced or not.
            self.insert_held_tx = (
                f"WITH t AS ({self.insert_tx}), "
                "l AS (INSERT INTO cost_lines (transaction_id, kind, amount, note, created_at) "
                "SELECT t.id, 'estimate', %s, NULL, %s FROM t), "
                "h AS (INSERT INTO holds (transaction_id, rule_id, bucket) SELECT t.id, x.rule_id, x.bucket "
                "FROM t CROSS JOIN unnest(%s::int[], %s::bigint[]) AS x(rule_id, bucket)), "
                "c AS (INSERT INTO rule_counters (rule_id, bucket, spent, held, requests) "
                "SELECT x.rule_id, x.bucket, 0, %s, 1 FROM unnest(%s::int[], %s::bigint[]) AS x(rule_id, bucket) "
                "ORDER BY x.rule_id ON CONFLICT (rule_id, bucket) DO UPDATE SET "
                "held = rule_counters.held + excluded.held, requests = rule_counters.requests + excluded.requests) "
                "SELECT id FROM t")
        self.insert_line = (f"INSERT INTO cost_lines (transaction_id, kind, amount, note, created_at) "
                            f"VALUES ({p}, {p}, {p}, {p}, {p})")
        self.insert_fact = f'INSERT INTO facts (transaction_id, "key", value, created_at) VALUES ({p}, {p}, {p}, {p})'
        tx_cols = ", ".join(f"t.{c}" for c in _TX_FIELDS)
        self.tx_row = (f"SELECT {tx_cols}, a.name FROM transactions t JOIN agents a ON a.id = t.agent_id "
                       f"WHERE t.id = {p}")
        self.lock_tx = self.tx_row + (" FOR UPDATE OF t" if pg else "")
        self.move_counters = (f"UPDATE rule_counters SET held = held + {p}, spent = spent + {p} "
                              "WHERE (rule_id, bucket) IN "
                              f"(SELECT rule_id, bucket FROM holds WHERE transaction_id = {p})")
        self._p = p
        self._cache: dict[Any, str] = {}

    def usage(self, n: int) -> str:
        key = ("usage", n)
        if key not in self._cache:
            p = self._p
            where = " OR ".join([f"(rule_id = {p} AND bucket BETWEEN {p} AND {p})"] * n)
            self._cache[key] = (f"SELECT rule_id, SUM(spent), SUM(held), SUM(requests) FROM rule_counters "
                                f"WHERE {where} GROUP BY rule_id")
        return self._cache[key]

    def hold_counters(self, n: int) -> tuple[str, str]:
        """SQLite: upsert n counters, insert n holds."""
        key = ("hold", n)
        if key not in self._cache:
            self._cache[key] = (
                "INSERT INTO rule_counters (rule_id, bucket, spent, held, requests) VALUES "
                + ", ".join(["(?, ?, 0, ?, 1)"] * n)
                + " ON CONFLICT (rule_id, bucket) DO UPDATE SET held = rule_counters.held + excluded.held, "
                  "requests = rule_counters.requests + excluded.requests",
                "INSERT INTO holds (transaction_id, rule_id, bucket) VALUES " + ", ".join(["(?, ?, ?)"] * n))
        return self._cache[key]  # type: ignore[return-value]

    def set_status(self, columns: tuple[str, ...], *, line: bool = False) -> str:
        """UPDATE of a transaction's status (and `columns`) from the status it was read with.

        PostgreSQL: one statement that also adds the cost line (`line`) and the facts, and locks
        the transaction's rules in id order (`lk`, as `_move_counters` needs them) — the
        transaction's own row is already locked, so this adds no new lock-order edge. It
        returns (rows updated, rules locked)."""
        key = ("status", columns, line)
        if key not in self._cache:
            p = self._p
            sets = ", ".join(f"{c} = {p}" for c in ("status", *columns))
            update_sql = f"UPDATE transactions SET {sets} WHERE id = {p} AND status = {p}"
            if self.pg:
                parts = [f"u AS ({update_sql} RETURNING id)"]
                if line:
                    parts.append("l AS (INSERT INTO cost_lines (transaction_id, kind, amount, note, created_at) "
                                 "SELECT u.id, %s, %s, NULL, %s FROM u)")
                parts.append('f AS (INSERT INTO facts (transaction_id, "key", value, created_at) '
                             "SELECT u.id, x.k, x.v, %s FROM u CROSS JOIN "
                             "unnest(%s::text[], %s::text[]) WITH ORDINALITY AS x(k, v, n) ORDER BY x.n)")
                parts.append("lk AS (SELECT id FROM spending_rules WHERE id IN "
                             "(SELECT rule_id FROM holds WHERE transaction_id = %s) ORDER BY id FOR NO KEY UPDATE)")
                update_sql = (f"WITH {', '.join(parts)} "
                              "SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM lk)")
            self._cache[key] = update_sql
        return self._cache[key]


_SQL = {False: _Sql(False), True: _Sql(True)}


class Governor:
    def __init__(self, engine: Engine, *, clock: Clock = utcnow, hold_ttl: float | None = None,
                 auto_create: bool | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.hold_ttl = hold_ttl if hold_ttl is not None else hold_ttl_from_env()
        self.auto_create = auto_create if auto_create is not None else auto_create_from_env()
        self._pg = engine.dialect.name == "postgresql"
        self._sql = _SQL[self._pg]
        if self._pg:
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
        self._upsert = upsert

    # --- decisions ------------------------------------------------------------------------------

    def check(self, agent_name: str, quote: Quote) -> Decision:
        """The rule decision for a request, writing nothing."""
        now = self.clock()
        with reading(self.engine) as conn:
            d = Driver(conn)
            agent, rules = self._agent_and_rules(d, agent_name)
            if agent is None:
                if not self.auto_create:
                    raise _unknown_agent(agent_name)
                agent = AgentRef(None, agent_name, AgentStatus.active.value)
                rules = self._rules_in_scope(conn, None)
            decision = self._decide(d, agent, rules, quote, now)
            if not decision.allowed and self._has_stale_holds(conn, now):
                # authorize would expire those holds first: predict what it will decide.
                decision = self._decide(d, agent, rules, quote, now, released=self._stale_held(conn, now))
            return decision

    def _stale_held(self, conn: Connection, now: datetime) -> dict[tuple[int, int], Decimal]:
        """The estimates of stale pending holds, per (rule, bucket): what an expiry would release."""
        cutoff = now - timedelta(seconds=self.hold_ttl)
        t = transactions.c
        rows = conn.execute(select(holds.c.rule_id, holds.c.bucket, func.sum(t.estimated_cost))
                            .join(transactions, t.id == holds.c.transaction_id)
                            .where(t.status == TxStatus.pending, t.created_at < cutoff)
                            .group_by(holds.c.rule_id, holds.c.bucket))
        return {(r[0], r[1]): r[2] for r in rows}

    def authorize(self, agent_name: str, quote: Quote, body: Mapping[str, Any], *,
                  idempotency_key: str | None = None) -> Authorization:
        """Record a transaction and hold its estimate in every matching budget, or record the denial."""
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_KEY_LENGTH:
            raise InvalidRequest(f"idempotency_key: 1–{MAX_KEY_LENGTH} characters (got {len(idempotency_key)})",
                                 field="idempotency_key")
        digest = request_hash(quote.endpoint, body)
        try:
            try:
                return self._authorize(agent_name, quote, body, idempotency_key, digest, may_expire=True)
            except _StaleHolds:
                # A denial while stale holds exist: release them in their own transaction, decide again.
                self.expire()
                return self._authorize(agent_name, quote, body, idempotency_key, digest, may_expire=False)
        except IntegrityError:
            if idempotency_key is None:
                raise
            # A concurrent retry with the same key won the insert: replay its transaction.
            with reading(self.engine) as conn:
                agent = self._find_agent(conn, agent_name)
                existing = self._by_key(conn, agent.id, idempotency_key) if agent and agent.id else None
                if existing is None:
                    raise
                return self._replay(conn, existing, digest, idempotency_key)

    def _authorize(self, agent_name: str, quote: Quote, body: Mapping[str, Any], key: str | None,
                   digest: str, *, may_expire: bool) -> Authorization:
        now = self.clock()
        sql = self._sql
        with writing(self.engine) as conn:
            d = Driver(conn)
            agent, rules = self._agent_and_rules(d, agent_name)  # the agent and its rules: one round trip
            if agent is None:
                self._create_agent_on_first_use(conn, agent_name, now)
                agent, rules = self._agent_and_rules(d, agent_name)
            assert agent is not None and agent.id is not None
            if key is not None:
                found = d.one(sql.by_key, (agent.id, key))
                if found is not None:
                    return self._replay(conn, _KeyRow(*found), digest, key)
            decision = self._decide(d, agent, rules, quote, now, lock=True)
            if not decision.allowed and may_expire and self._has_stale_holds(conn, now):
                raise _StaleHolds
            status = TxStatus.pending if decision.allowed else TxStatus.denied
            denial_json = None
            if not decision.allowed:
                first = decision.denials[0]
                denial_json = json.dumps({"rule": first["rule"], "type": first["type"], "reason": first["reason"],
                                          "denials": decision.denials})
            est = to_nano(quote.amount)
            ts = d.ts(now)
            tx_values = [agent.id, quote.endpoint, quote.model, quote.operation,
                         json.dumps(stored_request(body, quote), default=str), digest, quote.price_book, est,
                         status.value, key, denial_json, ts]
            if decision.allowed:
                tx_id = self._insert_held(d, tx_values, est, ts, self._hold_rows(decision.verdicts, now))
                if decision.alerts:
                    self._record_alerts(conn, tx_id, agent, decision, now)
            elif self._pg:
                tx_id = d.one(sql.insert_tx, tx_values)[0]  # type: ignore[index]
            else:
                d.execute(sql.insert_tx, tx_values)
                tx_id = d.lastrowid
            # The JSON from the values just written (they are what a re-select would read back).
            row = _TxRow(tx_id, agent.id, quote.endpoint, quote.model, quote.operation, status, from_nano(est), None,
                         quote.price_book, now, None, key, denial_json, None, None, None, agent.name)
            tx = tx_json(row, agent.name)
        return Authorization(tx, decision)

    def _agent_and_rules(self, d: Driver, name: str) -> tuple[AgentRef | None, list[Rule]]:
        """The agent and every enabled rule in its scope (its own and the global ones), by rule id."""
        rows = d.all(self._sql.agent_and_rules, (name,))
        if not rows:
            return None, []
        agent_id, status = rows[0][0], rows[0][1]
        agent = AgentRef(agent_id, name, status.value if hasattr(status, "value") else str(status))
        rules = [_rule_from_raw(r[2:]) for r in rows if r[2] is not None]
        return agent, rules

    def _decide(self, d: Driver, agent: AgentRef, rules: Sequence[Rule], quote: Quote, now: datetime, *,
                lock: bool = False, released: Mapping[tuple[int, int], Decimal] | None = None) -> Decision:
        decision = Decision(quote, agent)
        if agent.status == AgentStatus.paused:
            decision.denials.append({"rule": None, "type": "agent-paused",
                                     "reason": f"agent {agent.name!r} is paused"})
        rules = [r for r in rules if r.applies_to(agent.id, quote)]
        counted = [r for r in rules if r.counted]
        if lock and self._pg and counted:
            # Lock the counted rules in id order before reading their counters: the counter read
            # below is a new statement, so at READ COMMITTED it sees every commit made before the
            # locks were granted. (SQLite: BEGIN IMMEDIATE already holds the write lock.)
            locked = {row.id: row for row in map(_rule_from_raw, d.all(self._sql.lock_rules,
                                                                       ([r.id for r in counted],)))}
            if any(locked.get(r.id) != r for r in counted):
                # A rule changed (or went) while this waited for its lock: decide with it as it now is.
                rules = [locked[r.id] if r.counted else r for r in rules if not r.counted or r.id in locked]
                rules = [r for r in rules if r.enabled and r.applies_to(agent.id, quote)]
                counted = [r for r in rules if r.counted]
        usage = self._usage(d, counted, now)
        if released:
            for rule in counted:
                current, low = buckets(rule.period, rule.window_seconds, now)
                freed = sum((v for (r, b), v in released.items() if r == rule.id and low <= b <= current), ZERO)
                if freed and rule.id in usage:
                    u = usage[rule.id]
                    usage[rule.id] = Usage(u.spent, u.held - freed, u.requests)
        for rule in rules:
            verdict = evaluate(rule, quote, usage.get(rule.id))
            decision.verdicts.append(verdict)
            entry = {"rule": rule.name, "type": rule.type, "reason": verdict.reason}
            if not verdict.ok:
                (decision.denials if rule.action == RuleAction.deny else decision.alerts).append(entry)
            elif rule.alert_at and verdict.usage_after is not None and rule.limit_amount:
                if verdict.usage_after * 100 >= rule.limit_amount * rule.alert_at:
                    decision.alerts.append({**entry, "type": "threshold", "reason": (
                        f"{rule.name}: {usd_str(verdict.usage_after)} of {usd_str(rule.limit_amount)} "
                        f"reaches the alert threshold of {rule.alert_at}%")})
        return decision

    def _rules_in_scope(self, conn: Connection, agent_id: int | None) -> list[Rule]:
        scope = spending_rules.c.agent_id.is_(None)
        if agent_id is not None:
            scope = or_(scope, spending_rules.c.agent_id == agent_id)
        rows = conn.execute(select(spending_rules).where(spending_rules.c.enabled.is_(True), scope)
                            .order_by(spending_rules.c.id))
        return [Rule.from_row(r) for r in rows]

    def _usage(self, d: Driver, rules: Sequence[Rule], now: datetime) -> dict[int, Usage]:
        if not rules:
            return {}
        params: list[int] = []
        for rule in rules:
            current, low = buckets(rule.period, rule.window_seconds, now)
            params += (rule.id, low, current)
        rows = d.all(self._sql.usage(len(rules)), params)
        # Sums of nano-USD (PostgreSQL: NUMERIC) back to Decimal USD.
        return {r[0]: Usage(from_nano(int(r[1] or 0)), from_nano(int(r[2] or 0)), int(r[3] or 0)) for r in rows}

    def _hold_rows(self, verdicts: Iterable[Verdict], now: datetime) -> list[tuple[int, int]]:
        """(rule id, bucket) of every counted rule, in rule id order: one lock order for every writer."""
        rows = []
        for verdict in verdicts:
            rule = verdict.rule
            if rule.counted:
                rows.append((rule.id, buckets(rule.period, rule.window_seconds, now)[0]))
        rows.sort()
        return rows

    def _insert_held(self, d: Driver, tx_values: list[Any], est: int, ts: Any,
                     holds_: list[tuple[int, int]]) -> int:
        """The pending transaction, its estimate line, its holds and the counter increments."""
        sql = self._sql
        if self._pg:
            rule_ids, bucket_keys = [r for r, _ in holds_], [b for _, b in holds_]
            return d.one(sql.insert_held_tx, [*tx_values, est, ts, rule_ids, bucket_keys,  # type: ignore[index]
                                              est, rule_ids, bucket_keys])[0]
        d.execute(sql.insert_tx, tx_values)
        tx_id = d.lastrowid
        d.execute(sql.insert_line, (tx_id, "estimate", est, None, ts))
        if holds_:
            upsert_sql, holds_sql = sql.hold_counters(len(holds_))
            d.execute(upsert_sql, [v for rule_id, bucket in holds_ for v in (rule_id, bucket, est)])
            d.execute(holds_sql, [v for rule_id, bucket in holds_ for v in (tx_id, rule_id, bucket)])
        return tx_id

    def _record_alerts(self, conn: Connection, tx_id: int, agent: AgentRef, decision: Decision, now: datetime) -> None:
        by_name = {v.rule.name: v.rule for v in decision.verdicts}
        for entry in decision.alerts:
            rule = by_name[entry["rule"]]
            dedupe = None
            if entry["type"] == "threshold":
                bucket, _ = buckets(rule.period, rule.window_seconds, now)
                dedupe = f"threshold:{rule.id}:{rule.version}:{bucket}"
            ins = self._upsert(alerts).values(
                rule_id=rule.id, rule_name=rule.name, agent_id=agent.id, transaction_id=tx_id,
                kind="threshold" if dedupe else "rule", dedupe_key=dedupe, message=entry["reason"],
                created_at=now)
            conn.execute(ins.on_conflict_do_nothing() if dedupe else ins)

    # --- resolution -----------------------------------------------------------------------------

    def settle(self, tx_id: int, actual: Decimal, *, facts_: Mapping[str, Any] | None = None,
               upstream_request_id: str | None = None, upstream_status: int | None = None,
               response: Any = None, allow_expired: bool = False) -> dict[str, Any]:
        """Complete a transaction at its actual cost: the hold is released, the actual counted as spent."""
        if actual < 0:
            raise InvalidRequest("actual: must not be negative", field="actual")
        allowed = (TxStatus.pending, TxStatus.unknown, *((TxStatus.expired,) if allow_expired else ()))
        now = self.clock()
        with writing(self.engine) as conn:
            d = Driver(conn)
            row = self._lock_tx(d, tx_id, allowed, "complete")
            est = row.estimated_cost
            held_delta, spent_delta = {
                TxStatus.pending: (-est, actual), TxStatus.unknown: (ZERO, actual - est),
                TxStatus.expired: (ZERO, actual),
            }[TxStatus(row.status)]
            notes = [("variance", usd_str(actual - est))] if actual > est else []
            notes += (facts_ or {}).items()
            row = self._set_status(d, row, TxStatus.completed, now, line=("actual", actual), notes=notes,
                                   actual_cost=actual, completed_at=now, upstream_request_id=upstream_request_id,
                                   upstream_status=upstream_status,
                                   response_json=json.dumps(response) if response is not None else None)
            self._move_counters(d, tx_id, held_delta, spent_delta, locked=self._pg)
            return tx_json(row, row.agent_name)

    def fail(self, tx_id: int, reason: str, *, upstream_status: int | None = None,
             facts_: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The upstream refused or errored before generating: hold released, nothing spent."""
        return self._release(tx_id, TxStatus.failed, (TxStatus.pending,), reason, upstream_status, facts_)

    def void(self, tx_id: int, reason: str | None = None) -> dict[str, Any]:
        """Release a pending hold (or an unknown outcome's counted estimate) by hand."""
        return self._release(tx_id, TxStatus.voided, (TxStatus.pending, TxStatus.unknown), reason, None, None)

    def mark_unknown(self, tx_id: int, reason: str, *, facts_: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """No answer after sending: the estimate stays counted as spent until settled or voided."""
        return self._release(tx_id, TxStatus.unknown, (TxStatus.pending,), reason, None, facts_)

    def _release(self, tx_id: int, to: TxStatus, allowed: tuple[TxStatus, ...], reason: str | None,
                 upstream_status: int | None, facts_: Mapping[str, Any] | None) -> dict[str, Any]:
        now = self.clock()
        with writing(self.engine) as conn:
            d = Driver(conn)
            row = self._lock_tx(d, tx_id, allowed, {"failed": "fail", "voided": "void",
                                                     "unknown": "mark unknown"}[to.value])
            est = row.estimated_cost
            if to == TxStatus.unknown:
                deltas = (-est, est)
            elif row.status == TxStatus.unknown:
                deltas = (ZERO, -est)
            else:
                deltas = (-est, ZERO)
            row = self._set_status(d, row, to, now, notes=(facts_ or {}).items(), outcome=reason,
                                   upstream_status=upstream_status,
                                   completed_at=now if to != TxStatus.unknown else None)
            self._move_counters(d, tx_id, *deltas, locked=self._pg)
            return tx_json(row, row.agent_name)

    def expire(self, older_than: float | None = None) -> list[int]:
        """Release every pending hold older than the hold TTL (or `older_than` seconds)."""
        now = self.clock()
        with writing(self.engine) as conn:
            return self._expire_stale(conn, now, older_than)

    def _expire_stale(self, conn: Connection, now: datetime, older_than: float | None = None) -> list[int]:
        cutoff = now - timedelta(seconds=self.hold_ttl if older_than is None else older_than)
        t = transactions.c
        rows = conn.execute(update(transactions).where(t.status == TxStatus.pending, t.created_at < cutoff)
                            .values(status=TxStatus.expired, completed_at=now,
                                    outcome="hold expired (older than the hold TTL)")
                            .returning(t.id, t.estimated_cost)).all()
        if rows:
            ids = [r[0] for r in rows]
            self._lock_rules(conn, select(holds.c.rule_id).where(holds.c.transaction_id.in_(ids)))
            d = Driver(conn)
            for tx_id, est in sorted(rows):
                self._move_counters(d, tx_id, -est, ZERO, locked=True)
        return sorted(r[0] for r in rows)

    def _has_stale_holds(self, conn: Connection, now: datetime) -> bool:
        cutoff = now - timedelta(seconds=self.hold_ttl)
        t = transactions.c
        return conn.execute(select(t.id).where(t.status == TxStatus.pending, t.created_at < cutoff).limit(1)
                            ).first() is not None

    def _lock_rules(self, conn: Connection, rule_ids: Any) -> None:
        """PostgreSQL: lock rule rows in id order before touching their counters, so writers
        never deadlock. (SQLite's BEGIN IMMEDIATE already serializes writers.)"""
        if self._pg and (not isinstance(rule_ids, list) or rule_ids):
            conn.execute(select(spending_rules.c.id).where(spending_rules.c.id.in_(rule_ids))
                         .order_by(spending_rules.c.id).with_for_update(key_share=True))

    def _lock_tx(self, d: Driver, tx_id: int, allowed: tuple[TxStatus, ...], verb: str) -> Any:
        """The transaction's row (with its agent's name), locked (PostgreSQL: FOR UPDATE)."""
        raw = d.one(self._sql.lock_tx, (tx_id,))
        if raw is None:
            raise NotFound(f"no transaction {tx_id}", id=tx_id)
        row = _TxRow(*_decode(raw, _TX_DECODERS))
        if row.status not in allowed:
            raise Conflict(f"cannot {verb} transaction {tx_id}: it is {row.status.value}, not "
                           f"{' or '.join(s.value for s in allowed)}", id=tx_id, status=row.status.value)
        return row

    def _set_status(self, d: Driver, row: Any, to: TxStatus, now: datetime, *,
                    line: tuple[str, Decimal] | None = None, notes: Iterable[tuple[str, Any]] = (),
                    **values: Any) -> Any:
        """Move the transaction to `to`, setting the values given (None: left as is), and add its
        cost line and facts; returns the row as it now stands. PostgreSQL: one statement, which
        also locks the transaction's rules for the `_move_counters(locked=True)` that follows."""
        values = {k: v for k, v in values.items() if v is not None}
        bound = []
        for key, value in values.items():
            if key in ("actual_cost",):
                value = to_nano(value)
            elif key in ("completed_at",):
                value = d.ts(value)
            bound.append(value)
        ts = d.ts(now)
        facts_ = [(k, v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in notes]
        params = [to.value, *bound, row.id, row.status.value]
        if self._pg:
            sql = self._sql.set_status(tuple(values), line=line is not None)
            if line is not None:
                params += [line[0], to_nano(line[1]), ts]
            params += [ts, [k for k, _ in facts_], [v for _, v in facts_], row.id]
            done = d.one(sql, params)[0]  # type: ignore[index]
        else:
            d.execute(self._sql.set_status(tuple(values)), params)
            done = d.rowcount
        if done != 1:  # pragma: no cover - guarded by the row lock; kept as a last line of defence
            raise Conflict(f"transaction {row.id} changed while it was being resolved")
        if not self._pg:
            if line is not None:
                d.execute(self._sql.insert_line, (row.id, line[0], to_nano(line[1]), None, ts))
            if facts_:
                d.executemany(self._sql.insert_fact, [(row.id, k, v, ts) for k, v in facts_])
        shown = {k: v for k, v in values.items() if k in _TxRow._fields}
        if "actual_cost" in shown:
            shown["actual_cost"] = from_nano(to_nano(shown["actual_cost"]))  # as stored: whole nano-USD
        return row._replace(status=to, **shown)

    def _move_counters(self, d: Driver, tx_id: int, held_delta: Decimal, spent_delta: Decimal, *,
                       locked: bool = False) -> None:
        if held_delta == 0 and spent_delta == 0:
            return
        if self._pg and not locked:
            d.execute(self._sql.lock_rules_of_tx, (tx_id,))
        d.execute(self._sql.move_counters, (to_nano(held_delta), to_nano(spent_delta), tx_id))

    # --- notes ----------------------------------------------------------------------------------

    def add_cost(self, tx_id: int, amount: Decimal, *, kind: str = "adjustment", note: str | None = None) -> dict[str, Any]:
        """An adjustment to a completed transaction's cost: a new cost line, counted in its budgets."""
        if kind != "adjustment":
            raise InvalidRequest(f"kind: only adjustment cost lines can be added (got {kind!r})", field="kind")
        now = self.clock()
        with writing(self.engine) as conn:
            d = Driver(conn)
            row = self._lock_tx(d, tx_id, (TxStatus.completed,), "adjust")
            d.execute(self._sql.insert_line, (tx_id, kind, to_nano(amount), note, d.ts(now)))
            self._move_counters(d, tx_id, ZERO, amount)
            return tx_json(row, row.agent_name)

    def add_fact(self, tx_id: int, key: str, value: Any) -> dict[str, Any]:
        if not key or len(key) > 100:
            raise InvalidRequest("fact: KEY must be 1–100 characters", field="key")
        now = self.clock()
        with writing(self.engine) as conn:
            if conn.execute(select(transactions.c.id).where(transactions.c.id == tx_id)).first() is None:
                raise NotFound(f"no transaction {tx_id}", id=tx_id)
            self._add_facts(Driver(conn), tx_id, {key: value}, now)
            return self._tx_json_from(conn, tx_id)

    def _add_facts(self, d: Driver, tx_id: int, values: Mapping[str, Any], now: datetime) -> None:
        if values:
            ts = d.ts(now)
            d.executemany(self._sql.insert_fact, [
                (tx_id, k, v if isinstance(v, str) else json.dumps(v, default=str), ts) for k, v in values.items()])

    # --- reading --------------------------------------------------------------------------------

    def transaction(self, tx_id: int, *, detail: bool = False) -> dict[str, Any]:
        with reading(self.engine) as conn:
            return self._tx_json_from(conn, tx_id, detail=detail)

    def transactions(self, *, agent: str | None = None, status: str | None = None, since: datetime | None = None,
                     until: datetime | None = None, limit: int = 100) -> list[dict[str, Any]]:
        t = transactions.c
        query = select(transactions, agents.c.name.label("agent_name")).join(agents, agents.c.id == t.agent_id)
        if agent:
            query = query.where(agents.c.name == agent)
        if status:
            if status not in TxStatus.__members__:
                raise InvalidRequest(f"status: {status!r}; allowed: {', '.join(TxStatus.__members__)}",
                                     field="status")
            query = query.where(t.status == TxStatus(status))
        if since:
            query = query.where(t.created_at >= since)
        if until:
            query = query.where(t.created_at < until)
        with reading(self.engine) as conn:
            if agent and self._find_agent(conn, agent) is None:
                raise _unknown_agent(agent)
            rows = conn.execute(query.order_by(t.id.desc()).limit(limit)).all()
        return [tx_json(r, r.agent_name) for r in rows]

    def _tx_json_from(self, conn: Connection, tx_id: int, *, detail: bool = False) -> dict[str, Any]:
        row = conn.execute(select(transactions, agents.c.name.label("agent_name"))
                           .join(agents, agents.c.id == transactions.c.agent_id)
                           .where(transactions.c.id == tx_id)).first()
        if row is None:
            raise NotFound(f"no transaction {tx_id}", id=tx_id)
        doc = tx_json(row, row.agent_name)
        if detail:
            lines = conn.execute(select(cost_lines).where(cost_lines.c.transaction_id == tx_id)
                                 .order_by(cost_lines.c.id)).all()
            notes = conn.execute(select(facts).where(facts.c.transaction_id == tx_id).order_by(facts.c.id)).all()
            doc["request"] = json.loads(row.request_json)
            doc["cost_lines"] = [{"kind": l.kind, "amount": usd_str(l.amount), "note": l.note,
                                  "created_at": iso(l.created_at)} for l in lines]
            doc["facts"] = [{"key": f.key, "value": f.value, "created_at": iso(f.created_at)} for f in notes]
            doc["result"] = json.loads(row.response_json) if row.response_json else None
        return doc

    # --- agents ---------------------------------------------------------------------------------

    def _find_agent(self, conn: Connection, name: str) -> AgentRef | None:
        row = conn.execute(select(agents.c.id, agents.c.name, agents.c.status).where(agents.c.name == name)).first()
        return AgentRef(row.id, row.name, row.status.value) if row else None

    def _create_agent_on_first_use(self, conn: Connection, name: str, now: datetime) -> AgentRef:
        if not self.auto_create:
            raise _unknown_agent(name)
        from .admin import validate_agent_name, write_audit

        validate_agent_name(name)
        created = conn.execute(self._upsert(agents).values(name=name, status=AgentStatus.active, created_at=now,
                                                           updated_at=now).on_conflict_do_nothing()
                               .returning(agents.c.id)).first()
        agent = self._find_agent(conn, name)
        assert agent is not None and agent.id is not None
        if created is not None:  # not when a concurrent first use created it (PostgreSQL waits for that one)
            write_audit(conn, "agent", agent.id, name, "create", None, {"name": name, "status": "active",
                                                                       "created": "on first use"}, now)
        return agent

    def _by_key(self, conn: Connection, agent_id: int, key: str) -> Any:
        return conn.execute(select(transactions.c.id, transactions.c.request_hash)
                            .where(transactions.c.agent_id == agent_id,
                                   transactions.c.idempotency_key == key)).first()

    def _replay(self, conn: Connection, existing: Any, digest: str, key: str) -> Authorization:
        if existing.request_hash != digest:
            raise Conflict(f"idempotency key {key!r} was already used for a different request "
                           f"(transaction {existing.id})", field="idempotency_key", id=existing.id)
        return Authorization(self._tx_json_from(conn, existing.id), None, replayed=True)


class _StaleHolds(Exception):
    """Raised inside an authorization to roll it back and expire stale holds first."""


def _unknown_agent(name: str) -> NotFound:
    return NotFound(f"unknown agent {name!r} (agents are not created on first use: "
                    "PIXELGOV_AUTO_CREATE_AGENTS=false); create it with `pixelgov agents create`", agent=name)


def tx_json(row: Any, agent_name: str) -> dict[str, Any]:
    denial = json.loads(row.denial_json) if row.denial_json else None
    return {
        "id": row.id, "agent": agent_name, "endpoint": row.endpoint, "model": row.model,
        "operation": row.operation, "status": row.status.value, "estimated_cost": usd_str(row.estimated_cost),
        "estimated_price": display_price(row.estimated_cost), "actual_cost": usd_str(row.actual_cost),
        "price_book": row.price_book, "created_at": iso(row.created_at), "completed_at": iso(row.completed_at),
        "idempotency_key": row.idempotency_key, "denial": denial, "upstream_request_id": row.upstream_request_id,
        "upstream_status": row.upstream_status, "outcome": row.outcome,
    }


def parse_amount(text: str, field: str, *, allow_negative: bool = False) -> Decimal:
    try:
        return parse_usd(text, allow_negative=allow_negative)
    except ValueError as exc:
        raise InvalidRequest(f"{field}: {exc}", field=field) from None
