"""The governor: check, authorize (hold), settle, complete, fail, void, expire, mark unknown.

The orchestration of every money-moving step, used by the CLI and the gateway alike.
Each operation is one short database transaction. Authorization reads the matching
rules, locks the counted ones (PostgreSQL: `SELECT … FOR NO KEY UPDATE` in id order;
SQLite: the write lock that `BEGIN IMMEDIATE` takes), reads their counters, decides,
and writes the transaction, its estimate, its holds and the counter increments before
committing — so the check and the hold are one atomic step and no number of
concurrent processes can overspend a `deny` budget.

Counters (`rule_counters`) make a rule check independent of ledger size; the `holds`
rows record which counters a transaction was counted in, so every later transition
moves exactly those, by the difference `ledger.store.spend` defines between what the
transaction counted before and after.

Lock order, everywhere (PostgreSQL): a transaction's own row (settle, fail, void,
mark unknown, adjust: `SELECT … FOR UPDATE`; expiry: its transactions' rows in id
order), then rule rows in id order, then counter rows (upserted in rule id order),
then the report rollup rows that database triggers write with a transaction or an
adjustment line (migration 0004; AFTER triggers run at the end of their statement,
and a status change locks its old group's row before its new one). Authorization
takes no transaction row lock.

The per-request statements live in `ledger.store.hotpath` (raw SQL on the DBAPI cursor);
the reads in `ledger.store.queries`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import IntegrityError

from pricing import PriceBook, Quote, default_book
from pricing.money import MAX_USD, ZERO, from_nano, parse_usd, to_nano, usd_str

from ..clock import Clock, utcnow
from ..errors import Conflict, InvalidRequest, NotFound
from ..records import (
    AgentRef,
    AgentStatus,
    Authorization,
    Decision,
    Denial,
    RuleAction,
    Transaction,
    TxStatus,
)
from ..settings import DEFAULT_HOLD_TTL
from ..store.db import dialect_insert, reading, writing
from ..store.hotpath import SQL, Driver, KeyRow, TxRow, rule_row, tx_row
from ..store.models import alerts, holds, spending_rules, transactions
from ..store.queries import (
    by_idempotency_key,
    find_agent,
    has_stale_holds,
    list_transactions,
    load_transaction,
    rule_rows_in_scope,
    stale_held,
    transaction_record,
)
from ..store.spend import Counted, counted, movement
from ..validation import validate_agent_name
from .periods import buckets
from .rules import Rule, Usage, Verdict, evaluate

MAX_KEY_LENGTH = 200  #: the idempotency_key column's width
#: Request fields whose name contains one of these are never stored (at any depth; `headers` whole).
_SECRET_HINTS = (
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "authorization",
    "auth",
    "credential",
    "cookie",
    "session",
    "headers",
    "signature",
)


def validate_idempotency_key(key: str | None) -> str | None:
    """The key, if the ledger can store it (1–200 characters); InvalidRequest otherwise."""
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidRequest(
            f"idempotency_key: 1–{MAX_KEY_LENGTH} characters (got {len(key)})", field="idempotency_key"
        )
    return key


def request_hash(endpoint: str, body: Mapping[str, Any]) -> str:
    """The digest that tells an idempotent retry from a different request with the same key."""
    canonical = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def stored_request(body: Mapping[str, Any], quote: Quote) -> dict[str, Any]:
    """Request parameters as the ledger keeps them: secrets dropped, data: URIs summarized,
    and an upscale's input size (as priced) recorded so the request can be re-priced."""
    kept: dict[str, Any] = _without_secrets(body)
    if quote.operation == "upscale":
        kept["input_size"] = f"{quote.input_width}x{quote.input_height}"
    return kept


def _without_secrets(value: Any) -> Any:
    """`value` with secret-like keys dropped at every depth and long data: URIs summarized."""
    if isinstance(value, Mapping):
        return {k: _without_secrets(v) for k, v in value.items() if not any(h in str(k).lower() for h in _SECRET_HINTS)}
    if isinstance(value, list | tuple):
        return [_without_secrets(v) for v in value]
    if isinstance(value, str) and value.startswith("data:") and len(value) > 200:
        return f"{value[: value.find(',') + 1]}…({len(value)} chars)"
    return value


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


