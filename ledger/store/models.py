"""The ledger's tables (SQLAlchemy 2.x typed models).

Money is one column type, `Money`: a `Decimal` in Python, BIGINT nano-USD in SQL.
Timestamps are one type, `UTCDateTime`: aware UTC in Python, naive UTC in SQL.
Every constraint and index is named by one naming convention. The hot paths use
these tables through SQLAlchemy Core (`Model.__table__`), not ORM sessions.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pricing.money import from_nano, to_nano

from ..records import AgentStatus, RuleAction, RuleType, TxStatus

__all__ = ["AgentStatus", "RuleAction", "RuleType", "TxStatus"]  # re-exported: older imports read them here

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Money(TypeDecorator[Decimal]):
    """USD as `Decimal` in Python, integer nano-USD (BIGINT) in SQL."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Any) -> int | None:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"Money columns take Decimal USD, not {type(value).__name__}")
        return to_nano(value)

    def process_result_value(self, value: int | None, dialect: Any) -> Decimal | None:
        return None if value is None else from_nano(value)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in SQL (the same on SQLite and PostgreSQL)."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use ledger.clock")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only


def _enum(cls: type[StrEnum], length: int) -> Enum:
    return Enum(
        cls,
        native_enum=False,
        length=length,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
        create_constraint=False,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[AgentStatus] = mapped_column(_enum(AgentStatus, 16), default=AgentStatus.active)
    api_key_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    api_key_prefix: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Transaction(Base):
    __tablename__ = "transactions"
    __table_args__ = (
        UniqueConstraint("agent_id", "idempotency_key"),
        Index(None, "agent_id", "created_at"),
        Index(None, "status", "created_at"),
        Index(None, "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"))
    endpoint: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    operation: Mapped[str] = mapped_column(String(16))
    request_json: Mapped[str] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(String(64))
    price_book: Mapped[str] = mapped_column(String(64))
    estimated_cost: Mapped[Decimal] = mapped_column(Money)
    actual_cost: Mapped[Decimal | None] = mapped_column(Money)
    status: Mapped[TxStatus] = mapped_column(_enum(TxStatus, 16))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    denial_json: Mapped[str | None] = mapped_column(Text)
    upstream_request_id: Mapped[str | None] = mapped_column(String(200))
    upstream_status: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str | None] = mapped_column(Text)
    response_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    images: Mapped[int | None] = mapped_column(Integer)  #: output images as priced (for reports)
    billable_mp_nano: Mapped[int | None] = mapped_column(BigInteger)  #: billable megapixels × 10^9, as priced
    #: Who forwards the request: "gateway" or "run" (pixelgov itself, which alone settles it, and whose
    #: unsettled holds expire to `unknown`, still counted); None: the caller forwards it (a hold).
    forwarder: Mapped[str | None] = mapped_column(String(16))


