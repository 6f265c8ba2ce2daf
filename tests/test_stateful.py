"""A stateful (model-based) test of the governor against an independent oracle.

Random authorize / check / settle (also late, after expiry) / void / fail / mark-unknown /
expire / adjust / pause / rule-toggle sequences, with a fake clock that crosses hold TTLs and
UTC hour, day, ISO-week and month boundaries, against a ledger with calendar spend-limits
(daily with an 80% alert threshold, weekly), rolling spend-limits (2h and 6h for one agent; 24h and 14d
`alert` rules), a monthly `alert` rule, an hourly rate-limit and a rolling 30m rate-limit.

The oracle is a pure-Python model that shares no code with the product's rule, period or
spend logic. It keeps every transaction it created (agent, created_at, estimate, status,
actual, adjustments) and computes each rule's usage from `created_at` alone with its own
calendar arithmetic (UTC hour, day, ISO week, month) and the documented window semantics
(README "Period": the largest of 1 min, 5 min, 15 min, 1 h, 6 h, 1 day that cuts the window
into ≥ 24 buckets; every bucket overlapping (now − window, now] counts). From that it
PREDICTS every decision before calling the governor — allowed or denied, which rules deny,
which alerts fire, each spend rule's usage after the request, and which stale holds an
authorization expires first — and asserts the governor agrees. After every step:

- every transaction's status, estimate, actual cost and adjustments equal the model's;
- every rule counter row equals the model's own per-bucket sums (bucket = the period's or
  the window slice's start, epoch seconds UTC): pending → held += estimate; completed →
  spent += max(0, actual + adjustments); unknown → spent += estimate; requests = every
  authorized transaction (re-enabling a rule recounts its current period or window only);
- the budget invariant: for every enabled `deny` spend-limit and its current period or window
  (unless some of it was authorized while the rule was disabled), settled + held ≤ limit +
  what settlement added after the decisions (actual costs above their estimates, positive
  adjustments, and answers recorded after their hold had expired); every enabled deny
  rate-limit's requests ≤ its limit;
- what each call returns equals a fresh read.

Each hypothesis example starts from the same ledger (the first agent and the rules, made once
through the admin API): a fresh copy of that SQLite file, or on PostgreSQL its transactions
deleted and its agents and rules reset. 100 examples on SQLite and 60 on PostgreSQL, up to 40
steps each (about a minute in all); PIXELGOV_STATEFUL_EXAMPLES=N runs N on each.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, scratch_engine
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import select, text

from ledger import Conflict, Ledger, RuleSpec, Settings, Transaction, TxStatus
from ledger.store.models import agents, cost_lines, rule_counters, transactions

HOLD_TTL = 900
ENDPOINT = "fal-ai/flux/dev"
#: Request bodies and their exact estimates (flux-dev $0.015/MP, megapixels rounded up to 0.01 MP per image).
BODIES: tuple[dict[str, Any], ...] = ({}, {"num_images": 2}, {"image_size": "landscape_16_9"}, {"image_size": "square"})
ESTIMATES = (Decimal("0.01185"), Decimal("0.0237"), Decimal("0.00885"), Decimal("0.00405"))
AGENTS = ("alpha", "beta")  # alpha is created up front, beta on first use
KEYS = (None, None, None, "k1", "k2")
START = datetime(2026, 11, 29, 23, 40, 0, tzinfo=UTC)  # Sunday: a day and an ISO week end in 20 min, a month in 2 days
#: Examples per database (about 0.2 s each on SQLite, 0.6 s on PostgreSQL); PIXELGOV_STATEFUL_EXAMPLES overrides both.
EXAMPLES = {"sqlite": 100, "postgresql": 60}


def machine_settings(database: str) -> settings:
    examples = int(os.environ.get("PIXELGOV_STATEFUL_EXAMPLES") or EXAMPLES[database])
    return settings(
        max_examples=examples,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


#: What a PostgreSQL example clears (in foreign-key order); the agents and rules are reset in place.
RESET_TABLES = ("alerts", "facts", "cost_lines", "holds", "rule_counters", "transactions")
GRANULARITIES = (60, 300, 900, 3600, 6 * 3600, 86400)  # README "Period"


# --- the oracle: rules, periods and windows, spend ----------------------------------------------


@dataclass
class ModelRule:
    name: str
    type: str  # "spend-limit" or "rate-limit"
    limit: Decimal | int
    period: str | None = None
    window: int | None = None  # seconds
    agent: str | None = None
    action: str = "deny"
    alert_at: int | None = None
    enabled: bool = True
    members: set[int] = field(default_factory=set)  #: transactions counted in its counters

    def spec(self) -> RuleSpec:
        given = {"name", "type", "limit", "period" if self.period else "window", "action"}
        window = None
        if self.window:
            window = (
                f"{self.window // 86400}d"
                if self.window % 86400 == 0
                else (f"{self.window // 3600}h" if self.window % 3600 == 0 else f"{self.window // 60}m")
            )
        if self.agent:
            given.add("agent")
        if self.alert_at:
            given.add("alert_at")
        return RuleSpec(
            name=self.name,
            type=self.type,
            limit=str(self.limit),
            period=self.period,
            window=window,
            agent=self.agent,
            action=self.action,
            alert_at=self.alert_at,
            given=given,
        )

    def applies(self, agent: str) -> bool:
        return self.agent is None or self.agent == agent

    def slice_seconds(self) -> int:
        """A rolling window's bucket size: the largest granularity giving at least 24 buckets."""
        assert self.window is not None
        fitting = [g for g in GRANULARITIES if self.window / g >= 24]
        assert fitting, "the test's windows are all long enough for 1-minute buckets"
        return max(fitting)

    def bucket_of(self, when: datetime) -> int:
        """The counter bucket a transaction created at `when` belongs to: epoch seconds of its start."""
        if self.window is not None:
            g = self.slice_seconds()
            epoch = int(when.timestamp())
            return epoch // g * g
        return int(calendar_start(self.period or "total", when).timestamp())

    def counts_at(self, created: datetime, now: datetime) -> bool:
        """Does a transaction created at `created` count in this rule's current period or window at `now`?"""
        if self.window is not None:
            start = self.bucket_of(created)
            end = start + self.slice_seconds()
            return end > now.timestamp() - self.window and start <= now.timestamp()
        return calendar_start(self.period or "total", created) == calendar_start(self.period or "total", now)


