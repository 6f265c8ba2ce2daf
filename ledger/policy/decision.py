"""The rule decision for a request: the agent and its rules, each counted rule's usage in its
current period or window, and the verdicts (`check` writes nothing; `authorize` decides the same way
under the rules' locks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection

from pricing import Quote
from pricing.money import ZERO, from_nano, usd_str

from ..errors import NotFound
from ..records import AgentRef, AgentStatus, Decision, Denial, RuleAction
from ..store.db import reading
from ..store.hotpath import Driver
from ..store.models import agents
from ..store.queries import find_agent, has_stale_holds, rule_rows_in_scope, stale_held
from ..validation import validate_agent_name
from .audit import write_audit
from .periods import buckets
from .rules import Rule, Usage, Verdict, evaluate
from .transitions import Transitions


def unknown_agent(name: str) -> NotFound:
    return NotFound(
        f"unknown agent {name!r} (agents are not created on first use here)", agent=name, reason="create_first"
    )


class Deciding(Transitions):
    """The rule decision, with or without the rules' locks."""

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
                    raise unknown_agent(agent_name)
                agent = AgentRef(None, agent_name, AgentStatus.active)
                rules = [Rule.from_row(r) for r in rule_rows_in_scope(conn, None)]
            decision = self._decide(d, agent, rules, quote, now)
            if not decision.allowed and has_stale_holds(conn, self._cutoff(now)):
                # authorize would expire those holds first: predict what it will decide.
                decision = self._decide(d, agent, rules, quote, now, released=stale_held(conn, self._cutoff(now)))
            return decision

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

    def _create_agent_on_first_use(self, conn: Connection, name: str, now: datetime) -> AgentRef:
        if not self.auto_create:
            raise unknown_agent(name)
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
