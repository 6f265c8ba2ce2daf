"""Spending rules: their definition, validation, matching and evaluation.

Pure: rows in, decisions out. The governor reads the counters and writes the holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any, NamedTuple, Protocol

from pricing import Quote
from pricing.grammar import INTEGER
from pricing.money import ZERO, display_price, parse_usd, usd_str

from ..errors import InvalidRequest
from ..records import RuleAction, RuleType, SpendingRule
from .periods import RATE_PERIODS, SPEND_PERIODS, format_window, parse_window

RULE_TYPES = tuple(t.value for t in RuleType)
OPERATIONS = ("generate", "transform", "upscale")
COUNTED = (RuleType.spend_limit.value, RuleType.rate_limit.value)
#: A rate-limit's count is an INTEGER column (32 bits on PostgreSQL).
MAX_COUNT = 2**31 - 1
#: Rule names and model globs are VARCHAR(200) columns.
MAX_TEXT = 200


class Target(Protocol):
    """What a rule's filters look at: a quote, or a recorded transaction."""

    @property
    def endpoint(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def operation(self) -> str: ...


class Rule(NamedTuple):
    """A spending rule as the governor sees it."""

    id: int
    name: str
    type: str
    limit_amount: Decimal | None
    limit_count: int | None
    period: str | None
    window_seconds: int | None
    models: tuple[str, ...]
    agent_id: int | None
    model_glob: str | None
    operation: str | None
    action: str
    alert_at: int | None
    enabled: bool
    version: int

    @classmethod
    def from_row(cls, row: Any) -> Rule:
        return cls(
            row.id,
            row.name,
            str(row.type.value if hasattr(row.type, "value") else row.type),
            row.limit_amount,
            row.limit_count,
            row.period,
            row.window_seconds,
            tuple(json.loads(row.models_json)) if row.models_json else (),
            row.agent_id,
            row.model_glob,
            row.operation,
            str(row.action.value if hasattr(row.action, "value") else row.action),
            row.alert_at,
            bool(row.enabled),
            row.version,
        )

    @property
    def counted(self) -> bool:
        return self.type in COUNTED

    def applies_to(self, agent_id: int | None, quote: Target) -> bool:
        """Does the rule cover this agent's request (its agent, operation and model filters)?"""
        if self.agent_id is not None and self.agent_id != agent_id:
            return False
        if self.operation is not None and self.operation != quote.operation:
            return False
        if self.model_glob is not None and not _glob(self.model_glob, quote):
            return False
        return True

    def describe_limit(self) -> str:
        span = self.period or f"rolling {format_window(self.window_seconds)}"
        if self.type == RuleType.rate_limit:
            return f"{self.limit_count} requests per {span}"
        if self.type == RuleType.spend_limit:
            return f"{display_price(self.limit_amount or ZERO)} per {span}"
        if self.type == RuleType.request_cap:
            return f"{display_price(self.limit_amount or ZERO)} per request"
        return "models " + ", ".join(self.models)


def _glob(pattern: str, quote: Target) -> bool:
    return fnmatchcase(quote.endpoint, pattern) or fnmatchcase(quote.model, pattern)


class Usage(NamedTuple):
    spent: Decimal
    held: Decimal
    requests: int


class Verdict(NamedTuple):
    """One rule's outcome for one request."""

    rule: Rule
    ok: bool
    reason: str
    usage_after: Decimal | None = None  #: spend-limit: settled + held + this estimate


def evaluate(rule: Rule, quote: Quote, usage: Usage | None) -> Verdict:
    """Does this request pass `rule`, given the rule's current usage?"""
    if rule.type == RuleType.model_allowlist:
        ok = any(_glob(g, quote) for g in rule.models)
        return Verdict(
            rule, ok, "" if ok else f"{quote.endpoint} is not in the allowed models ({', '.join(rule.models)})"
        )
    if rule.type == RuleType.request_cap:
        limit = rule.limit_amount or ZERO
        ok = quote.amount <= limit
        return Verdict(
            rule,
            ok,
            ""
            if ok
            else f"estimate {display_price(quote.amount)} ({usd_str(quote.amount)}) "
            f"is above the per-request cap {display_price(limit)}",
        )
    usage = usage or Usage(ZERO, ZERO, 0)
    if rule.type == RuleType.rate_limit:
        limit_count = rule.limit_count or 0
        ok = usage.requests + 1 <= limit_count
        return Verdict(rule, ok, "" if ok else f"{usage.requests} of {rule.describe_limit()} already used")
    limit = rule.limit_amount or ZERO
    after = usage.spent + usage.held + quote.amount
    ok = after <= limit
    return Verdict(
        rule,
        ok,
        ""
        if ok
        else (
            f"spent {usd_str(usage.spent)} + held {usd_str(usage.held)} + estimate {usd_str(quote.amount)} "
            f"= {usd_str(after)} is above the limit {usd_str(limit)} per "
            f"{rule.period or 'rolling ' + (format_window(rule.window_seconds) or '')}"
        ),
        after,
    )


# --- definitions from users ------------------------------------------------------------------


@dataclass
class RuleSpec:
    """A rule as a user gives it (CLI options or API JSON), before validation."""

    name: str | None = None
    type: str | None = None
    limit: str | None = None
    period: str | None = None
    window: str | None = None
    models: list[str] | None = None
    agent: str | None = None
    model: str | None = None
    operation: str | None = None
    action: str | None = None
    alert_at: int | str | None = None
    enabled: bool | None = None
    given: set[str] = field(default_factory=set)


def validate_spec(spec: RuleSpec, *, existing: Rule | None = None) -> dict[str, Any]:
    """Column values for a rule; InvalidRequest naming the field on any mistake.

    For an update, fields not given keep their values (`existing`); the result is
    validated as a whole, so an update cannot produce a rule a create would refuse.
    """
    base = _spec_of(existing) if existing else {}
    if spec.given & {"period", "window"}:
        # An update naming a period or a window replaces the span the rule had, whichever kind it was.
        base = {**base, "period": None, "window": None}
    merged = {**base, **{k: getattr(spec, k) for k in spec.given}}
    name = merged.get("name")
    if not name or not str(name).strip():
        raise InvalidRequest("name: a rule needs a name", field="name")
    if not str(name).strip(" ").isprintable():
        raise InvalidRequest(f"name: {name!r} has control characters (line breaks, tabs, escapes)", field="name")
    if len(str(name).strip()) > MAX_TEXT:
        raise InvalidRequest(f"name: at most {MAX_TEXT} characters", field="name")
    rtype = merged.get("type")
    if rtype not in RULE_TYPES:
        raise InvalidRequest(f"type: unknown rule type {rtype!r}; allowed: {', '.join(RULE_TYPES)}", field="type")
    if existing and "type" in spec.given and spec.type != existing.type:
        raise InvalidRequest("type: a rule's type cannot change; create a new rule", field="type")
    allowed = {
        "spend-limit": {"limit", "period", "window", "alert_at"},
        "request-cap": {"limit"},
        "rate-limit": {"limit", "period", "window"},
        "model-allowlist": {"models"},
    }[rtype]
    for key in ("limit", "period", "window", "models", "alert_at"):
        if merged.get(key) not in (None, [], "") and key not in allowed:
            raise InvalidRequest(f"{key}: a {rtype} rule does not take {key}", field=key)
    values: dict[str, Any] = {
        "name": str(name).strip(),
        "type": rtype,
        "limit_amount": None,
        "limit_count": None,
        "period": None,
        "window_seconds": None,
        "models_json": None,
        "alert_at": None,
    }
    if "limit" in allowed:
        raw = merged.get("limit")
        if raw in (None, ""):
            raise InvalidRequest(f"limit: a {rtype} rule needs a limit", field="limit")
        if rtype == "rate-limit":
            if not (isinstance(raw, int) and not isinstance(raw, bool)) and not INTEGER.fullmatch(str(raw)):
                raise InvalidRequest(
                    f"limit: a rate-limit counts requests: a whole number of ASCII digits (got {raw!r})", field="limit"
                )
            count = int(str(raw))
            if count <= 0:
                raise InvalidRequest(f"limit: must be greater than zero (got {raw!r})", field="limit")
            if count > MAX_COUNT:
                raise InvalidRequest(f"limit: at most {MAX_COUNT} requests (got {raw!r})", field="limit")
            values["limit_count"] = count
        else:
            try:
                values["limit_amount"] = parse_usd(str(raw), allow_zero=False)
            except ValueError as exc:
                raise InvalidRequest(f"limit: {exc}", field="limit") from None
    if rtype in ("spend-limit", "rate-limit"):
        period, window = merged.get("period"), merged.get("window")
        if period and window:
            raise InvalidRequest("period: give a period or a window, not both", field="period")
        periods = SPEND_PERIODS if rtype == "spend-limit" else RATE_PERIODS
        if window:
            try:
                values["window_seconds"] = parse_window(str(window))
            except ValueError as exc:
                raise InvalidRequest(f"window: {exc}", field="window") from None
        else:
            period = period or ("month" if rtype == "spend-limit" else None)
            if period not in periods:
                raise InvalidRequest(
                    f"period: {period!r} is not a {rtype} period; allowed: {', '.join(periods)} or a rolling window",
                    field="period",
                )
            values["period"] = period
    if rtype == "model-allowlist":
        models = [m.strip() for m in (merged.get("models") or []) if m and m.strip()]
        if not models:
            raise InvalidRequest("models: a model-allowlist needs a list of model globs", field="models")
        values["models_json"] = json.dumps(models)
    if merged.get("alert_at") not in (None, ""):
        text = str(merged["alert_at"]).removesuffix("%")
        if not INTEGER.fullmatch(text):
            raise InvalidRequest(f"alert_at: a percentage 1–100 (got {merged['alert_at']!r})", field="alert_at")
        pct = int(text)
        if not 1 <= pct <= 100:
            raise InvalidRequest(f"alert_at: a percentage 1–100 (got {pct})", field="alert_at")
        values["alert_at"] = pct
    operation = merged.get("operation")
    if operation not in (None, "") and operation not in OPERATIONS:
        raise InvalidRequest(f"operation: {operation!r}; allowed: {', '.join(OPERATIONS)}", field="operation")
    values["operation"] = operation or None
    values["model_glob"] = merged.get("model") or None
    if values["model_glob"] and len(values["model_glob"]) > MAX_TEXT:
        raise InvalidRequest(f"model: a glob of at most {MAX_TEXT} characters", field="model")
    action = merged.get("action") or "deny"
    if action not in ("deny", "alert"):
        raise InvalidRequest(f"action: {action!r}; allowed: deny, alert", field="action")
    values["action"] = action
    values["enabled"] = True if merged.get("enabled") is None else bool(merged["enabled"])
    return values


def _spec_of(rule: Rule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "type": rule.type,
        "limit": str(rule.limit_count) if rule.limit_count is not None else usd_str(rule.limit_amount),
        "period": rule.period,
        "window": format_window(rule.window_seconds),
        "models": list(rule.models),
        "model": rule.model_glob,
        "operation": rule.operation,
        "action": rule.action,
        "alert_at": rule.alert_at,
        "enabled": rule.enabled,
    }


def rule_record(rule: Rule, agent_name: str | None) -> SpendingRule:
    """The public record of a rule (its agent by name)."""
    limit: Decimal | int | None = rule.limit_count if rule.type == RuleType.rate_limit else rule.limit_amount
    return SpendingRule(
        id=rule.id,
        name=rule.name,
        type=RuleType(rule.type),
        limit=limit,
        period=rule.period,
        window=format_window(rule.window_seconds),
        models=rule.models or None,
        agent=agent_name,
        model=rule.model_glob,
        operation=rule.operation,
        action=RuleAction(rule.action),
        alert_at=rule.alert_at,
        enabled=rule.enabled,
        version=rule.version,
    )