def calendar_start(period: str, when: datetime) -> datetime:
    """The start of `when`'s calendar period in UTC, from dates (not timestamps arithmetic)."""
    when = when.astimezone(UTC)
    day: date = when.date()
    if period == "hour":
        return datetime.combine(day, time(when.hour), UTC)
    if period == "day":
        return datetime.combine(day, time(), UTC)
    if period == "week":
        year, week, _ = day.isocalendar()
        return datetime.combine(date.fromisocalendar(year, week, 1), time(), UTC)
    if period == "month":
        return datetime(day.year, day.month, 1, tzinfo=UTC)
    assert period == "total", period
    return datetime(1970, 1, 1, tzinfo=UTC)


#: Spend limits are whole multiples of the default estimate (0.01185), so requests hit them exactly.
#: Spend limits are whole multiples of the default estimate (0.01185), so requests hit them exactly.
#: The windows use every slice size but a day's: 30m → 1-minute slices, 2h → 5 min (exactly 24),
#: 6h → 15 min (exactly 24), 24h → 1 h (exactly 24), 14d → 6 h (not 1 day: that would be only 14).
RULES = (
    ModelRule("daily", "spend-limit", Decimal("0.0711"), period="day", alert_at=80),  # 6 × 0.01185
    ModelRule("rolling-2h", "spend-limit", Decimal("0.0474"), window=2 * 3600, agent="alpha"),
    ModelRule("hourly-rate", "rate-limit", 7, period="hour"),
    ModelRule("weekly", "spend-limit", Decimal("0.1185"), period="week"),
    ModelRule("alpha-30m-rate", "rate-limit", 4, window=30 * 60, agent="alpha"),
    ModelRule("monthly-watch", "spend-limit", Decimal("0.0948"), period="month", action="alert"),
    ModelRule("rolling-6h", "spend-limit", Decimal("0.0711"), window=6 * 3600, agent="alpha"),
    ModelRule("rolling-24h-watch", "spend-limit", Decimal("0.1185"), window=86400, action="alert"),
    ModelRule("rolling-14d-watch", "spend-limit", Decimal("0.1422"), window=14 * 86400, action="alert"),
)