class CostLine(Base):
    """Append-only money movements of a transaction: estimate, actual, adjustment."""

    __tablename__ = "cost_lines"
    __table_args__ = (
        Index(
            "ix_cost_lines_adjustments",
            "transaction_id",
            "amount",
            sqlite_where=text("kind = 'adjustment'"),
            postgresql_where=text("kind = 'adjustment'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("transactions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal] = mapped_column(Money)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Fact(Base):
    """A key/value note on a transaction: output sizes, latency, upstream status, billable units."""

    __tablename__ = "facts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("transactions.id"), index=True)
    key: Mapped[str] = mapped_column(String(100))
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SpendingRule(Base):
    __tablename__ = "spending_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    type: Mapped[RuleType] = mapped_column(_enum(RuleType, 20))
    limit_amount: Mapped[Decimal | None] = mapped_column(Money)
    limit_count: Mapped[int | None] = mapped_column(Integer)
    period: Mapped[str | None] = mapped_column(String(8))
    window_seconds: Mapped[int | None] = mapped_column(Integer)
    models_json: Mapped[str | None] = mapped_column(Text)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"), index=True)
    model_glob: Mapped[str | None] = mapped_column(String(200))
    operation: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[RuleAction] = mapped_column(_enum(RuleAction, 8), default=RuleAction.deny)
    alert_at: Mapped[int | None] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RuleCounter(Base):
    """Spend and requests of one rule in one bucket (a calendar period, or a slice of a window).

    The rule check reads these rows, never the ledger's history.
    """

    __tablename__ = "rule_counters"

    rule_id: Mapped[int] = mapped_column(ForeignKey("spending_rules.id"), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)  #: bucket start, epoch seconds UTC
    spent: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    held: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    requests: Mapped[int] = mapped_column(Integer, default=0)


class Hold(Base):
    """Which rule counters a transaction was counted in, so settlement moves exactly those."""

    __tablename__ = "holds"

    transaction_id: Mapped[int] = mapped_column(ForeignKey("transactions.id"), primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("spending_rules.id"), primary_key=True, index=True)
    bucket: Mapped[int] = mapped_column(BigInteger)


class SpendRollup(Base):
    """The ledger summed per UTC day, agent, endpoint, model, operation and status.

    Kept by database triggers in the same transaction as every ledger write (migration 0004),
    so the finance reports read tens of thousands of rows instead of millions. Money columns are
    raw sums of the transactions' columns; `adjusted_net` is what their adjustment lines change in
    what they count as spent (`ledger.store.spend`). A group whose transactions all moved on keeps a
    row with `tx_count` 0.
    """

    __tablename__ = "spend_rollups"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    agent_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(200), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    operation: Mapped[str] = mapped_column(String(16), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    tx_count: Mapped[int] = mapped_column(BigInteger)
    estimated: Mapped[Decimal] = mapped_column(Money)
    actual: Mapped[Decimal] = mapped_column(Money)
    images: Mapped[int] = mapped_column(BigInteger)
    billable_mp_nano: Mapped[int] = mapped_column(BigInteger)
    adjustments: Mapped[Decimal] = mapped_column(Money)
    adjusted_net: Mapped[Decimal] = mapped_column(Money)


class DenialRollup(Base):
    """Denied requests per UTC day, agent, endpoint, model, operation and the rule each denial names
    (`rule` and `rule_type` are empty for a denial that names no rule: a paused agent). Kept by a
    database trigger with the denied transaction (migration 0004)."""

    __tablename__ = "denial_rollups"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    agent_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(200), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    operation: Mapped[str] = mapped_column(String(16), primary_key=True)
    rule: Mapped[str] = mapped_column(String(200), primary_key=True)
    rule_type: Mapped[str] = mapped_column(String(20), primary_key=True)
    denials: Mapped[int] = mapped_column(BigInteger)


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (Index(None, "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("spending_rules.id", ondelete="SET NULL"))
    rule_name: Mapped[str] = mapped_column(String(200))
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    transaction_id: Mapped[int | None] = mapped_column(ForeignKey("transactions.id"))
    kind: Mapped[str] = mapped_column(String(16))  #: "rule" (an alert rule failed) | "threshold" (alert_at)
    dedupe_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """Every change to a rule or an agent: who/what before and after."""

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "entity", "entity_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    entity: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[int] = mapped_column(Integer)
    entity_name: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(16))
    before_json: Mapped[str | None] = mapped_column(Text)
    after_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


#: The tables, for SQLAlchemy Core (typed as `Table`: `__table__` is declared as a `FromClause`).
agents = cast(Table, Agent.__table__)
transactions = cast(Table, Transaction.__table__)
cost_lines = cast(Table, CostLine.__table__)
facts = cast(Table, Fact.__table__)
spending_rules = cast(Table, SpendingRule.__table__)
rule_counters = cast(Table, RuleCounter.__table__)
holds = cast(Table, Hold.__table__)
alerts = cast(Table, Alert.__table__)
audit_log = cast(Table, AuditEntry.__table__)
spend_rollups = cast(Table, SpendRollup.__table__)
denial_rollups = cast(Table, DenialRollup.__table__)


class ServiceKey(Base):
    """An admin-issued gateway key for a fleet: it speaks for the agent its request names
    (`X-Pixelgov-Agent`). Stored hashed; revoked keys stay for the audit trail."""

    __tablename__ = "service_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class QueueRequest(Base):
    """The gateway's queue API: the request id a submit answered with, and its transaction, so a
    status poll (which names only the id) is one indexed read."""

    __tablename__ = "queue_requests"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("transactions.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


service_keys = cast(Table, ServiceKey.__table__)
queue_requests = cast(Table, QueueRequest.__table__)


class DashboardLogout(Base):
    """A dashboard session its owner logged out of: every worker and host refuses its cookie from
    then on. Kept until the session would have expired (then purged: the cookie is dead anyway)."""

    __tablename__ = "dashboard_logouts"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


dashboard_logouts = cast(Table, DashboardLogout.__table__)


class PreAuthorization(Base):
    """A decision made before the request's body is known (the seed platform's SDK asks first,
    then sends): authorized or denied from what needs no price, valid until `expires_at`, used at
    most once by the request it names (`transaction_id`, set in the same database transaction as
    that request's hold). Holds no money: the hold is the transaction's."""

    __tablename__ = "pre_authorizations"
    __table_args__ = (Index(None, "agent_name", "created_at"), Index(None, "service_key_id", "created_at"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  #: opaque, ≥ 192 random bits
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))  #: None: an unknown agent, denied
    agent_name: Mapped[str] = mapped_column(String(200))
    service_key_id: Mapped[int | None] = mapped_column(ForeignKey("service_keys.id"))  #: who asked, if not the agent
    endpoint: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(16))  #: authorized | denied
    decline_reason: Mapped[str | None] = mapped_column(Text)
    denial_json: Mapped[str | None] = mapped_column(Text)
    request_json: Mapped[str] = mapped_column(Text)  #: what the caller said of its request (secrets dropped)
    transaction_id: Mapped[int | None] = mapped_column(ForeignKey("transactions.id"), unique=True)
    outcome: Mapped[str | None] = mapped_column(String(16))  #: as the caller reported it (success | error)
    response_json: Mapped[str | None] = mapped_column(Text)  #: the caller's response facts
    facts_json: Mapped[str | None] = mapped_column(Text)  #: facts the caller added
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  #: the caller completed it


pre_authorizations = cast(Table, PreAuthorization.__table__)
