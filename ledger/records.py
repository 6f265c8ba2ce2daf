"""The ledger's public records: frozen, fully typed values with `to_json()`.

Money is `Decimal` USD, timestamps are aware UTC `datetime`s, statuses are enums.
`to_json()` gives the wire shapes of the contract (SPEC §5): amounts as decimal
strings, timestamps as ISO-8601 with a `Z`. The CLI and the gateway serialize only
through these. Light: no SQLAlchemy here (the pricing-only CLI path imports it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pricing import Quote
from pricing.money import display_price, usd_str

from .clock import iso


class AgentStatus(StrEnum):
    """An agent's status: a paused agent is denied."""

    active = "active"
    paused = "paused"


class TxStatus(StrEnum):
    """A transaction's status (see `ledger.store.spend` for what each counts as held and spent)."""

    pending = "pending"
    completed = "completed"
    failed = "failed"
    voided = "voided"
    expired = "expired"
    unknown = "unknown"
    denied = "denied"


class RuleType(StrEnum):
    """A spending rule's type (SPEC §4)."""

    spend_limit = "spend-limit"
    request_cap = "request-cap"
    rate_limit = "rate-limit"
    model_allowlist = "model-allowlist"


class RuleAction(StrEnum):
    """What a failing rule does: `deny` the request, or allow it and record an `alert`."""

    deny = "deny"
    alert = "alert"


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return usd_str(value)
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, StrEnum):
        return value.value
    return value