@dataclass
class ModelTx:
    id: int
    agent: str
    created: datetime
    estimate: Decimal
    status: str
    body: int
    actual: Decimal | None = None
    adjustments: Decimal = Decimal(0)
    late: bool = False  #: settled after its hold had expired
    raised: Decimal = Decimal(0)  #: the positive adjustments added after settlement
    rules_on: frozenset[str] = frozenset()  #: the rules enabled when it was authorized

    @property
    def held(self) -> Decimal:
        return self.estimate if self.status == "pending" else Decimal(0)

    @property
    def spent(self) -> Decimal:
        if self.status == "completed":
            assert self.actual is not None
            return max(Decimal(0), self.actual + self.adjustments)  # a credit never goes below zero
        if self.status == "unknown":
            return self.estimate  # it may have been served
        return Decimal(0)

    @property
    def added_after_decisions(self) -> Decimal:
        """What settling added to its budgets beyond what rule checks had counted: an actual above
        the estimate, positive adjustments, or (settled after its hold expired and was released) all of it."""
        if self.status != "completed":
            return Decimal(0)
        assert self.actual is not None
        return (self.actual if self.late else max(Decimal(0), self.actual - self.estimate)) + self.raised

    @property
    def authorized(self) -> bool:
        return self.status != "denied"


@dataclass
class Prediction:
    allowed: bool
    denials: list[tuple[str | None, str]]
    alerts: list[tuple[str, str]]
    usage_after: dict[str, Decimal]  #: spend rules: spent + held + this estimate
    applying: set[str]
    expires: list[int]  #: stale holds an authorization expires before deciding again


class Model:
    """What the ledger should hold, and what the governor should decide, computed from scratch."""

    def __init__(self) -> None:
        self.rules = [ModelRule(**{k: v for k, v in r.__dict__.items() if k != "members"}) for r in RULES]
        self.txs: dict[int, ModelTx] = {}
        self.paused: set[str] = set()

    def usage(
        self, rule: ModelRule, now: datetime, expired: frozenset[int] = frozenset()
    ) -> tuple[Decimal, Decimal, int]:
        """(spent, held, requests) of `rule` at `now`; `expired`: pending holds to count as expired."""
        counted = [
            t for t in self.txs.values() if t.authorized and rule.applies(t.agent) and rule.counts_at(t.created, now)
        ]
        held = sum((t.held for t in counted if t.id not in expired), Decimal(0))
        return sum((t.spent for t in counted), Decimal(0)), held, len(counted)

    def stale(self, now: datetime) -> list[int]:
        cutoff = now - timedelta(seconds=HOLD_TTL)
        return sorted(t.id for t in self.txs.values() if t.status == "pending" and t.created < cutoff)

    def decide(
        self, agent: str, estimate: Decimal, now: datetime, *, expired: frozenset[int] = frozenset()
    ) -> Prediction:
        denials: list[tuple[str | None, str]] = [(None, "agent-paused")] if agent in self.paused else []
        alerts: list[tuple[str, str]] = []
        after: dict[str, Decimal] = {}
        applying = set()
        for r in self.rules:
            if not r.enabled or not r.applies(agent):
                continue
            applying.add(r.name)
            spent, held, requests = self.usage(r, now, expired)
            if r.type == "rate-limit":
                ok = requests + 1 <= r.limit
            else:
                after[r.name] = spent + held + estimate
                ok = after[r.name] <= r.limit
            if not ok:
                (denials if r.action == "deny" else alerts).append((r.name, r.type))
            elif r.alert_at and after[r.name] * 100 >= r.limit * r.alert_at:
                alerts.append((r.name, "threshold"))
        return Prediction(not denials, denials, alerts, after, applying, [])

    def predict(self, agent: str, estimate: Decimal, now: datetime) -> Prediction:
        """A denial while stale holds exist is decided again without them (they are expired first)."""
        first = self.decide(agent, estimate, now)
        stale = self.stale(now)
        if first.allowed or not stale:
            return first
        again = self.decide(agent, estimate, now, expired=frozenset(stale))
        again.expires = stale
        return again

    def expire(self, ids: list[int]) -> None:
        for i in ids:
            assert self.txs[i].status == "pending"
            self.txs[i].status = "expired"

    def add(self, tx: ModelTx) -> None:
        self.txs[tx.id] = tx
        if tx.authorized:
            for r in self.rules:
                if r.enabled and r.applies(tx.agent):
                    r.members.add(tx.id)

    def recount(self, rule: ModelRule, now: datetime) -> None:
        """A re-enabled rule counts what the ledger holds in its current period or window."""
        rule.members = {
            t.id for t in self.txs.values() if t.authorized and rule.applies(t.agent) and rule.counts_at(t.created, now)
        }

    def counters(self, rule: ModelRule) -> dict[int, tuple[Decimal, Decimal, int]]:
        rows: dict[int, list[Any]] = defaultdict(lambda: [Decimal(0), Decimal(0), 0])
        for tx_id in rule.members:
            t = self.txs[tx_id]
            row = rows[rule.bucket_of(t.created)]
            row[0] += t.spent
            row[1] += t.held
            row[2] += 1
        return {b: (v[0], v[1], v[2]) for b, v in rows.items()}