class _StaleHolds(Exception):
    """Raised inside an authorization to roll it back and expire stale holds first."""


def _unknown_agent(name: str) -> NotFound:
    return NotFound(
        f"unknown agent {name!r} (agents are not created on first use here)", agent=name, reason="create_first"
    )


class Governor:
    """Decides, holds and settles spend for one ledger database.

    Every method is one short database transaction and returns typed records
    (`ledger.records`). Money is `Decimal` USD. Errors: `InvalidRequest` (bad input, nothing
    written), `NotFound` (unknown agent or transaction), `Conflict` (a state change the
    transaction's status does not allow), and database errors as SQLAlchemy raises them
    (`ledger.store.db.translate_db_error` turns those into `DatabaseUnavailable`).
    """

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

    # --- decisions ------------------------------------------------------------------------------

    def check(self, agent_name: str, quote: Quote) -> Decision:
        """The rule decision for a request, writing nothing: what `authorize` would decide now.

        Raises NotFound for an unknown agent when agents are not created on first use."""
        validate_agent_name(agent_name)
        now = self.clock()
        with reading(self.engine) as conn:
            d = Driver(conn)
            agent, rules = self._agent_and_rules(d, agent_name)
            if agent is None:
                if not self.auto_create:
                    raise _unknown_agent(agent_name)
                agent = AgentRef(None, agent_name, AgentStatus.active)
                rules = [Rule.from_row(r) for r in rule_rows_in_scope(conn, None)]
            decision = self._decide(d, agent, rules, quote, now)
            if not decision.allowed and has_stale_holds(conn, self._cutoff(now)):
                # authorize would expire those holds first: predict what it will decide.
                decision = self._decide(d, agent, rules, quote, now, released=stale_held(conn, self._cutoff(now)))
            return decision

    def authorize(
        self, agent_name: str, quote: Quote, body: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Authorization:
        """Record a transaction and hold its estimate in every matching budget, or record the denial.

        A retry with an `idempotency_key` the agent already used returns the first transaction
        (`replayed=True`) and writes nothing; the same key with a different request raises Conflict.
        Raises InvalidRequest (bad key or agent name) and NotFound (unknown agent, no auto-create)."""
        validate_idempotency_key(idempotency_key)
        validate_agent_name(agent_name)
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
                agent = find_agent(conn, agent_name)
                existing = by_idempotency_key(conn, agent.id, idempotency_key) if agent and agent.id else None
                if existing is None:
                    raise
                return self._replay(conn, existing, digest, idempotency_key)

    def used_idempotency_key(self, agent_name: str, key: str) -> bool:
        """Whether the agent already used this idempotency key: `authorize` with it would replay
        that transaction and write nothing. Writes nothing; InvalidRequest for a malformed key or name."""
        validate_idempotency_key(key)
        validate_agent_name(agent_name)
        with reading(self.engine) as conn:
            agent = find_agent(conn, agent_name)
            return bool(agent and agent.id and by_idempotency_key(conn, agent.id, key) is not None)

    def _authorize(
        self, agent_name: str, quote: Quote, body: Mapping[str, Any], key: str | None, digest: str, *, may_expire: bool
    ) -> Authorization:
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
                found = d.one(sql.by_key, {"agent_id": agent.id, "key": key})
                if found is not None:
                    return self._replay(conn, KeyRow(*found), digest, key)
            decision = self._decide(d, agent, rules, quote, now, lock=True)
            if not decision.allowed and may_expire and has_stale_holds(conn, self._cutoff(now)):
                raise _StaleHolds
            status = TxStatus.pending if decision.allowed else TxStatus.denied
            denial_doc = None
            if not decision.allowed:
                first = decision.denials[0]
                denial_doc = {**first.to_json(), "denials": [x.to_json() for x in decision.denials]}
            est = to_nano(quote.amount)
            ts = d.ts(now)
            values = {
                "agent_id": agent.id,
                "endpoint": quote.endpoint,
                "model": quote.model,
                "operation": quote.operation,
                "request_json": json.dumps(stored_request(body, quote), default=str),
                "request_hash": digest,
                "price_book": quote.price_book,
                "estimated_cost": est,
                "status": status.value,
                "idempotency_key": key,
                "denial_json": json.dumps(denial_doc) if denial_doc else None,
                "created_at": ts,
                # what reports sum instead of re-pricing every request (megapixels in nano-MP, exact)
                "images": quote.images,
                "billable_mp_nano": to_nano(quote.billable_megapixels),
            }
            if decision.allowed:
                tx_id = self._insert_held(d, values, self._hold_rows(decision.verdicts, now))
                if decision.alerts:
                    self._record_alerts(conn, tx_id, agent, decision, now)
            elif self._pg:
                tx_id = d.one(sql.insert_tx, values)[0]  # type: ignore[index]
            else:
                d.execute(sql.insert_tx, values)
                tx_id = d.lastrowid
            # The record from the values just written (they are what a re-select would read back).
            tx = Transaction(
                tx_id,
                agent.name,
                quote.endpoint,
                quote.model,
                quote.operation,
                status,
                from_nano(est),
                None,
                quote.price_book,
                now,
                None,
                key,
                denial_doc,
                None,
                None,
                None,
            )
        return Authorization(tx, decision)

    def _agent_and_rules(self, d: Driver, name: str) -> tuple[AgentRef | None, list[Rule]]:
        """The agent and every enabled rule in its scope (its own and the global ones), by rule id."""
        rows = d.all(self._sql.agent_and_rules, {"name": name})
        if not rows:
            return None, []
        agent = AgentRef(rows[0][0], name, AgentStatus(rows[0][1]))
        rules = [self._rules.get(r[2:]) for r in rows if r[2] is not None]
        return agent, rules

    def _decide(
        self,
        d: Driver,
        agent: AgentRef,
        rules: Sequence[Rule],
        quote: Quote,
        now: datetime,
        *,
        lock: bool = False,
        released: Mapping[tuple[int, int], Decimal] | None = None,
    ) -> Decision:
        denials: list[Denial] = []
        alerts_: list[Denial] = []
        verdicts: list[Verdict] = []
        if agent.status == AgentStatus.paused:
            denials.append(Denial(None, "agent-paused", f"agent {agent.name!r} is paused"))
        rules = [r for r in rules if r.applies_to(agent.id, quote)]
        counted_rules = [r for r in rules if r.counted]
        if lock and self._pg and counted_rules:
            # Lock the counted rules in id order before reading their counters: the counter read
            # below is a new statement, so at READ COMMITTED it sees every commit made before the
            # locks were granted. (SQLite: BEGIN IMMEDIATE already holds the write lock.)
            locked = {
                row.id: row
                for row in map(
                    self._rules.get, d.all(self._sql.lock_rules, {"rule_ids": [r.id for r in counted_rules]})
                )
            }
            if any(locked.get(r.id) != r for r in counted_rules):
                # A rule changed (or went) while this waited for its lock: decide with it as it now is.
                rules = [locked[r.id] if r.counted else r for r in rules if not r.counted or r.id in locked]
                rules = [r for r in rules if r.enabled and r.applies_to(agent.id, quote)]
                counted_rules = [r for r in rules if r.counted]
        usage = self._usage(d, counted_rules, now)
        if released:
            for rule in counted_rules:
                current, low = buckets(rule.period, rule.window_seconds, now)
                freed = sum((v for (r, b), v in released.items() if r == rule.id and low <= b <= current), ZERO)
                if freed and rule.id in usage:
                    u = usage[rule.id]
                    usage[rule.id] = Usage(u.spent, u.held - freed, u.requests)
        for rule in rules:
            verdict = evaluate(rule, quote, usage.get(rule.id))
            verdicts.append(verdict)
            entry = Denial(rule.name, rule.type, verdict.reason)
            if not verdict.ok:
                (denials if rule.action == RuleAction.deny else alerts_).append(entry)
            elif rule.alert_at and verdict.usage_after is not None and rule.limit_amount:
                if verdict.usage_after * 100 >= rule.limit_amount * rule.alert_at:
                    alerts_.append(
                        Denial(
                            rule.name,
                            "threshold",
                            (
                                f"{rule.name}: {usd_str(verdict.usage_after)} of {usd_str(rule.limit_amount)} "
                                f"reaches the alert threshold of {rule.alert_at}%"
                            ),
                        )
                    )
        return Decision(quote, agent, tuple(denials), tuple(alerts_), tuple(verdicts))

    def _usage(self, d: Driver, rules: Sequence[Rule], now: datetime) -> dict[int, Usage]:
        if not rules:
            return {}
        params: dict[str, int] = {}
        for i, rule in enumerate(rules):
            current, low = buckets(rule.period, rule.window_seconds, now)
            params[f"r{i}"], params[f"lo{i}"], params[f"hi{i}"] = rule.id, low, current
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

    def _insert_held(self, d: Driver, values: dict[str, Any], holds_: list[tuple[int, int]]) -> int:
        """The pending transaction, its estimate line, its holds and the counter increments."""
        sql = self._sql
        if self._pg:
            params = {**values, "rule_ids": [r for r, _ in holds_], "buckets": [b for _, b in holds_]}
            return int(d.one(sql.insert_held_tx, params)[0])  # type: ignore[index]
        d.execute(sql.insert_tx, values)
        tx_id = d.lastrowid
        d.execute(
            sql.insert_line,
            {
                "tx_id": tx_id,
                "kind": "estimate",
                "amount": values["estimated_cost"],
                "note": None,
                "created_at": values["created_at"],
            },
        )
        if holds_:
            upsert_sql, holds_sql = sql.hold_counters(len(holds_))
            held: dict[str, Any] = {"tx_id": tx_id, "est": values["estimated_cost"]}
            for i, (rule_id, bucket) in enumerate(holds_):
                held[f"r{i}"], held[f"b{i}"] = rule_id, bucket
            d.execute(upsert_sql, held)
            d.execute(holds_sql, held)
        return tx_id

    def _record_alerts(self, conn: Connection, tx_id: int, agent: AgentRef, decision: Decision, now: datetime) -> None:
        by_name = {v.rule.name: v.rule for v in decision.verdicts}
        for entry in decision.alerts:
            rule = by_name[entry.rule]
            dedupe = None
            if entry.type == "threshold":
                bucket, _ = buckets(rule.period, rule.window_seconds, now)
                dedupe = f"threshold:{rule.id}:{rule.version}:{bucket}"
            ins = self._upsert(alerts).values(
                rule_id=rule.id,
                rule_name=rule.name,
                agent_id=agent.id,
                transaction_id=tx_id,
                kind="threshold" if dedupe else "rule",
                dedupe_key=dedupe,
                message=entry.reason,
                created_at=now,
            )
            conn.execute(ins.on_conflict_do_nothing() if dedupe else ins)

    # --- resolution -----------------------------------------------------------------------------

    def complete(self, tx_id: int, *, actual: Decimal | str | None = None, response: Any = None) -> Transaction:
        """Settle a pending (or unknown) transaction, choosing its actual cost: `actual` (USD) when
        given; else priced from an upstream `response`'s image sizes (the estimate when the response
        has none); else the estimate. Records where the actual came from as the `actual_source` fact.

        Raises InvalidRequest (both given, a bad amount or response), NotFound, Conflict."""
        if actual is not None and response is not None:
            raise InvalidRequest("actual: give an actual cost or a response, not both", field="actual")
        facts: dict[str, Any] = {}
        if actual is not None:
            amount = parse_amount(actual, "actual")
            facts["actual_source"] = "given"
        else:
            tx = self.transaction(tx_id, detail=response is not None)
            if response is not None:
                from .settlement import actual_from_response

                assert tx.detail is not None
                amount, facts = actual_from_response(tx, tx.detail.request, response, book=self.book)
            else:
                amount = tx.estimated_cost
                facts["actual_source"] = "estimate (no actual given)"
        return self.settle(tx_id, amount, facts=facts)

    def settle(
        self,
        tx_id: int,
        actual: Decimal,
        *,
        facts: Mapping[str, Any] | None = None,
        upstream_request_id: str | None = None,
        upstream_status: int | None = None,
        response: Any = None,
        allow_expired: bool = False,
        alert: str | None = None,
    ) -> Transaction:
        """Complete a transaction at its `actual` cost (USD): the hold is released and the actual
        counted as spent; an actual above the estimate is recorded as a `variance` fact. `alert`
        records an alert (kind "anomaly") in the same database transaction.

        Settles `pending` and `unknown` transactions (and `expired` ones with `allow_expired`: a run
        whose answer came after its hold expired). Raises InvalidRequest, NotFound, Conflict."""
        if actual < 0:
            raise InvalidRequest("actual: must not be negative", field="actual")
        storable(actual, "actual")
        allowed = (TxStatus.pending, TxStatus.unknown, *((TxStatus.expired,) if allow_expired else ()))
        now = self.clock()
        with writing(self.engine) as conn:
            d = Driver(conn)
            row = self._lock_tx(d, tx_id, allowed, "complete")
            est = row.estimated_cost
            notes = [("variance", usd_str(actual - est))] if actual > est else []
            notes += (facts or {}).items()
            moved = movement(counted(row.status, est), counted(TxStatus.completed, est, actual))
            row = self._set_status(
                d,
                row,
                TxStatus.completed,
                now,
                line=("actual", actual),
                notes=notes,
                actual_cost=actual,
                completed_at=now,
                upstream_request_id=upstream_request_id,
                upstream_status=upstream_status,
                response_json=json.dumps(response) if response is not None else None,
            )
            self._move_counters(d, tx_id, moved, locked=self._pg)
            if alert is not None:
                conn.execute(
                    alerts.insert().values(
                        rule_id=None,
                        rule_name="(anomaly)",
                        agent_id=row.agent_id,
                        transaction_id=tx_id,
                        kind="anomaly",
                        dedupe_key=None,
                        message=alert,
                        created_at=now,
                    )
                )
            return transaction_record(row, row.agent_name)

    def fail(
        self, tx_id: int, reason: str, *, upstream_status: int | None = None, facts: Mapping[str, Any] | None = None
    ) -> Transaction:
        """The upstream refused or errored before generating: hold released, nothing spent."""
        return self._release(tx_id, TxStatus.failed, (TxStatus.pending,), reason, upstream_status, facts)

    def void(self, tx_id: int, reason: str | None = None) -> Transaction:
        """Release a pending hold (or an unknown outcome's counted estimate) by hand."""
        return self._release(tx_id, TxStatus.voided, (TxStatus.pending, TxStatus.unknown), reason, None, None)

    def mark_unknown(self, tx_id: int, reason: str, *, facts: Mapping[str, Any] | None = None) -> Transaction:
        """No answer after sending: the estimate stays counted as spent until settled or voided."""
        return self._release(tx_id, TxStatus.unknown, (TxStatus.pending,), reason, None, facts)

    def _release(
        self,
        tx_id: int,
        to: TxStatus,
        allowed: tuple[TxStatus, ...],
        reason: str | None,
        upstream_status: int | None,
        facts: Mapping[str, Any] | None,
    ) -> Transaction:
        now = self.clock()
        with writing(self.engine) as conn:
            d = Driver(conn)
            row = self._lock_tx(
                d, tx_id, allowed, {"failed": "fail", "voided": "void", "unknown": "mark unknown"}[to.value]
            )
            est = row.estimated_cost
            moved = movement(counted(row.status, est), counted(to, est))
            row = self._set_status(
                d,
                row,
                to,
                now,
                notes=(facts or {}).items(),
                outcome=reason,
                upstream_status=upstream_status,
                completed_at=now if to != TxStatus.unknown else None,
            )
            self._move_counters(d, tx_id, moved, locked=self._pg)
            return transaction_record(row, row.agent_name)

    def expire(self, older_than: float | None = None) -> list[int]:
        """Release every pending hold older than the hold TTL (or `older_than` seconds); the ids expired."""
        if older_than is not None and not 0 <= older_than < float("inf"):
            raise InvalidRequest("older_than: a finite number of seconds ≥ 0", field="older_than")
        now = self.clock()
        with writing(self.engine) as conn:
            return self._expire_stale(conn, now, older_than)

    def _cutoff(self, now: datetime, older_than: float | None = None) -> datetime:
        seconds = self.hold_ttl if older_than is None else older_than
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError:  # older than the calendar: nothing is that old
            return datetime.min.replace(tzinfo=now.tzinfo)

    def _expire_stale(self, conn: Connection, now: datetime, older_than: float | None = None) -> list[int]:
        cutoff = self._cutoff(now, older_than)
        t = transactions.c
        stale = [t.status == TxStatus.pending, t.created_at < cutoff]
        if self._pg:
            # The lock order (module docstring): the transactions' rows, their rules, then the rollup
            # rows that the update's trigger writes.
            ids = conn.execute(select(t.id).where(*stale).order_by(t.id).with_for_update()).scalars().all()
            if not ids:
                return []
            conn.execute(
                select(spending_rules.c.id)
                .where(spending_rules.c.id.in_(select(holds.c.rule_id).where(holds.c.transaction_id.in_(ids))))
                .order_by(spending_rules.c.id)
                .with_for_update(key_share=True)
            )
            stale = [t.id.in_(ids), t.status == TxStatus.pending]
        rows = conn.execute(
            update(transactions)
            .where(*stale)
            .values(status=TxStatus.expired, completed_at=now, outcome="hold expired (older than the hold TTL)")
            .returning(t.id, t.estimated_cost)
        ).all()
        d = Driver(conn)
        for tx_id, est in sorted(rows):
            moved = movement(counted(TxStatus.pending, est), counted(TxStatus.expired, est))
            self._move_counters(d, tx_id, moved, locked=True)
        return sorted(r[0] for r in rows)

    def _lock_tx(self, d: Driver, tx_id: int, allowed: tuple[TxStatus, ...], verb: str) -> Any:
        """The transaction's row (with its agent's name), locked (PostgreSQL: FOR UPDATE)."""
        raw = d.one(self._sql.lock_tx, {"tx_id": tx_id})
        if raw is None:
            raise NotFound(f"no transaction {tx_id}", id=tx_id)
        row = tx_row(raw)
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

    # --- notes ----------------------------------------------------------------------------------

    def add_cost(
        self, tx_id: int, amount: Decimal, *, kind: str = "adjustment", note: str | None = None
    ) -> Transaction:
        """An adjustment (USD, positive or negative) to a completed transaction: a new cost line,
        counted in its budgets as `ledger.store.spend` says (a credit never takes it below zero)."""
        if kind != "adjustment":
            raise InvalidRequest(f"kind: only adjustment cost lines can be added (got {kind!r})", field="kind")
        storable(amount, "amount")
        now = self.clock()
        with writing(self.engine) as conn:
            d = Driver(conn)
            row = self._lock_tx(d, tx_id, (TxStatus.completed,), "adjust")
            before = from_nano(int(d.one(self._sql.adjustments, {"tx_id": tx_id})[0]))  # type: ignore[index]
            storable(before + amount, "amount")
            est, actual = row.estimated_cost, row.actual_cost
            moved = movement(
                counted(TxStatus.completed, est, actual, before),
                counted(TxStatus.completed, est, actual, before + amount),
            )
            self._move_counters(d, tx_id, moved)  # rules before the line: its trigger writes a rollup row
            d.execute(
                self._sql.insert_line,
                {"tx_id": tx_id, "kind": kind, "amount": to_nano(amount), "note": note, "created_at": d.ts(now)},
            )
            return transaction_record(row, row.agent_name)

    def add_fact(self, tx_id: int, key: str, value: Any) -> Transaction:
        """Attach a key/value note (1–100 character key) to any transaction."""
        if not key or len(key) > 100:
            raise InvalidRequest("fact: the key must be 1–100 characters", field="key")
        now = self.clock()
        with writing(self.engine) as conn:
            if conn.execute(select(transactions.c.id).where(transactions.c.id == tx_id)).first() is None:
                raise NotFound(f"no transaction {tx_id}", id=tx_id)
            self._add_facts(Driver(conn), tx_id, {key: value}, now)
            return load_transaction(conn, tx_id)

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

    # --- reading --------------------------------------------------------------------------------

    def transaction(self, tx_id: int, *, detail: bool = False) -> Transaction:
        """One transaction; with `detail`, its stored request, cost lines, facts and result. NotFound."""
        with reading(self.engine) as conn:
            return load_transaction(conn, tx_id, detail=detail)

    def transactions(
        self,
        *,
        agent: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[Transaction]:
        """Transactions newest first: `since` inclusive, `until` exclusive (aware datetimes)."""
        with reading(self.engine) as conn:
            return list_transactions(conn, agent=agent, status=status, since=since, until=until, limit=limit)

    # --- agents ---------------------------------------------------------------------------------

    def _create_agent_on_first_use(self, conn: Connection, name: str, now: datetime) -> AgentRef:
        if not self.auto_create:
            raise _unknown_agent(name)
        from ..store.models import agents
        from .admin import write_audit

        created = conn.execute(
            self._upsert(agents)
            .values(name=name, status=AgentStatus.active, created_at=now, updated_at=now)
            .on_conflict_do_nothing()
            .returning(agents.c.id)
        ).first()
        agent = find_agent(conn, name)
        assert agent is not None and agent.id is not None
        if created is not None:  # not when a concurrent first use created it (PostgreSQL waits for that one)
            write_audit(
                conn,
                "agent",
                agent.id,
                name,
                "create",
                None,
                {"name": name, "status": "active", "created": "on first use"},
                now,
            )
        return agent

    def _replay(self, conn: Connection, existing: Any, digest: str, key: str) -> Authorization:
        if existing.request_hash != digest:
            raise Conflict(
                f"idempotency key {key!r} was already used for a different request (transaction {existing.id})",
                field="idempotency_key",
                id=existing.id,
            )
        return Authorization(load_transaction(conn, existing.id), None, replayed=True)

    # --- the gateway's queue requests -----------------------------------------------------------

    def name_request(self, tx_id: int, request_id: str) -> str:
        """Record the queue request id a gateway answered a submit with for transaction `tx_id`;
        a transaction that already has one (an idempotent retry) keeps it. Returns the id in force."""
        from ..store.models import queue_requests
        from ..store.queries import queue_request_id_of

        if not 1 <= len(request_id) <= 64:
            raise InvalidRequest("request_id: 1–64 characters", field="request_id")
        now = self.clock()
        try:
            with writing(self.engine) as conn:
                existing = queue_request_id_of(conn, tx_id)
                if existing is not None:
                    return existing
                conn.execute(
                    queue_requests.insert().values(request_id=request_id, transaction_id=tx_id, created_at=now)
                )
                return request_id
        except IntegrityError:  # a concurrent retry named it first
            with reading(self.engine) as conn:
                existing = queue_request_id_of(conn, tx_id)
            if existing is None:
                raise
            return existing

    def queued_transaction(self, request_id: str, *, detail: bool = False) -> Transaction:
        """The transaction of a gateway queue request id, in one read transaction (no write:
        status polls call this every 0.1 s). NotFound for an unknown id."""
        from ..store.queries import queued_transaction_id

        with reading(self.engine) as conn:
            tx_id = queued_transaction_id(conn, request_id)
            if tx_id is None:
                raise NotFound(f"no request {request_id!r}", request_id=request_id)
            return load_transaction(conn, tx_id, detail=detail)
