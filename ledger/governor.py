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
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from pricing import Quote
from pricing.money import ZERO, display_price, parse_usd, usd_str

from .clock import Clock, iso, utcnow
from .db import reading, writing
from .errors import Conflict, InvalidRequest, NotFound
from .models import (
    AgentStatus, RuleAction, TxStatus, agents, alerts, audit_log, cost_lines, facts, holds, rule_counters,
    spending_rules, transactions,
)
from .periods import buckets
from .rules import Rule, Usage, Verdict, evaluate

DEFAULT_HOLD_TTL = 900.0
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
    kept: dict[str, Any] = {}
    for key, value in body.items():
        if any(h in key.lower() for h in _SECRET_HINTS):
            continue
        if isinstance(value, str) and value.startswith("data:") and len(value) > 200:
            value = f"{value[:value.find(',') + 1]}…({len(value)} chars)"
        kept[key] = value
    if quote.operation == "upscale":
        kept["input_size"] = f"{quote.input_width}x{quote.input_height}"
    return kept


class Governor:
    def __init__(self, engine: Engine, *, clock: Clock = utcnow, hold_ttl: float | None = None,
                 auto_create: bool | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.hold_ttl = hold_ttl if hold_ttl is not None else hold_ttl_from_env()
        self.auto_create = auto_create if auto_create is not None else auto_create_from_env()
        self._pg = engine.dialect.name == "postgresql"
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
            agent = self._find_agent(conn, agent_name)
            if agent is None:
                if not self.auto_create:
                    raise _unknown_agent(agent_name)
                agent = AgentRef(None, agent_name, AgentStatus.active.value)
            return self._decide(conn, agent, quote, now)

    def authorize(self, agent_name: str, quote: Quote, body: Mapping[str, Any], *,
                  idempotency_key: str | None = None) -> Authorization:
        """Record a transaction and hold its estimate in every matching budget, or record the denial."""
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
        with writing(self.engine) as conn:
            agent = self._find_agent(conn, agent_name) or self._create_agent_on_first_use(conn, agent_name, now)
            assert agent.id is not None
            if key is not None:
                existing = self._by_key(conn, agent.id, key)
                if existing is not None:
                    return self._replay(conn, existing, digest, key)
            decision = self._decide(conn, agent, quote, now, lock=True)
            if not decision.allowed and may_expire and self._has_stale_holds(conn, now):
                raise _StaleHolds
            status = TxStatus.pending if decision.allowed else TxStatus.denied
            denial = None
            if not decision.allowed:
                first = decision.denials[0]
                denial = {"rule": first["rule"], "type": first["type"], "reason": first["reason"],
                          "denials": decision.denials}
            tx_id = conn.execute(insert(transactions).values(
                agent_id=agent.id, endpoint=quote.endpoint, model=quote.model, operation=quote.operation,
                request_json=json.dumps(stored_request(body, quote), default=str), request_hash=digest,
                price_book=quote.price_book, estimated_cost=quote.amount, status=status,
                idempotency_key=key, denial_json=json.dumps(denial) if denial else None, created_at=now,
            ).returning(transactions.c.id)).scalar_one()
            if decision.allowed:
                conn.execute(insert(cost_lines).values(
                    transaction_id=tx_id, kind="estimate", amount=quote.amount, note=None, created_at=now))
                self._hold(conn, tx_id, quote, decision.verdicts, now)
                self._record_alerts(conn, tx_id, agent, decision, now)
            tx = self._tx_json_from(conn, tx_id)
        return Authorization(tx, decision)

    def _decide(self, conn: Connection, agent: AgentRef, quote: Quote, now: datetime, *,
                lock: bool = False) -> Decision:
        decision = Decision(quote, agent)
        if agent.status == AgentStatus.paused:
            decision.denials.append({"rule": None, "type": "agent-paused",
                                     "reason": f"agent {agent.name!r} is paused"})
        rules = [r for r in self._rules_in_scope(conn, agent.id) if r.applies_to(agent.id, quote)]
        counted = [r for r in rules if r.counted]
        if lock:
            self._lock_rules(conn, [r.id for r in counted])
        usage = self._usage(conn, counted, now)
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

    def _usage(self, conn: Connection, rules: Sequence[Rule], now: datetime) -> dict[int, Usage]:
        if not rules:
            return {}
        conds = []
        for rule in rules:
            current, low = buckets(rule.period, rule.window_seconds, now)
            conds.append(and_(rule_counters.c.rule_id == rule.id,
                              rule_counters.c.bucket.between(low, current)))
        c = rule_counters.c
        rows = conn.execute(select(c.rule_id, func.sum(c.spent), func.sum(c.held), func.sum(c.requests))
                            .where(or_(*conds)).group_by(c.rule_id))
        # SUM keeps the Money type: the sums arrive as Decimal USD.
        return {r[0]: Usage(r[1] or ZERO, r[2] or ZERO, int(r[3] or 0)) for r in rows}

    def _hold(self, conn: Connection, tx_id: int, quote: Quote, verdicts: Iterable[Verdict], now: datetime) -> None:
        rows = []
        for verdict in verdicts:
            rule = verdict.rule
            if rule.counted:
                current, _ = buckets(rule.period, rule.window_seconds, now)
                rows.append({"rule_id": rule.id, "bucket": current})
        if not rows:
            return
        rows.sort(key=lambda r: r["rule_id"])  # one lock order for every writer
        held = quote.amount
        ins = self._upsert(rule_counters).values(
            [{**r, "spent": ZERO, "held": held, "requests": 1} for r in rows])
        conn.execute(ins.on_conflict_do_update(
            index_elements=[rule_counters.c.rule_id, rule_counters.c.bucket],
            set_={"held": rule_counters.c.held + ins.excluded.held,
                  "requests": rule_counters.c.requests + ins.excluded.requests}))
        conn.execute(insert(holds).values([{**r, "transaction_id": tx_id} for r in rows]))

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
            row = self._lock_tx(conn, tx_id, allowed, "complete")
            est = row.estimated_cost
            held_delta, spent_delta = {
                TxStatus.pending: (-est, actual), TxStatus.unknown: (ZERO, actual - est),
                TxStatus.expired: (ZERO, actual),
            }[TxStatus(row.status)]
            self._set_status(conn, row, TxStatus.completed, now, actual_cost=actual, completed_at=now,
                             upstream_request_id=upstream_request_id, upstream_status=upstream_status,
                             response_json=json.dumps(response) if response is not None else None)
            conn.execute(insert(cost_lines).values(transaction_id=tx_id, kind="actual", amount=actual,
                                                   note=None, created_at=now))
            if actual > est:
                conn.execute(insert(facts).values(transaction_id=tx_id, key="variance",
                                                  value=usd_str(actual - est), created_at=now))
            self._move_counters(conn, tx_id, held_delta, spent_delta)
            self._add_facts(conn, tx_id, facts_ or {}, now)
            return self._tx_json_from(conn, tx_id)

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
            row = self._lock_tx(conn, tx_id, allowed, {"failed": "fail", "voided": "void",
                                                        "unknown": "mark unknown"}[to.value])
            est = row.estimated_cost
            if to == TxStatus.unknown:
                deltas = (-est, est)
            elif row.status == TxStatus.unknown:
                deltas = (ZERO, -est)
            else:
                deltas = (-est, ZERO)
            self._set_status(conn, row, to, now, outcome=reason, upstream_status=upstream_status,
                             completed_at=now if to != TxStatus.unknown else None)
            self._move_counters(conn, tx_id, *deltas)
            self._add_facts(conn, tx_id, facts_ or {}, now)
            return self._tx_json_from(conn, tx_id)

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
            for tx_id, est in sorted(rows):
                self._move_counters(conn, tx_id, -est, ZERO, locked=True)
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

    def _lock_tx(self, conn: Connection, tx_id: int, allowed: tuple[TxStatus, ...], verb: str) -> Any:
        row = conn.execute(select(transactions.c.id, transactions.c.status, transactions.c.estimated_cost)
                           .where(transactions.c.id == tx_id).with_for_update()).first()
        if row is None:
            raise NotFound(f"no transaction {tx_id}", id=tx_id)
        if row.status not in allowed:
            raise Conflict(f"cannot {verb} transaction {tx_id}: it is {row.status.value}, not "
                           f"{' or '.join(s.value for s in allowed)}", id=tx_id, status=row.status.value)
        return row

    def _set_status(self, conn: Connection, row: Any, to: TxStatus, now: datetime, **values: Any) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        done = conn.execute(update(transactions).where(transactions.c.id == row.id,
                                                       transactions.c.status == row.status)
                            .values(status=to, **values)).rowcount
        if done != 1:  # pragma: no cover - guarded by the row lock; kept as a last line of defence
            raise Conflict(f"transaction {row.id} changed while it was being resolved")

    def _move_counters(self, conn: Connection, tx_id: int, held_delta: Decimal, spent_delta: Decimal, *,
                       locked: bool = False) -> None:
        if held_delta == 0 and spent_delta == 0:
            return
        c = rule_counters.c
        if not locked:
            self._lock_rules(conn, select(holds.c.rule_id).where(holds.c.transaction_id == tx_id))
        mine = select(holds.c.rule_id, holds.c.bucket).where(holds.c.transaction_id == tx_id)
        conn.execute(update(rule_counters).where(tuple_(c.rule_id, c.bucket).in_(mine))
                     .values(held=c.held + held_delta, spent=c.spent + spent_delta))

    # --- notes ----------------------------------------------------------------------------------

    def add_cost(self, tx_id: int, amount: Decimal, *, kind: str = "adjustment", note: str | None = None) -> dict[str, Any]:
        """An adjustment to a completed transaction's cost: a new cost line, counted in its budgets."""
        if kind != "adjustment":
            raise InvalidRequest(f"kind: only adjustment cost lines can be added (got {kind!r})", field="kind")
        now = self.clock()
        with writing(self.engine) as conn:
            self._lock_tx(conn, tx_id, (TxStatus.completed,), "adjust")
            conn.execute(insert(cost_lines).values(transaction_id=tx_id, kind=kind, amount=amount, note=note,
                                                   created_at=now))
            self._move_counters(conn, tx_id, ZERO, amount)
            return self._tx_json_from(conn, tx_id)

    def add_fact(self, tx_id: int, key: str, value: Any) -> dict[str, Any]:
        if not key or len(key) > 100:
            raise InvalidRequest("fact: KEY must be 1–100 characters", field="key")
        now = self.clock()
        with writing(self.engine) as conn:
            if conn.execute(select(transactions.c.id).where(transactions.c.id == tx_id)).first() is None:
                raise NotFound(f"no transaction {tx_id}", id=tx_id)
            self._add_facts(conn, tx_id, {key: value}, now)
            return self._tx_json_from(conn, tx_id)

    def _add_facts(self, conn: Connection, tx_id: int, values: Mapping[str, Any], now: datetime) -> None:
        if values:
            conn.execute(insert(facts).values([
                {"transaction_id": tx_id, "key": k, "value": v if isinstance(v, str) else json.dumps(v, default=str),
                 "created_at": now} for k, v in values.items()]))

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
        conn.execute(self._upsert(agents).values(name=name, status=AgentStatus.active, created_at=now,
                                                 updated_at=now).on_conflict_do_nothing())
        agent = self._find_agent(conn, name)
        assert agent is not None and agent.id is not None
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