@dataclass(frozen=True, slots=True)
class Denial:
    """One failing rule of a decision (or the paused agent: `rule` is None)."""

    rule: str | None  #: the rule's name; None for a paused agent
    type: str  #: the rule type, "agent-paused", or "threshold" for an alert_at alert
    reason: str  #: a sentence saying why

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of the contract (amounts as decimal strings, timestamps ISO-8601 with Z)."""
        return {"rule": self.rule, "type": self.type, "reason": self.reason}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Denial:
        """A Denial from its JSON shape (as stored in a denied transaction's `denial`)."""
        return cls(doc.get("rule"), str(doc.get("type")), str(doc.get("reason")))


@dataclass(frozen=True, slots=True)
class CostLine:
    """An append-only money line of a transaction: `estimate`, `actual` or `adjustment` (USD)."""

    kind: str
    amount: Decimal
    note: str | None
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of the contract (amounts as decimal strings, timestamps ISO-8601 with Z)."""
        return {
            "kind": self.kind,
            "amount": usd_str(self.amount),
            "note": self.note,
            "created_at": iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Fact:
    """A key/value note on a transaction (output sizes, latency, upstream status, variance…)."""

    key: str
    value: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of the contract (amounts as decimal strings, timestamps ISO-8601 with Z)."""
        return {"key": self.key, "value": self.value, "created_at": iso(self.created_at)}


@dataclass(frozen=True, slots=True)
class TransactionDetail:
    """What `transaction(id, detail=True)` adds: the stored request, lines, facts and result."""

    request: Mapping[str, Any]
    cost_lines: tuple[CostLine, ...]
    facts: tuple[Fact, ...]
    result: Any  #: the upstream's JSON as stored, or None

    def fact(self, key: str) -> str | None:
        """The latest value of fact `key`, or None."""
        for f in reversed(self.facts):
            if f.key == key:
                return f.value
        return None


@dataclass(frozen=True, slots=True)
class Transaction:
    """One authorization and its outcome. Money in USD; `actual_cost` is None until settled."""

    id: int
    agent: str
    endpoint: str
    model: str
    operation: str
    status: TxStatus
    estimated_cost: Decimal
    actual_cost: Decimal | None
    price_book: str
    created_at: datetime
    completed_at: datetime | None
    idempotency_key: str | None
    denial: Mapping[str, Any] | None  #: {"rule", "type", "reason", "denials": [...]} when denied
    upstream_request_id: str | None
    upstream_status: int | None
    outcome: str | None
    #: Who forwards its request: "gateway" or "run" (pixelgov, which alone settles it); None: the caller.
    forwarder: str | None = None
    detail: TransactionDetail | None = None

    @property
    def forwarded_by_pixelgov(self) -> bool:
        """Whether pixelgov itself forwarded the request (then only pixelgov settles it)."""
        return self.forwarder is not None

    @property
    def denials(self) -> tuple[Denial, ...]:
        """Every failing rule of a denied transaction."""
        if not self.denial:
            return ()
        return tuple(Denial.from_json(d) for d in self.denial.get("denials", ()))

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of the contract (amounts as decimal strings, timestamps ISO-8601 with Z)."""
        doc: dict[str, Any] = {
            "id": self.id,
            "agent": self.agent,
            "endpoint": self.endpoint,
            "model": self.model,
            "operation": self.operation,
            "status": self.status.value,
            "estimated_cost": usd_str(self.estimated_cost),
            "estimated_price": display_price(self.estimated_cost),
            "actual_cost": usd_str(self.actual_cost),
            "price_book": self.price_book,
            "created_at": iso(self.created_at),
            "completed_at": iso(self.completed_at),
            "idempotency_key": self.idempotency_key,
            "denial": self.denial,
            "upstream_request_id": self.upstream_request_id,
            "upstream_status": self.upstream_status,
            "outcome": self.outcome,
            "forwarder": self.forwarder,
        }
        if self.detail is not None:
            doc["request"] = self.detail.request
            doc["cost_lines"] = [line.to_json() for line in self.detail.cost_lines]
            doc["facts"] = [f.to_json() for f in self.detail.facts]
            doc["result"] = self.detail.result
        return doc


@dataclass(frozen=True, slots=True)
class AgentRef:
    """The agent a decision is about; `id` is None for one that would be created on first use."""

    id: int | None
    name: str
    status: AgentStatus


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent. `api_key` is set only on the record `create_agent`/`rotate_key` return (shown once)."""

    id: int
    name: str
    description: str | None
    status: AgentStatus
    has_api_key: bool
    api_key_prefix: str | None
    created_at: datetime
    updated_at: datetime
    api_key: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of the contract (amounts as decimal strings, timestamps ISO-8601 with Z)."""
        doc: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "status": self.status.value,
            "has_api_key": self.has_api_key,
            "api_key_prefix": self.api_key_prefix,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }
        if self.api_key is not None:
            doc["api_key"] = self.api_key
        return doc


@dataclass(frozen=True, slots=True)
class SpendingRule:
    """A spending rule as users see it. `limit` is USD (spend-limit, request-cap) or a request
    count (rate-limit); `window` is a rolling window like "24h" (else `period`)."""

    id: int
    name: str
    type: RuleType
    limit: Decimal | int | None
    period: str | None
    window: str | None
    models: tuple[str, ...] | None
    agent: str | None  #: None: every agent, counted together
    model: str | None  #: endpoint glob filter
    operation: str | None
    action: RuleAction
    alert_at: int | None
    enabled: bool
    version: int

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of the contract (amounts as decimal strings, timestamps ISO-8601 with Z)."""
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type.value,
            "limit": usd_str(self.limit) if isinstance(self.limit, Decimal) else self.limit,
            "period": self.period,
            "window": self.window,
            "models": list(self.models) if self.models else None,
            "agent": self.agent,
            "model": self.model,
            "operation": self.operation,
            "action": self.action.value,
            "alert_at": self.alert_at,
            "enabled": self.enabled,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert recorded by an `alert` rule or an `alert_at` threshold."""

    id: int
    rule: str
    kind: str  #: "rule" or "threshold"
    agent: str | None
    transaction_id: int | None
    message: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of the contract (amounts as decimal strings, timestamps ISO-8601 with Z)."""
        return {
            "id": self.id,
            "rule": self.rule,
            "kind": self.kind,
            "agent": self.agent,
            "transaction_id": self.transaction_id,
            "message": self.message,
            "created_at": iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change to an agent or a rule, with the record before and after (as JSON)."""

    id: int
    entity: str  #: "agent" or "rule"
    entity_id: int
    name: str
    action: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of the contract (amounts as decimal strings, timestamps ISO-8601 with Z)."""
        return {
            "id": self.id,
            "entity": self.entity,
            "entity_id": self.entity_id,
            "name": self.name,
            "action": self.action,
            "before": self.before,
            "after": self.after,
            "created_at": iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The rule decision for one request: allowed unless some `deny` rule failed (or the agent is paused)."""

    quote: Quote
    agent: AgentRef
    denials: tuple[Denial, ...]
    alerts: tuple[Denial, ...]
    verdicts: tuple[Any, ...] = ()  #: `ledger.policy.rules.Verdict` per matching rule, in rule id order

    @property
    def allowed(self) -> bool:
        """True unless a `deny` rule failed or the agent is paused."""
        return not self.denials

    @property
    def only_rate_limited(self) -> bool:
        """Denied by rate-limit rules alone (HTTP 429 rather than 402)."""
        return bool(self.denials) and all(d.type == RuleType.rate_limit for d in self.denials)

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of the contract (amounts as decimal strings, timestamps ISO-8601 with Z)."""
        return {
            "allowed": self.allowed,
            "agent": self.agent.name,
            "quote": self.quote.to_json(),
            "denials": [d.to_json() for d in self.denials],
            "alerts": [a.to_json() for a in self.alerts],
        }


@dataclass(frozen=True, slots=True)
class Authorization:
    """What `authorize` returns: the transaction written (pending or denied), and the decision.

    `decision` is None and `replayed` True when an idempotent retry returned an earlier transaction."""

    transaction: Transaction
    decision: Decision | None
    replayed: bool = False

    @property
    def allowed(self) -> bool:
        """True when the transaction holds its estimate (pending), False when it was denied."""
        return self.transaction.status != TxStatus.denied


class PreAuthState(StrEnum):
    """Where a pre-authorization stands: `authorized` (unused, valid), `denied` (at creation),
    `used` (its request came: see its transaction), `cancelled` (closed unused, or expired)."""

    authorized = "authorized"
    denied = "denied"
    used = "used"
    cancelled = "cancelled"


@dataclass(frozen=True, slots=True)
class PreAuthorization:
    """A decision made before a request's body is known, used at most once by that request.

    The money is its `transaction`'s (None until the request came): a pre-authorization holds
    nothing. `outcome`, `response_facts` and `facts` are what the caller reported; they never move
    money."""

    id: str
    agent: str
    endpoint: str
    decision: str  #: authorized | denied (at creation)
    decline_reason: str | None
    denials: tuple[Denial, ...]
    request: Mapping[str, Any]  #: what the caller said of its request, secrets dropped
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    closed_at: datetime | None
    outcome: str | None
    response_facts: Any
    facts: tuple[Any, ...]
    service_key_id: int | None  #: the service key that asked (None: the agent's own key)
    transaction: Transaction | None = None  #: with its cost lines and facts

    def state(self, now: datetime) -> PreAuthState:
        """Where it stands at `now` (an unused one past `expires_at` is cancelled)."""
        if self.decision == "denied":
            return PreAuthState.denied
        if self.used_at is not None:
            return PreAuthState.used
        if self.closed_at is not None or now >= self.expires_at:
            return PreAuthState.cancelled
        return PreAuthState.authorized

    def to_json(self, now: datetime) -> dict[str, Any]:
        """pixelgov's own JSON shape (the gateway's Sapiom-compatible API has its own)."""
        return {
            "id": self.id,
            "agent": self.agent,
            "endpoint": self.endpoint,
            "state": self.state(now).value,
            "decline_reason": self.decline_reason,
            "denials": [d.to_json() for d in self.denials],
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "used_at": iso(self.used_at),
            "closed_at": iso(self.closed_at),
            "outcome": self.outcome,
            "transaction": self.transaction.to_json() if self.transaction else None,
        }


__all__ = [
    "Agent",
    "AgentRef",
    "AgentStatus",
    "Alert",
    "AuditEntry",
    "Authorization",
    "CostLine",
    "Decision",
    "Denial",
    "Fact",
    "PreAuthState",
    "PreAuthorization",
    "RuleAction",
    "RuleType",
    "SpendingRule",
    "Transaction",
    "TransactionDetail",
    "TxStatus",
]