# --- the machine --------------------------------------------------------------------------------


def prepare(url: str) -> dict[str, int]:
    """The starting ledger (the first agent and every rule, made through the admin API); rule ids by name."""
    with Ledger(url, clock=FakeClock(START - timedelta(days=40))) as ledger:
        ledger.admin.create_agent(AGENTS[0])
        return {r.name: ledger.admin.create_rule(r.spec()).id for r in RULES}


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, fresh_url: Callable[[], str], rule_ids: dict[str, int]) -> None:
        super().__init__()
        self.clock = FakeClock(START)
        self.ledger = Ledger(
            fresh_url(), clock=self.clock, settings=Settings(hold_ttl=HOLD_TTL, auto_create_agents=True)
        )
        self.gov = self.ledger.governor
        self.admin = self.ledger.admin
        self.model = Model()
        self.rule_ids = rule_ids
        assert [(r.name, r.enabled) for r in self.admin.rules()] == [(r.name, True) for r in RULES]
        self.quotes = [self.ledger.quote(ENDPOINT, body) for body in BODIES]
        assert [q.amount for q in self.quotes] == list(ESTIMATES)
        self.keys: dict[tuple[str, str], tuple[int, int]] = {}  # (agent, key) → (tx id, body index)

    def teardown(self) -> None:
        self.ledger.close()

    # --- helpers --------------------------------------------------------------------------------

    def _pick(self, data: st.DataObject, statuses: tuple[str, ...]) -> int | None:
        """A transaction in one of `statuses` (now and then any, to see the others refused)."""
        eligible = sorted(i for i, t in self.model.txs.items() if t.status in statuses)
        which = data.draw(st.sampled_from(("eligible", "eligible", "eligible", "any")))
        ids = eligible if eligible and which == "eligible" else sorted(self.model.txs)
        return data.draw(st.sampled_from(ids)) if ids else None

    def _same_as_stored(self, tx: Transaction) -> None:
        assert tx == self.gov.transaction(tx.id), "the record a call returns must equal a fresh read"

    def _agrees(self, decision: Any, expected: Prediction) -> None:
        got_denials = [(d.rule, str(d.type)) for d in decision.denials]
        got_alerts = [(a.rule, str(a.type)) for a in decision.alerts]
        assert (decision.allowed, got_denials) == (expected.allowed, expected.denials), (
            "the governor decided otherwise than the model",
            decision.to_json(),
            expected,
        )
        assert got_alerts == expected.alerts, (decision.to_json(), expected)
        assert {v.rule.name for v in decision.verdicts} == expected.applying
        after = {v.rule.name: v.usage_after for v in decision.verdicts if v.usage_after is not None}
        assert after == expected.usage_after, "a spend rule's usage differs from the model's recount"

    def _resolve(self, tx_id: int, allowed: tuple[str, ...], to: str, call: Callable[[], Transaction]) -> bool:
        model = self.model.txs[tx_id]
        if model.status not in allowed:
            with pytest.raises(Conflict):
                call()
            event(f"{to}: refused from {model.status}")
            return False
        tx = call()
        assert tx.status == to and tx.id == tx_id
        self._same_as_stored(tx)
        model.status = to
        return True

    # --- actions --------------------------------------------------------------------------------

    @rule(agent=st.sampled_from(AGENTS), body=st.integers(0, len(BODIES) - 1), key=st.sampled_from(KEYS))
    def authorize(self, agent: str, body: int, key: str | None) -> None:
        q = self.quotes[body]
        now = self.clock()
        earlier = self.keys.get((agent, key)) if key else None
        if earlier is not None and earlier[1] != body:
            with pytest.raises(Conflict):
                self.gov.authorize(agent, q, BODIES[body], idempotency_key=key)
            return
        if earlier is not None:  # a retry: the first transaction as it now stands, nothing written
            auth = self.gov.authorize(agent, q, BODIES[body], idempotency_key=key)
            assert auth.replayed and auth.decision is None and auth.transaction.id == earlier[0]
            assert auth.transaction.status == self.model.txs[earlier[0]].status
            return
        expected = self.model.predict(agent, ESTIMATES[body], now)
        auth = self.gov.authorize(agent, q, BODIES[body], idempotency_key=key)
        assert not auth.replayed and auth.decision is not None
        self._agrees(auth.decision, expected)
        tx = auth.transaction
        self._same_as_stored(tx)
        assert tx.id not in self.model.txs and tx.agent == agent and tx.created_at == now
        assert tx.status == (TxStatus.pending if expected.allowed else TxStatus.denied)
        assert tx.estimated_cost == ESTIMATES[body]
        event(
            "authorize: "
            + (
                "allowed"
                if expected.allowed
                else "denied by " + ", ".join(sorted({str(d[0] or d[1]) for d in expected.denials}))
            )
        )
        if expected.expires:
            event("authorize: expired stale holds, then decided again")
        if expected.alerts:
            event("authorize: alerts " + ", ".join(sorted({f"{a[0]}/{a[1]}" for a in expected.alerts})))
        self.model.expire(expected.expires)
        self.model.add(
            ModelTx(
                tx.id,
                agent,
                now,
                ESTIMATES[body],
                tx.status.value,
                body,
                rules_on=frozenset(r.name for r in self.model.rules if r.enabled),
            )
        )
        if key:
            self.keys[(agent, key)] = (tx.id, body)

    @rule(agent=st.sampled_from(AGENTS), body=st.integers(0, len(BODIES) - 1))
    def authorize_without_key(self, agent: str, body: int) -> None:
        """Requests are most of what an agent does: a second way in, so that budgets fill up."""
        self.authorize(agent, body, None)

    @rule(agent=st.sampled_from(AGENTS), body=st.integers(0, len(BODIES) - 1))
    def check(self, agent: str, body: int) -> None:
        """`check` predicts `authorize` and writes nothing (stale holds it would expire stay pending)."""
        expected = self.model.predict(agent, ESTIMATES[body], self.clock())
        self._agrees(self.gov.check(agent, self.quotes[body]), expected)

    @rule(data=st.data(), how=st.sampled_from(["at", "below", "above", "zero"]))
    def settle(self, data: st.DataObject, how: str) -> None:
        self._settle(data, how, late=False)

    @precondition(lambda self: any(t.status == "expired" for t in self.model.txs.values()))
    @rule(data=st.data(), how=st.sampled_from(["at", "below", "above", "zero"]))
    def settle_after_expiry(self, data: st.DataObject, how: str) -> None:
        """A run's answer that came after its hold expired is recorded (`allow_expired`), not dropped."""
        self._settle(data, how, late=True)

    def _settle(self, data: st.DataObject, how: str, *, late: bool) -> None:
        allowed = ("pending", "unknown", "expired") if late else ("pending", "unknown")
        tx_id = self._pick(data, ("expired",) if late else allowed)
        if tx_id is None:
            return
        model = self.model.txs[tx_id]
        est = model.estimate
        actual = {"at": est, "below": est / 2, "above": est * Decimal("1.5"), "zero": Decimal(0)}[how]
        was = model.status
        if self._resolve(
            tx_id, allowed, "completed", lambda: self.gov.settle(tx_id, actual, facts={"how": how}, allow_expired=late)
        ):
            model.actual = actual
            model.late = was == "expired"
            event(f"settle: from {was}")
            assert self.gov.transaction(tx_id).actual_cost == actual

    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        tx_id = self._pick(data, ("pending", "unknown"))
        if tx_id is not None:
            self._resolve(tx_id, ("pending", "unknown"), "voided", lambda: self.gov.void(tx_id, "by hand"))

    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        tx_id = self._pick(data, ("pending",))
        if tx_id is not None:
            self._resolve(
                tx_id, ("pending",), "failed", lambda: self.gov.fail(tx_id, "upstream 500", upstream_status=500)
            )

    @rule(data=st.data())
    def mark_unknown(self, data: st.DataObject) -> None:
        tx_id = self._pick(data, ("pending",))
        if tx_id is not None:
            self._resolve(tx_id, ("pending",), "unknown", lambda: self.gov.mark_unknown(tx_id, "timeout"))

    @precondition(lambda self: any(t.status == "completed" for t in self.model.txs.values()))
    @rule(data=st.data(), amount=st.sampled_from(["0.005", "-0.002", "-1"]))
    def adjust(self, data: st.DataObject, amount: str) -> None:
        tx_id = self._pick(data, ("completed",))
        assert tx_id is not None
        if self.model.txs[tx_id].status != "completed":
            with pytest.raises(Conflict):
                self.gov.add_cost(tx_id, Decimal(amount), note="correction")
            return
        tx = self.gov.add_cost(tx_id, Decimal(amount), note="correction")
        self._same_as_stored(tx)
        self.model.txs[tx_id].adjustments += Decimal(amount)
        self.model.txs[tx_id].raised += max(Decimal(0), Decimal(amount))
        event(f"adjust: {amount}")

    @rule()
    def expire(self) -> None:
        expected = self.model.stale(self.clock())
        assert self.gov.expire() == expected
        self.model.expire(expected)
        if expected:
            event("expire: released stale holds")

    @rule(paused=st.booleans())
    def pause(self, paused: bool) -> None:
        self.admin.update_agent(AGENTS[0], status="paused" if paused else "active")
        (self.model.paused.add if paused else self.model.paused.discard)(AGENTS[0])

    @rule(which=st.integers(0, len(RULES) - 1))
    def toggle_rule(self, which: int) -> None:
        r = self.model.rules[which]
        r.enabled = not r.enabled
        self.admin.update_rule(r.name, RuleSpec(enabled=r.enabled, given={"enabled"}))
        if r.enabled:
            self.model.recount(r, self.clock())

    @rule(
        step=st.sampled_from(
            [
                "1s",
                "59s",
                "1m",
                "5m",
                "15m",
                "hold-ttl",
                "hold-ttl",
                "1h",
                "2h",
                "midnight",
                "next-monday",
                "next-month",
            ]
        )
    )
    def advance(self, step: str) -> None:
        now = self.clock()
        midnight = datetime.combine(now.date(), time(), UTC)
        if step == "midnight":
            self.clock.set(midnight + timedelta(days=1))
        elif step == "next-monday":
            self.clock.set(midnight + timedelta(days=7 - now.weekday()))
        elif step == "next-month":
            self.clock.set(datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC))
        else:
            self.clock.advance(
                {"1s": 1, "59s": 59, "1m": 60, "5m": 300, "15m": 900, "hold-ttl": HOLD_TTL + 1, "1h": 3600, "2h": 7200}[
                    step
                ]
            )

    @precondition(lambda self: bool(self.model.txs))
    @rule(
        data=st.data(),
        which=st.sampled_from([r.name for r in RULES if r.window]),
        edge=st.sampled_from(["window-end", "last-overlap", "first-out"]),
    )
    def advance_to_a_window_edge(self, data: st.DataObject, which: str, edge: str) -> None:
        """To where a transaction leaves a rolling window: `window-end`, created + window (out of the
        window, its slice still overlapping it); `last-overlap`, the last second its slice overlaps;
        `first-out`, the first second it does not."""
        tx = self.model.txs[data.draw(st.sampled_from(sorted(self.model.txs)))]
        r = next(r for r in self.model.rules if r.name == which)
        assert r.window is not None
        slice_end = r.bucket_of(tx.created) + r.slice_seconds()
        target = {
            "window-end": int(tx.created.timestamp()) + r.window,
            "last-overlap": slice_end + r.window - 1,
            "first-out": slice_end + r.window,
        }[edge]
        if target > self.clock().timestamp():
            self.clock.set(datetime.fromtimestamp(target, UTC))

    # --- invariants -----------------------------------------------------------------------------

    def _stored(self) -> dict[str, Any]:
        t, c = transactions.c, cost_lines.c
        with self.ledger.engine.connect() as conn:
            txs = {
                r.id: r
                for r in conn.execute(
                    select(t.id, agents.c.name, t.status, t.estimated_cost, t.actual_cost, t.created_at).join(
                        agents, agents.c.id == t.agent_id
                    )
                )
            }
            adjusted: dict[int, Decimal] = defaultdict(Decimal)
            for tx_id, amount in conn.execute(select(c.transaction_id, c.amount).where(c.kind == "adjustment")):
                adjusted[tx_id] += amount
            counters: dict[int, dict[int, tuple[Decimal, Decimal, int]]] = defaultdict(dict)
            for r in conn.execute(select(rule_counters)):
                counters[r.rule_id][r.bucket] = (r.spent, r.held, r.requests)
        return {"txs": txs, "adjusted": adjusted, "counters": counters}

    @invariant()
    def the_ledger_equals_the_model(self) -> None:
        stored = self._stored()
        expected = {
            i: (t.agent, t.status, t.estimate, t.actual, t.adjustments, t.created) for i, t in self.model.txs.items()
        }
        got = {
            i: (
                r.name,
                r.status.value if hasattr(r.status, "value") else r.status,
                r.estimated_cost,
                r.actual_cost,
                stored["adjusted"].get(i, Decimal(0)),
                r.created_at,
            )
            for i, r in stored["txs"].items()
        }
        assert got == expected

        now = self.clock()
        for r in self.model.rules:
            want = self.model.counters(r)
            have = stored["counters"].get(self.rule_ids[r.name], {})
            if r.window is not None:  # a slice that left the window is never read again: compare live ones
                live = {
                    b
                    for b in set(want) | set(have)
                    if b + r.slice_seconds() > now.timestamp() - r.window and b <= now.timestamp()
                }
                want = {b: v for b, v in want.items() if b in live}
                have = {b: v for b, v in have.items() if b in live}
            assert have == want, (r.name, "counters differ from the model's recount", have, want)

    @invariant()
    def budgets_hold(self) -> None:
        """On what the database holds (equal to the model, checked above): no deny budget is overspent
        beyond the variances of actual costs and the answers that came after their hold expired."""
        now = self.clock()
        for r in self.model.rules:
            if r.action != "deny" or not r.enabled:
                continue
            counted = [
                t
                for t in self.model.txs.values()
                if t.authorized and r.applies(t.agent) and r.counts_at(t.created, now)
            ]
            if any(r.name not in t.rules_on for t in counted):
                continue  # some of it was authorized while the rule was off: its limit was not in force
            if r.type == "rate-limit":
                assert len(counted) <= r.limit, r.name
                continue
            used = sum((t.spent + t.held for t in counted), Decimal(0))
            excess = sum((t.added_after_decisions for t in counted), Decimal(0))
            assert used <= r.limit + excess, (r.name, used, excess)


def test_governor_state_machine_sqlite(_sqlite_template: Path, tmp_path: Path) -> None:
    start = tmp_path / "start.db"
    shutil.copy(_sqlite_template, start)
    rule_ids = prepare(f"sqlite:///{start}")
    path = tmp_path / "stateful.db"

    def fresh() -> str:
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        shutil.copy(start, path)
        return f"sqlite:///{path}"

    run_state_machine_as_test(lambda: LedgerMachine(fresh, rule_ids), settings=machine_settings("sqlite"))


@pytest.mark.postgres
def test_governor_state_machine_postgres(pg_url: str) -> None:
    rule_ids = prepare(pg_url)

    def fresh() -> str:
        """Back to the starting ledger: no transactions, the first agent only, active; every rule on."""
        with scratch_engine(pg_url) as engine, engine.begin() as conn:
            for table in RESET_TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
            conn.execute(text("DELETE FROM agents WHERE name <> :name"), {"name": AGENTS[0]})
            conn.execute(text("UPDATE agents SET status = 'active'"))
            conn.execute(text("UPDATE spending_rules SET enabled = true"))
        return pg_url

    run_state_machine_as_test(lambda: LedgerMachine(fresh, rule_ids), settings=machine_settings("postgresql"))
