"""Administration: agents (with hashed API keys), spending rules, alerts, the audit log.

Every change to an agent or a rule writes an audit entry in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from pricing.money import ZERO

from ..clock import Clock, utcnow
from ..errors import Conflict, InvalidRequest, NotFound, PixelgovError
from ..records import Agent, AgentStatus, Alert, AuditEntry, SpendingRule
from ..store.db import dialect_insert, reading, writing
from ..store.models import agents, alerts, audit_log, cost_lines, holds, rule_counters, spending_rules, transactions
from ..store.spend import COUNTS_REQUEST, counted
from ..validation import validate_agent_name
from .periods import buckets
from .rules import Rule, RuleSpec, rule_record, validate_spec

API_KEY_PREFIX = "pgv_"
MAX_RULE_ID = 2**31 - 1  #: rule ids are INTEGER
#: Changing any of these recounts the rule from the ledger (its old buckets meant something else).
_COUNTING_FIELDS = ("period", "window_seconds", "agent_id", "model_glob", "operation")


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def write_audit(
    conn: Connection,
    entity: str,
    entity_id: int,
    name: str,
    action: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    now: datetime,
) -> None:
    conn.execute(
        insert(audit_log).values(
            entity=entity,
            entity_id=entity_id,
            entity_name=name,
            action=action,
            before_json=json.dumps(before, default=str) if before is not None else None,
            after_json=json.dumps(after, default=str) if after is not None else None,
            created_at=now,
        )
    )


def agent_record(row: Any, api_key: str | None = None) -> Agent:
    """An `Agent` from an agents row (`api_key` only right after it was made: shown once)."""
    return Agent(
        id=row.id,
        name=row.name,
        description=row.description,
        status=AgentStatus(row.status),
        has_api_key=row.api_key_hash is not None,
        api_key_prefix=row.api_key_prefix,
        created_at=row.created_at,
        updated_at=row.updated_at,
        api_key=api_key,
    )


class StaleVersion(PixelgovError):
    """An update that carried a version other than the rule's current one (HTTP 409)."""

    code = "conflict"


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """An admin-issued gateway key for a fleet of agents (each request names its agent).
    `key` is set only on the record `create_service_key` returns (shown once; stored hashed)."""

    id: int
    name: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    key: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        from ..clock import iso

        doc: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "key_prefix": self.key_prefix,
            "created_at": iso(self.created_at),
            "revoked_at": iso(self.revoked_at),
            "active": self.revoked_at is None,
        }
        if self.key is not None:
            doc["key"] = self.key
        return doc


SERVICE_KEY_PREFIX = "pgs_"


