"""Budgets as they stand now: every spending rule with its current usage and its recent alerts.

The usage of a counted rule (spend-limit, rate-limit) is read from the same per-rule, per-bucket
counters the governor checks a request against (`rule_counters`, summed over the buckets of the
rule's current period or rolling window, as `ledger.policy.periods.buckets` defines them), so what this
shows is exactly what the next authorization will see: settled + held spend (a spend-limit) or
authorized requests (a rate-limit) — never a scan of the ledger's history.

`Budgets(engine).usage()` is what the dashboard's Budgets page shows; a script can call it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Engine, Integer, and_, cast, func, or_, select, type_coerce

from pricing.money import ZERO, from_nano, usd_str

from ..clock import Clock, iso, utcnow
from ..records import Alert, RuleType, SpendingRule
from ..store.db import reading
from ..store.models import agents, alerts, rule_counters, spending_rules
from .admin import alert_record
from .periods import buckets, granularity, period_start
from .rules import Rule, rule_record

#: Recent alerts kept per rule on a `BudgetUsage`.
RECENT_ALERTS = 3


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """One spending rule and where it stands in its current period or window.

    For a spend-limit `used` is settled + held spend (USD) and `limit` is USD; for a rate-limit
    `used` is the requests authorized and `limit` a count. Request caps and model allowlists are
    not counted: `used`, `fraction` and `since` are None. A disabled rule counts nothing."""

    rule: SpendingRule
    spent: Decimal  #: settled spend counted (completed actuals and adjustments, unknown estimates)
    held: Decimal  #: estimates of pending transactions
    requests: int  #: requests authorized in the period or window
    used: Decimal | int | None
    limit: Decimal | int | None
    fraction: Decimal | None  #: used / limit (1 = at the limit; may exceed 1 by variance)
    since: datetime | None  #: start of the current period, or of the rolling window (bucket-aligned)
    alerts: int  #: alerts this rule recorded since `since` (all time for uncounted rules)
    recent_alerts: tuple[Alert, ...]  #: the latest few, newest first

    @property
    def counted(self) -> bool:
        return self.used is not None

    @property
    def percent(self) -> Decimal | None:
        """`fraction` as a percentage with one decimal (rounded down: never shown above the truth)."""
        if self.fraction is None:
            return None
        return (self.fraction * 100).quantize(Decimal("0.1"), rounding="ROUND_DOWN")

    def to_json(self) -> dict[str, Any]:
        def amount(value: Decimal | int | None) -> Any:
            return usd_str(value) if isinstance(value, Decimal) else value

        return {
            "rule": self.rule.to_json(),
            "spent": usd_str(self.spent),
            "held": usd_str(self.held),
            "requests": self.requests,
            "used": amount(self.used),
            "limit": amount(self.limit),
            "percent": None if self.percent is None else str(self.percent),
            "since": iso(self.since),
            "alerts": self.alerts,
            "recent_alerts": [a.to_json() for a in self.recent_alerts],
        }


class Budgets:
    """Every spending rule of one ledger database with its current usage (see the module docstring)."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock

    def usage(self, *, now: datetime | None = None) -> list[BudgetUsage]:
        """Every rule, the counted ones closest to their limit first (by `fraction`, highest first),
        then the uncounted and disabled ones by name. One read transaction: three small queries plus
        one per rule for its alerts (the alerts table, by time), none over the ledger's history."""
        now = (now or self.clock()).astimezone(UTC)
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(spending_rules, agents.c.name.label("agent_name"))
                .outerjoin(agents, agents.c.id == spending_rules.c.agent_id)
                .order_by(spending_rules.c.id)
            ).all()
            rules = [(Rule.from_row(r), r.agent_name) for r in rows]
            ranges = {
                rule.id: buckets(rule.period, rule.window_seconds, now)
                for rule, _ in rules
                if rule.counted and rule.enabled
            }
            sums = self._counter_sums(conn, ranges)
            alert_info = {rule.id: self._alerts(conn, rule.id, _since(rule, now)) for rule, _ in rules}
        out = []
        for rule, agent_name in rules:
            spent_nano, held_nano, requests = sums.get(rule.id, (0, 0, 0))
            spent, held = from_nano(spent_nano), from_nano(held_nano)
            used: Decimal | int | None = None
            limit: Decimal | int | None = None
            fraction = None
            if rule.id in ranges:
                if rule.type == RuleType.rate_limit:
                    used, limit = requests, rule.limit_count or 0
                else:
                    used, limit = spent + held, rule.limit_amount or ZERO
                fraction = Decimal(used) / Decimal(limit) if limit else None
            count, recent = alert_info[rule.id]
            out.append(
                BudgetUsage(
                    rule_record(rule, agent_name),
                    spent,
                    held,
                    requests,
                    used,
                    limit,
                    fraction,
                    _since(rule, now) if rule.id in ranges else None,
                    count,
                    recent,
                )
            )
        out.sort(key=_closest_first)
        return out

    def _counter_sums(self, conn: Any, ranges: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int, int]]:
        """(spent, held in nano-USD, requests) per rule over its bucket range: the governor's usage read."""
        if not ranges:
            return {}
        c = rule_counters.c
        where = or_(*(and_(c.rule_id == rid, c.bucket.between(low, high)) for rid, (high, low) in ranges.items()))
        query = (
            select(
                c.rule_id,
                cast(func.coalesce(func.sum(type_coerce(c.spent, BigInteger)), 0), BigInteger),
                cast(func.coalesce(func.sum(type_coerce(c.held, BigInteger)), 0), BigInteger),
                cast(func.coalesce(func.sum(c.requests), 0), BigInteger),
            )
            .where(where)
            .group_by(c.rule_id)
        )
        return {int(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in conn.execute(query)}

    def _alerts(self, conn: Any, rule_id: int, since: datetime | None) -> tuple[int, tuple[Alert, ...]]:
        a = alerts.c
        where = [a.rule_id == rule_id]
        if since is not None:
            where.append(a.created_at >= since)
        count = conn.execute(select(cast(func.count(), Integer)).select_from(alerts).where(*where)).scalar_one()
        recent = conn.execute(
            select(alerts, agents.c.name.label("agent_name"))
            .select_from(alerts.outerjoin(agents, agents.c.id == a.agent_id))
            .where(*where)
            .order_by(a.id.desc())
            .limit(RECENT_ALERTS)
        ).all()
        return int(count), tuple(alert_record(r) for r in recent)


def _since(rule: Rule, now: datetime) -> datetime | None:
    """The start of a counted rule's current period, or of its rolling window's first bucket."""
    if not rule.counted:
        return None
    if rule.window_seconds:
        _, low = buckets(rule.period, rule.window_seconds, now)
        step = granularity(rule.window_seconds)
        return datetime.fromtimestamp(low + (-low % step), UTC)  # the first bucket the check sums
    return period_start(rule.period or "total", now)


def _closest_first(u: BudgetUsage) -> tuple[int, Decimal, str]:
    if u.fraction is not None:
        return (0, -u.fraction, u.rule.name)
    return (1 if u.rule.enabled else 2, ZERO, u.rule.name)
