"""Administration: agents (with hashed API keys), spending rules, alerts, the audit log.

Every change to an agent or a rule writes an audit entry in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from pricing.money import ZERO

from .clock import Clock, iso, utcnow
from .db import reading, writing
from .errors import Conflict, InvalidRequest, NotFound
from .models import (
    AgentStatus, TxStatus, agents, alerts, audit_log, cost_lines, holds, rule_counters, spending_rules, transactions,
)
from .periods import buckets
from .rules import Rule, RuleSpec, rule_to_json, validate_spec

_AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}$")
API_KEY_PREFIX = "pgv_"
#: Changing any of these recounts the rule from the ledger (its old buckets meant something else).
_COUNTING_FIELDS = ("period", "window_seconds", "agent_id", "model_glob", "operation")


def validate_agent_name(name: str) -> None:
    if not _AGENT_NAME.match(name or ""):
        raise InvalidRequest(f"agent: {name!r} is not a valid agent name (letters, digits and . _ : @ / -, "
                             "starting with a letter or digit, at most 200)", field="agent")


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def write_audit(conn: Connection, entity: str, entity_id: int, name: str, action: str,
                before: dict[str, Any] | None, after: dict[str, Any] | None, now: datetime) -> None:
    conn.execute(insert(audit_log).values(
        entity=entity, entity_id=entity_id, entity_name=name, action=action,
        before_json=json.dumps(before, default=str) if before is not None else None,
        after_json=json.dumps(after, default=str) if after is not None else None, created_at=now))


def agent_json(row: Any) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "description": row.description, "status": row.status.value,
            "has_api_key": row.api_key_hash is not None, "api_key_prefix": row.api_key_prefix,
            "created_at": iso(row.created_at), "updated_at": iso(row.updated_at)}


class Admin:
    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock

    # --- agents ---------------------------------------------------------------------------------

    def create_agent(self, name: str, description: str | None = None, *, with_key: bool = True) -> dict[str, Any]:
        validate_agent_name(name)
        now = self.clock()
        key = new_api_key() if with_key else None
        try:
            with writing(self.engine) as conn:
                agent_id = conn.execute(insert(agents).values(
                    name=name, description=description, status=AgentStatus.active,
                    api_key_hash=hash_api_key(key) if key else None, api_key_prefix=key[:10] if key else None,
                    created_at=now, updated_at=now).returning(agents.c.id)).scalar_one()
                doc = agent_json(self._agent_row(conn, agent_id))
                write_audit(conn, "agent", agent_id, name, "create", None, doc, now)
        except IntegrityError:
            raise Conflict(f"agent {name!r} already exists", field="name") from None
        if key:
            doc["api_key"] = key
        return doc

    def rotate_key(self, name: str) -> dict[str, Any]:
        key = new_api_key()
        now = self.clock()
        with writing(self.engine) as conn:
            row = self._agent_by_name(conn, name)
            conn.execute(update(agents).where(agents.c.id == row.id).values(
                api_key_hash=hash_api_key(key), api_key_prefix=key[:10], updated_at=now))
            write_audit(conn, "agent", row.id, name, "rotate-key", {"api_key_prefix": row.api_key_prefix},
                        {"api_key_prefix": key[:10]}, now)
            doc = agent_json(self._agent_row(conn, row.id))
        doc["api_key"] = key
        return doc

    def update_agent(self, name: str, *, status: str | None = None, description: str | None = None) -> dict[str, Any]:
        if status is not None and status not in AgentStatus.__members__:
            raise InvalidRequest(f"status: {status!r}; allowed: active, paused", field="status")
        now = self.clock()
        with writing(self.engine) as conn:
            row = self._agent_by_name(conn, name)
            before = agent_json(row)
            values: dict[str, Any] = {"updated_at": now}
            if status is not None:
                values["status"] = AgentStatus(status)
            if description is not None:
                values["description"] = description
            conn.execute(update(agents).where(agents.c.id == row.id).values(**values))
            after = agent_json(self._agent_row(conn, row.id))
            write_audit(conn, "agent", row.id, name, "update", before, after, now)
            return after

    def agent(self, name: str) -> dict[str, Any]:
        with reading(self.engine) as conn:
            return agent_json(self._agent_by_name(conn, name))

    def agents(self) -> list[dict[str, Any]]:
        with reading(self.engine) as conn:
            return [agent_json(r) for r in conn.execute(select(agents).order_by(agents.c.name))]

    def agent_by_api_key(self, key: str) -> dict[str, Any] | None:
        with reading(self.engine) as conn:
            row = conn.execute(select(agents).where(agents.c.api_key_hash == hash_api_key(key))).first()
            return agent_json(row) if row else None

    def _agent_by_name(self, conn: Connection, name: str) -> Any:
        row = conn.execute(select(agents).where(agents.c.name == name)).first()
        if row is None:
            raise NotFound(f"unknown agent {name!r}", agent=name)
        return row

    def _agent_row(self, conn: Connection, agent_id: int) -> Any:
        return conn.execute(select(agents).where(agents.c.id == agent_id)).one()

    # --- rules ----------------------------------------------------------------------------------

    def create_rule(self, spec: RuleSpec) -> dict[str, Any]:
        values = validate_spec(spec)
        now = self.clock()
        try:
            with writing(self.engine) as conn:
                agent_id = self._scope_agent(conn, spec.agent)
                rule_id = conn.execute(insert(spending_rules).values(
                    **values, agent_id=agent_id, version=1, created_at=now, updated_at=now,
                ).returning(spending_rules.c.id)).scalar_one()
                self._count_existing(conn, rule_id, now)
                doc = self._rule_json(conn, rule_id)
                write_audit(conn, "rule", rule_id, doc["name"], "create", None, doc, now)
                return doc
        except IntegrityError:
            raise Conflict(f"a rule named {values['name']!r} already exists", field="name") from None

    def update_rule(self, name_or_id: str, spec: RuleSpec) -> dict[str, Any]:
        now = self.clock()
        try:
            with writing(self.engine) as conn:
                row = self._rule_row(conn, name_or_id, lock=True)
                existing = Rule.from_row(row)
                values = validate_spec(spec, existing=existing)
                values["agent_id"] = self._scope_agent(conn, spec.agent) if "agent" in spec.given else row.agent_id
                before = self._rule_json(conn, row.id)
                conn.execute(update(spending_rules).where(spending_rules.c.id == row.id).values(
                    **values, version=row.version + 1, updated_at=now))
                if any(values[f] != getattr(row, f) for f in _COUNTING_FIELDS) or (
                        values["enabled"] and not row.enabled):
                    self._count_existing(conn, row.id, now)
                after = self._rule_json(conn, row.id)
                write_audit(conn, "rule", row.id, after["name"], "update", before, after, now)
                return after
        except IntegrityError:
            raise Conflict(f"a rule named {spec.name!r} already exists", field="name") from None

    def delete_rule(self, name_or_id: str) -> dict[str, Any]:
        now = self.clock()
        with writing(self.engine) as conn:
            row = self._rule_row(conn, name_or_id, lock=True)
            before = self._rule_json(conn, row.id)
            self._reset_counting(conn, row.id)
            conn.execute(update(alerts).where(alerts.c.rule_id == row.id).values(rule_id=None))
            conn.execute(delete(spending_rules).where(spending_rules.c.id == row.id))
            write_audit(conn, "rule", row.id, row.name, "delete", before, None, now)
            return before

    def rule(self, name_or_id: str) -> dict[str, Any]:
        with reading(self.engine) as conn:
            return self._rule_json(conn, self._rule_row(conn, name_or_id).id)

    def rules(self) -> list[dict[str, Any]]:
        with reading(self.engine) as conn:
            rows = conn.execute(select(spending_rules, agents.c.name.label("agent_name"))
                                .outerjoin(agents, agents.c.id == spending_rules.c.agent_id)
                                .order_by(spending_rules.c.id)).all()
            return [rule_to_json(Rule.from_row(r), r.agent_name) for r in rows]

    def _reset_counting(self, conn: Connection, rule_id: int) -> None:
        conn.execute(delete(holds).where(holds.c.rule_id == rule_id))
        conn.execute(delete(rule_counters).where(rule_counters.c.rule_id == rule_id))

    def _count_existing(self, conn: Connection, rule_id: int, now: datetime) -> None:
        """(Re)build a rule's counters from the ledger: a new or re-scoped budget counts the
        matching spend and requests already in its current period or window.

        PostgreSQL: `transactions` is share-locked meanwhile, so no authorization or settlement
        commits between the count and the rule becoming visible. SQLite: the write lock does it.
        """
        self._reset_counting(conn, rule_id)
        rule = Rule.from_row(conn.execute(select(spending_rules).where(spending_rules.c.id == rule_id)).one())
        if not rule.counted or not rule.enabled:
            return
        if conn.dialect.name == "postgresql":
            conn.execute(text("LOCK TABLE transactions IN SHARE MODE"))
        _, low = buckets(rule.period, rule.window_seconds, now)
        t = transactions.c
        adjustments = (select(cost_lines.c.transaction_id, func.sum(cost_lines.c.amount).label("amount"))
                       .where(cost_lines.c.kind == "adjustment").group_by(cost_lines.c.transaction_id).subquery())
        query = (select(t.id, t.agent_id, t.endpoint, t.model, t.operation, t.status, t.estimated_cost,
                        t.actual_cost, t.created_at, adjustments.c.amount.label("adjusted"))
                 .outerjoin(adjustments, adjustments.c.transaction_id == t.id)
                 .where(t.created_at >= datetime.fromtimestamp(low, UTC), t.created_at <= now,
                        t.status != TxStatus.denied))
        if rule.agent_id is not None:
            query = query.where(t.agent_id == rule.agent_id)
        counters: dict[int, list[Any]] = {}
        placed = []
        for tx in conn.execute(query):
            if not rule.applies_to(tx.agent_id, tx):
                continue
            bucket, _ = buckets(rule.period, rule.window_seconds, tx.created_at)
            spent, held, requests = counters.setdefault(bucket, [ZERO, ZERO, 0])
            if tx.status == TxStatus.pending:
                held += tx.estimated_cost
            elif tx.status == TxStatus.completed:
                spent += tx.actual_cost + (tx.adjusted or ZERO)
            elif tx.status == TxStatus.unknown:
                spent += tx.estimated_cost
            counters[bucket] = [spent, held, requests + 1]
            placed.append({"transaction_id": tx.id, "rule_id": rule_id, "bucket": bucket})
        if counters:
            conn.execute(insert(rule_counters).values([
                {"rule_id": rule_id, "bucket": b, "spent": v[0], "held": v[1], "requests": v[2]}
                for b, v in sorted(counters.items())]))
            conn.execute(insert(holds).values(placed))

    def _scope_agent(self, conn: Connection, name: str | None) -> int | None:
        if not name:
            return None
        row = conn.execute(select(agents.c.id).where(agents.c.name == name)).first()
        if row is None:
            raise NotFound(f"unknown agent {name!r}: create it first (`pixelgov agents create {name}`)", agent=name)
        return row.id

    def _rule_row(self, conn: Connection, name_or_id: str, *, lock: bool = False) -> Any:
        cond = spending_rules.c.name == str(name_or_id)
        if str(name_or_id).isdigit():
            cond = cond | (spending_rules.c.id == int(name_or_id))
        query = select(spending_rules).where(cond).order_by((spending_rules.c.name == str(name_or_id)).desc())
        row = conn.execute(query.with_for_update() if lock else query).first()
        if row is None:
            raise NotFound(f"unknown rule {name_or_id!r}", rule=str(name_or_id))
        return row

    def _rule_json(self, conn: Connection, rule_id: int) -> dict[str, Any]:
        row = conn.execute(select(spending_rules, agents.c.name.label("agent_name"))
                           .outerjoin(agents, agents.c.id == spending_rules.c.agent_id)
                           .where(spending_rules.c.id == rule_id)).one()
        return rule_to_json(Rule.from_row(row), row.agent_name)

    # --- alerts and audit -----------------------------------------------------------------------

    def alerts(self, *, limit: int = 100) -> list[dict[str, Any]]:
        with reading(self.engine) as conn:
            rows = conn.execute(select(alerts, agents.c.name.label("agent_name"))
                                .outerjoin(agents, agents.c.id == alerts.c.agent_id)
                                .order_by(alerts.c.id.desc()).limit(limit)).all()
        return [{"id": r.id, "rule": r.rule_name, "kind": r.kind, "agent": r.agent_name,
                 "transaction_id": r.transaction_id, "message": r.message, "created_at": iso(r.created_at)}
                for r in rows]

    def audit(self, *, entity: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if entity:
            query = query.where(audit_log.c.entity == entity)
        with reading(self.engine) as conn:
            rows = conn.execute(query).all()
        return [{"id": r.id, "entity": r.entity, "entity_id": r.entity_id, "name": r.entity_name,
                 "action": r.action, "before": json.loads(r.before_json) if r.before_json else None,
                 "after": json.loads(r.after_json) if r.after_json else None, "created_at": iso(r.created_at)}
                for r in rows]

    def counts(self) -> dict[str, int]:
        with reading(self.engine) as conn:
            return {"agents": conn.execute(select(func.count()).select_from(agents)).scalar_one(),
                    "rules": conn.execute(select(func.count()).select_from(spending_rules)).scalar_one()}
