"""The rule book: spending rules created, changed and deleted, each change audited and, where it
changes what the rule counts, the rule recounted from the ledger.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from pricing.money import ZERO

from ..errors import Conflict, NotFound, PixelgovError
from ..records import SpendingRule
from ..store.db import reading, writing
from ..store.models import agents, alerts, cost_lines, holds, rule_counters, spending_rules, transactions
from ..store.spend import COUNTS_REQUEST, counted
from ..validation import validate_agent_name
from .audit import Administration, write_audit
from .periods import buckets
from .rules import Rule, RuleSpec, rule_record, validate_spec

MAX_RULE_ID = 2**31 - 1  #: rule ids are INTEGER


#: Changing any of these recounts the rule from the ledger (its old buckets meant something else).
_COUNTING_FIELDS = ("period", "window_seconds", "agent_id", "model_glob", "operation")


class StaleVersion(PixelgovError):
    """An update that carried a version other than the rule's current one (HTTP 409)."""

    code = "conflict"


class RuleBook(Administration):
    """Spending rules."""

    def create_rule(self, spec: RuleSpec) -> SpendingRule:
        """Create a spending rule; it counts the matching spend already in its current period."""
        values = validate_spec(spec)
        now = self.clock()
        try:
            with writing(self.engine) as conn:
                agent_id = self._scope_agent(conn, spec.agent)
                rule_id = conn.execute(
                    insert(spending_rules)
                    .values(
                        **values,
                        agent_id=agent_id,
                        version=1,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(spending_rules.c.id)
                ).scalar_one()
                self._count_existing(conn, rule_id, now)
                rule = self._rule_record(conn, rule_id)
                write_audit(conn, "rule", rule_id, rule.name, "create", None, rule.to_json(), now)
                return rule
        except IntegrityError:
            raise Conflict(
                f"a rule named {values['name']!r} already exists", field="name", reason="duplicate"
            ) from None

    def update_rule(self, name_or_id: str, spec: RuleSpec, *, version: int | None = None) -> SpendingRule:
        """Change the fields `spec.given` names; changing what a rule counts recounts it. With
        `version`, the change applies only if the rule is still at that version (checked under the
        rule's row lock, in the same transaction): StaleVersion naming the current one otherwise."""
        now = self.clock()
        try:
            with writing(self.engine) as conn:
                row = self._rule_row(conn, name_or_id, lock=True)
                if version is not None and row.version != version:
                    raise StaleVersion(
                        f"rule {row.name!r} is at version {row.version}, not {version}: read it again and retry",
                        rule=row.name,
                        current_version=row.version,
                    )
                existing = Rule.from_row(row)
                values = validate_spec(spec, existing=existing)
                values["agent_id"] = self._scope_agent(conn, spec.agent) if "agent" in spec.given else row.agent_id
                before = self._rule_record(conn, row.id).to_json()
                conn.execute(
                    update(spending_rules)
                    .where(spending_rules.c.id == row.id)
                    .values(**values, version=row.version + 1, updated_at=now)
                )
                if any(values[f] != getattr(row, f) for f in _COUNTING_FIELDS) or (
                    values["enabled"] and not row.enabled
                ):
                    self._count_existing(conn, row.id, now)
                after = self._rule_record(conn, row.id)
                write_audit(conn, "rule", row.id, after.name, "update", before, after.to_json(), now)
                return after
        except IntegrityError:
            raise Conflict(f"a rule named {spec.name!r} already exists", field="name", reason="duplicate") from None

    def delete_rule(self, name_or_id: str) -> SpendingRule:
        """Delete a rule (the audit log keeps it); returns it as it was."""
        now = self.clock()
        with writing(self.engine) as conn:
            row = self._rule_row(conn, name_or_id, lock=True)
            before = self._rule_record(conn, row.id)
            self._reset_counting(conn, row.id)
            conn.execute(update(alerts).where(alerts.c.rule_id == row.id).values(rule_id=None))
            conn.execute(delete(spending_rules).where(spending_rules.c.id == row.id))
            write_audit(conn, "rule", row.id, row.name, "delete", before.to_json(), None, now)
            return before

    def rule(self, name_or_id: str) -> SpendingRule:
        """One rule by name (or numeric id); NotFound."""
        with reading(self.engine) as conn:
            return self._rule_record(conn, self._rule_row(conn, name_or_id).id)

    def rules(self) -> list[SpendingRule]:
        """Every spending rule, by id."""
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(spending_rules, agents.c.name.label("agent_name"))
                .outerjoin(agents, agents.c.id == spending_rules.c.agent_id)
                .order_by(spending_rules.c.id)
            ).all()
            return [rule_record(Rule.from_row(r), r.agent_name) for r in rows]

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
        adjustments = (
            select(cost_lines.c.transaction_id, func.sum(cost_lines.c.amount).label("amount"))
            .where(cost_lines.c.kind == "adjustment")
            .group_by(cost_lines.c.transaction_id)
            .subquery()
        )
        query = (
            select(
                t.id,
                t.agent_id,
                t.endpoint,
                t.model,
                t.operation,
                t.status,
                t.estimated_cost,
                t.actual_cost,
                t.created_at,
                adjustments.c.amount.label("adjusted"),
            )
            .outerjoin(adjustments, adjustments.c.transaction_id == t.id)
            .where(t.created_at >= datetime.fromtimestamp(low, UTC), t.created_at <= now, t.status.in_(COUNTS_REQUEST))
        )
        if rule.agent_id is not None:
            query = query.where(t.agent_id == rule.agent_id)
        counters: dict[int, list[Any]] = {}
        placed = []
        for tx in conn.execute(query):
            if not rule.applies_to(tx.agent_id, tx):
                continue
            bucket, _ = buckets(rule.period, rule.window_seconds, tx.created_at)
            spent, held, requests = counters.setdefault(bucket, [ZERO, ZERO, 0])
            now_counted = counted(tx.status, tx.estimated_cost, tx.actual_cost, tx.adjusted or ZERO)
            counters[bucket] = [
                spent + now_counted.spent,
                held + now_counted.held,
                requests + (1 if tx.status in COUNTS_REQUEST else 0),
            ]
            placed.append({"transaction_id": tx.id, "rule_id": rule_id, "bucket": bucket})
        if counters:
            conn.execute(
                insert(rule_counters).values(
                    [
                        {"rule_id": rule_id, "bucket": b, "spent": v[0], "held": v[1], "requests": v[2]}
                        for b, v in sorted(counters.items())
                    ]
                )
            )
            conn.execute(insert(holds).values(placed))

    def _scope_agent(self, conn: Connection, name: str | None) -> int | None:
        if not name:
            return None
        validate_agent_name(name)
        row = conn.execute(select(agents.c.id).where(agents.c.name == name)).first()
        if row is None:
            raise NotFound(
                f"unknown agent {name!r}: a rule can name only an existing agent", agent=name, reason="create_first"
            )
        return int(row.id)

    def _rule_row(self, conn: Connection, name_or_id: str, *, lock: bool = False) -> Any:
        cond = spending_rules.c.name == str(name_or_id)
        text = str(name_or_id)
        if (
            text.isascii() and text.isdigit() and len(text) <= 10 and int(text) <= MAX_RULE_ID
        ):  # an id the column can hold
            cond = cond | (spending_rules.c.id == int(text))
        query = select(spending_rules).where(cond).order_by((spending_rules.c.name == str(name_or_id)).desc())
        row = conn.execute(query.with_for_update() if lock else query).first()
        if row is None:
            raise NotFound(f"unknown rule {name_or_id!r}", rule=str(name_or_id))
        return row

    def _rule_record(self, conn: Connection, rule_id: int) -> SpendingRule:
        row = conn.execute(
            select(spending_rules, agents.c.name.label("agent_name"))
            .outerjoin(agents, agents.c.id == spending_rules.c.agent_id)
            .where(spending_rules.c.id == rule_id)
        ).one()
        return rule_record(Rule.from_row(row), row.agent_name)