class Admin:
    """Agents, spending rules, alerts and the audit log of one ledger database.

    Every change writes an audit entry in the same database transaction. Returns typed records
    (`ledger.records`); raises InvalidRequest (bad input, nothing written), NotFound (unknown agent
    or rule) and Conflict (a duplicate name).
    """

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock

    def create_agent(self, name: str, description: str | None = None, *, with_key: bool = True) -> Agent:
        """Create an agent; with `with_key` its new API key is on the returned record (stored hashed)."""
        validate_agent_name(name)
        now = self.clock()
        key = new_api_key() if with_key else None
        try:
            with writing(self.engine) as conn:
                agent_id = conn.execute(
                    insert(agents)
                    .values(
                        name=name,
                        description=description,
                        status=AgentStatus.active,
                        api_key_hash=hash_api_key(key) if key else None,
                        api_key_prefix=key[:10] if key else None,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(agents.c.id)
                ).scalar_one()
                agent = agent_record(self._agent_row(conn, agent_id))
                write_audit(conn, "agent", agent_id, name, "create", None, agent.to_json(), now)
        except IntegrityError:
            raise Conflict(f"agent {name!r} already exists", field="name", reason="duplicate") from None
        return replace(agent, api_key=key) if key else agent

    def rotate_key(self, name: str) -> Agent:
        """Replace an agent's API key (the old one stops working); the new key is on the record."""
        key = new_api_key()
        now = self.clock()
        with writing(self.engine) as conn:
            row = self._agent_by_name(conn, name)
            conn.execute(
                update(agents)
                .where(agents.c.id == row.id)
                .values(api_key_hash=hash_api_key(key), api_key_prefix=key[:10], updated_at=now)
            )
            write_audit(
                conn,
                "agent",
                row.id,
                name,
                "rotate-key",
                {"api_key_prefix": row.api_key_prefix},
                {"api_key_prefix": key[:10]},
                now,
            )
            return agent_record(self._agent_row(conn, row.id), key)

    def update_agent(self, name: str, *, status: str | None = None, description: str | None = None) -> Agent:
        """Pause or resume an agent (`status` active|paused), or change its description."""
        if status is not None and status not in AgentStatus.__members__:
            raise InvalidRequest(f"status: {status!r}; allowed: active, paused", field="status")
        now = self.clock()
        with writing(self.engine) as conn:
            row = self._agent_by_name(conn, name)
            before = agent_record(row).to_json()
            values: dict[str, Any] = {"updated_at": now}
            if status is not None:
                values["status"] = AgentStatus(status)
            if description is not None:
                values["description"] = description
            conn.execute(update(agents).where(agents.c.id == row.id).values(**values))
            after = agent_record(self._agent_row(conn, row.id))
            write_audit(conn, "agent", row.id, name, "update", before, after.to_json(), now)
            return after

    def agent(self, name: str) -> Agent:
        """One agent by name; NotFound."""
        with reading(self.engine) as conn:
            return agent_record(self._agent_by_name(conn, name))

    def agents(self) -> list[Agent]:
        """Every agent, by name."""
        with reading(self.engine) as conn:
            return [agent_record(r) for r in conn.execute(select(agents).order_by(agents.c.name))]

    def agent_by_api_key(self, key: str) -> Agent | None:
        """The agent whose API key this is (compared by hash), or None."""
        with reading(self.engine) as conn:
            row = conn.execute(select(agents).where(agents.c.api_key_hash == hash_api_key(key))).first()
            return agent_record(row) if row else None

    def _agent_by_name(self, conn: Connection, name: str) -> Any:
        validate_agent_name(name)
        row = conn.execute(select(agents).where(agents.c.name == name)).first()
        if row is None:
            raise NotFound(f"unknown agent {name!r}", agent=name)
        return row

    def _agent_row(self, conn: Connection, agent_id: int) -> Any:
        return conn.execute(select(agents).where(agents.c.id == agent_id)).one()

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

    def alerts(self, *, limit: int = 100) -> list[Alert]:
        """Alerts, newest first."""
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(alerts, agents.c.name.label("agent_name"))
                .outerjoin(agents, agents.c.id == alerts.c.agent_id)
                .order_by(alerts.c.id.desc())
                .limit(limit)
            ).all()
        return [alert_record(r) for r in rows]

    def audit(self, *, entity: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The audit log of agent and rule changes, newest first (`entity`: agent or rule)."""
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if entity:
            query = query.where(audit_log.c.entity == entity)
        with reading(self.engine) as conn:
            rows = conn.execute(query).all()
        return [
            AuditEntry(
                r.id,
                r.entity,
                r.entity_id,
                r.entity_name,
                r.action,
                json.loads(r.before_json) if r.before_json else None,
                json.loads(r.after_json) if r.after_json else None,
                r.created_at,
            )
            for r in rows
        ]

    def counts(self) -> dict[str, int]:
        """How many agents and rules there are."""
        with reading(self.engine) as conn:
            return {
                "agents": conn.execute(select(func.count()).select_from(agents)).scalar_one(),
                "rules": conn.execute(select(func.count()).select_from(spending_rules)).scalar_one(),
            }

    # --- service keys (the gateway) -------------------------------------------------------------

    def create_service_key(self, name: str) -> ServiceKey:
        """Issue a service key named `name`; the key is on the returned record (shown once, stored hashed)."""
        validate_agent_name(name)
        from ..store.models import service_keys

        key = SERVICE_KEY_PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        try:
            with writing(self.engine) as conn:
                key_id = conn.execute(
                    insert(service_keys)
                    .values(
                        name=name,
                        key_hash=hash_api_key(key),
                        key_prefix=key[:10],
                        created_at=now,
                    )
                    .returning(service_keys.c.id)
                ).scalar_one()
                write_audit(conn, "service-key", key_id, name, "create", None, {"key_prefix": key[:10]}, now)
        except IntegrityError:
            raise Conflict(f"service key {name!r} already exists", field="name", reason="duplicate") from None
        return ServiceKey(key_id, name, key[:10], now, None, key)

    def service_keys(self) -> list[ServiceKey]:
        """Every service key (revoked ones too), by name."""
        from ..store.models import service_keys

        with reading(self.engine) as conn:
            rows = conn.execute(select(service_keys).order_by(service_keys.c.name)).all()
        return [ServiceKey(r.id, r.name, r.key_prefix, r.created_at, r.revoked_at) for r in rows]

    def revoke_service_key(self, name: str) -> ServiceKey:
        """Revoke a service key: it stops working at once. NotFound."""
        from ..store.models import service_keys

        now = self.clock()
        with writing(self.engine) as conn:
            row = conn.execute(select(service_keys).where(service_keys.c.name == name)).first()
            if row is None:
                raise NotFound(f"unknown service key {name!r}", service_key=name)
            if row.revoked_at is None:
                conn.execute(update(service_keys).where(service_keys.c.id == row.id).values(revoked_at=now))
                write_audit(conn, "service-key", row.id, name, "revoke", None, None, now)
            return ServiceKey(row.id, row.name, row.key_prefix, row.created_at, row.revoked_at or now)

    def end_dashboard_session(self, session_id: str, expires_at: datetime) -> None:
        """Record a dashboard logout, so that every gateway worker and host refuses the session from
        now on (`dashboard_session_ended`). Logging out twice is fine. Records of sessions that
        have expired anyway are purged here. InvalidRequest for a malformed id."""
        from ..store.models import dashboard_logouts

        _session_id(session_id)
        if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
            raise InvalidRequest("expires_at: a timezone-aware datetime", field="expires_at")
        now = self.clock()
        with writing(self.engine) as conn:
            conn.execute(delete(dashboard_logouts).where(dashboard_logouts.c.expires_at <= now))
            conn.execute(
                dialect_insert(conn.dialect.name)(dashboard_logouts)
                .values(session_id=session_id, expires_at=expires_at, created_at=now)
                .on_conflict_do_nothing()  # logged out already (here or elsewhere at the same moment)
            )

    def dashboard_session_ended(self, session_id: str) -> bool:
        """Whether the dashboard session was logged out (on any worker). InvalidRequest for a malformed id."""
        from ..store.models import dashboard_logouts

        _session_id(session_id)
        with reading(self.engine) as conn:
            found = conn.execute(
                select(dashboard_logouts.c.session_id).where(dashboard_logouts.c.session_id == session_id)
            ).first()
        return found is not None

    def service_key_by_secret(self, key: str) -> ServiceKey | None:
        """The active service key this secret is (compared by hash), or None."""
        from ..store.models import service_keys

        with reading(self.engine) as conn:
            row = conn.execute(
                select(service_keys).where(
                    service_keys.c.key_hash == hash_api_key(key), service_keys.c.revoked_at.is_(None)
                )
            ).first()
        return ServiceKey(row.id, row.name, row.key_prefix, row.created_at, row.revoked_at) if row else None


MAX_SESSION_ID = 64  #: dashboard session ids are `String(64)`


def _session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_SESSION_ID or not session_id.isascii():
        raise InvalidRequest(f"session_id: 1–{MAX_SESSION_ID} ASCII characters", field="session_id")
    return session_id


def alert_record(row: Any) -> Alert:
    """An `alerts` row joined with its agent's name (`agent_name`) as the record."""
    return Alert(row.id, row.rule_name, row.kind, row.agent_name, row.transaction_id, row.message, row.created_at)
