"""A stateful (model-based) test of the governor: random authorize / settle / void / fail /
mark-unknown / expire / adjust sequences, with a fake clock that crosses hold TTLs and UTC day
boundaries, against a ledger with a daily spend-limit (deny, with an alert threshold), a rolling
2h spend-limit and an hourly rate-limit. After every step:

- the budget invariant: for every `deny` spend-limit and its current period or window,
  settled + held ≤ limit + the positive variances (actual + adjustments − estimate) of the
  completed transactions counted in it;
- every deny rate-limit: requests in its current period or window ≤ limit;
- every counter row equals the ledger's own sums, recounted here from `transactions`, `holds`
  and `cost_lines` (pending → held += estimate; completed → spent += actual + adjustments;
  unknown → spent += estimate; others nothing; requests = number of hold rows);
- every transaction's status is the one the model expects (a pending hold may expire, and only
  once it is older than the hold TTL), and the JSON each call returns equals a fresh read.

Each hypothesis example gets a fresh database: a copy of the migrated SQLite template, or the
PostgreSQL tables truncated.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import text

from conftest import FakeClock
from ledger.admin import Admin
from ledger.db import engine_for, open_ledger, _checked
from ledger.errors import Conflict
from ledger.governor import Governor
from ledger.periods import buckets
from ledger.rules import RuleSpec
from pricing import quote
from pricing.money import ZERO, from_nano, to_nano

HOLD_TTL = 900
ENDPOINT = "fal-ai/flux/dev"
BODIES = ({}, {"num_images": 2}, {"image_size": "landscape_16_9"})
AGENTS = ("alpha", "beta")
KEYS = (None, None, None, "k1", "k2")
START = datetime(2026, 11, 25, 22, 40, 0, tzinfo=UTC)  # a day boundary within the first steps
SETTINGS = settings(max_examples=25, stateful_step_count=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TABLES = ("alerts", "facts", "cost_lines", "holds", "rule_counters", "transactions", "spending_rules",
          "audit_log", "agents")
RULES = (
    RuleSpec(name="daily", type="spend-limit", limit="0.1", period="day", alert_at=80,
             given={"name", "type", "limit", "period", "alert_at"}),
    RuleSpec(name="rolling-2h", type="spend-limit", limit="0.06", window="2h", agent="alpha",
             given={"name", "type", "limit", "window", "agent"}),
    RuleSpec(name="hourly-rate", type="rate-limit", limit="6", period="hour",
             given={"name", "type", "limit", "period"}),
)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, fresh_url: Callable[[], str]) -> None:
        super().__init__()
        self.url = fresh_url()
        self.engine = open_ledger(self.url)
        self.clock = FakeClock(START)
        self.gov = Governor(self.engine, clock=self.clock, hold_ttl=HOLD_TTL, auto_create=True)
        admin = Admin(self.engine, clock=self.clock)
        admin.create_agent(AGENTS[0])  # the second agent is created on first use
        self.rules = [admin.create_rule(spec) for spec in RULES]
        self.quotes = [quote(ENDPOINT, body) for body in BODIES]
        #: tx id → {"status", "created", "estimate"} as the model expects it
        self.txs: dict[int, dict[str, Any]] = {}
        self.keys: dict[tuple[str, str], tuple[int, int]] = {}  # (agent, key) → (tx id, body index)

    def teardown(self) -> None:
        self.engine.dispose()

    # --- helpers --------------------------------------------------------------------------------

    def _pick(self, data: st.DataObject, statuses: tuple[str, ...] | None = None) -> int | None:
        ids = sorted(self.txs) if statuses is None else sorted(i for i, t in self.txs.items()
                                                               if t["status"] in statuses)
        if not ids:
            return None
        return data.draw(st.sampled_from(ids))

    def _same_as_stored(self, doc: dict[str, Any]) -> None:
        assert doc == self.gov.transaction(doc["id"]), "the JSON a call returns must equal a fresh read"

    def _sync_expired(self) -> None:
        """Authorization may release stale holds itself: accept exactly those."""
        with self.engine.connect() as conn:
            stored = dict(conn.execute(text("SELECT id, status FROM transactions")).all())
        cutoff = self.clock() - timedelta(seconds=HOLD_TTL)
        for tx_id, model in self.txs.items():
            if stored[tx_id] != model["status"]:
                assert (model["status"], stored[tx_id]) == ("pending", "expired"), (tx_id, model, stored[tx_id])
                assert model["created"] < cutoff, "a hold expired before its TTL"
                model["status"] = "expired"

    def _resolve(self, tx_id: int, allowed: tuple[str, ...], to: str, call: Callable[[], dict[str, Any]]) -> None:
        before = self.txs[tx_id]["status"]
        if before in allowed:
            doc = call()
            assert doc["status"] == to and doc["id"] == tx_id
            self._same_as_stored(doc)
            self.txs[tx_id]["status"] = to
        else:
            with pytest.raises(Conflict):
                call()

    # --- actions --------------------------------------------------------------------------------

    @rule(agent=st.sampled_from(AGENTS), body=st.integers(0, len(BODIES) - 1), key=st.sampled_from(KEYS))
    def authorize(self, agent: str, body: int, key: str | None) -> None:
        q = self.quotes[body]
        earlier = self.keys.get((agent, key)) if key else None
        if earlier is not None and earlier[1] != body:
            with pytest.raises(Conflict):
                self.gov.authorize(agent, q, BODIES[body], idempotency_key=key)
            return
        auth = self.gov.authorize(agent, q, BODIES[body], idempotency_key=key)
        tx = auth.transaction
        self._same_as_stored(tx)
        if earlier is not None:
            assert auth.replayed and tx["id"] == earlier[0]
            self._sync_expired()
            return
        assert not auth.replayed and tx["id"] not in self.txs
        assert tx["status"] in ("pending", "denied")
        assert Decimal(tx["estimated_cost"]) == from_nano(to_nano(q.amount))
        self._sync_expired()
        self.txs[tx["id"]] = {"status": tx["status"], "created": self.clock(), "estimate": q.amount}
        if key:
            self.keys[(agent, key)] = (tx["id"], body)

    @rule(data=st.data(), how=st.sampled_from(["at", "below", "above", "zero"]))
    def settle(self, data: st.DataObject, how: str) -> None:
        tx_id = self._pick(data)
        if tx_id is None:
            return
        est = self.txs[tx_id]["estimate"]
        actual = {"at": est, "below": est / 2, "above": est * Decimal("1.5"), "zero": ZERO}[how]
        self._resolve(tx_id, ("pending", "unknown"), "completed",
                      lambda: self.gov.settle(tx_id, actual, facts_={"how": how}))

    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        tx_id = self._pick(data)
        if tx_id is not None:
            self._resolve(tx_id, ("pending", "unknown"), "voided", lambda: self.gov.void(tx_id, "by hand"))

    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        tx_id = self._pick(data)
        if tx_id is not None:
            self._resolve(tx_id, ("pending",), "failed", lambda: self.gov.fail(tx_id, "upstream 500",
                                                                               upstream_status=500))

    @rule(data=st.data())
    def mark_unknown(self, data: st.DataObject) -> None:
        tx_id = self._pick(data)
        if tx_id is not None:
            self._resolve(tx_id, ("pending",), "unknown", lambda: self.gov.mark_unknown(tx_id, "timeout"))

    @precondition(lambda self: any(t["status"] == "completed" for t in self.txs.values()))
    @rule(data=st.data(), amount=st.sampled_from(["0.005", "-0.002"]))
    def adjust(self, data: st.DataObject, amount: str) -> None:
        tx_id = self._pick(data, ("completed",))
        assert tx_id is not None
        doc = self.gov.add_cost(tx_id, Decimal(amount), note="correction")
        self._same_as_stored(doc)

    @rule()
    def expire(self) -> None:
        cutoff = self.clock() - timedelta(seconds=HOLD_TTL)
        expected = sorted(i for i, t in self.txs.items() if t["status"] == "pending" and t["created"] < cutoff)
        assert self.gov.expire() == expected
        for tx_id in expected:
            self.txs[tx_id]["status"] = "expired"

    @rule(step=st.sampled_from(["1s", "1m", "5m", "hold-ttl", "1h", "midnight"]))
    def advance(self, step: str) -> None:
        now = self.clock()
        if step == "midnight":
            self.clock.set((now + timedelta(days=1)).replace(hour=0, minute=0, second=1, microsecond=0))
        else:
            self.clock.advance({"1s": 1, "1m": 60, "5m": 300, "hold-ttl": HOLD_TTL + 1, "1h": 3600}[step])

    # --- invariants -----------------------------------------------------------------------------

    def _ledger(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return {
                "txs": {r[0]: (r[1], r[2], r[3]) for r in conn.execute(text(
                    "SELECT id, status, estimated_cost, actual_cost FROM transactions"))},
                "holds": conn.execute(text("SELECT transaction_id, rule_id, bucket FROM holds")).all(),
                "adjust": conn.execute(text("SELECT transaction_id, SUM(amount) FROM cost_lines "
                                            "WHERE kind = 'adjustment' GROUP BY transaction_id")).all(),
                "counters": {(r[0], r[1]): (r[2], r[3], r[4]) for r in conn.execute(text(
                    "SELECT rule_id, bucket, spent, held, requests FROM rule_counters"))},
            }

    @invariant()
    def counters_equal_the_ledger(self) -> None:
        led = self._ledger()
        adjustments = {tx: int(total) for tx, total in led["adjust"]}
        expected: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0, 0])  # spent, held, requests
        for tx_id, rule_id, bucket in led["holds"]:
            status, est, actual = led["txs"][tx_id]
            row = expected[(rule_id, bucket)]
            row[2] += 1
            if status == "pending":
                row[1] += est
            elif status == "completed":
                row[0] += actual + adjustments.get(tx_id, 0)
            elif status == "unknown":
                row[0] += est
            else:
                assert status in ("failed", "voided", "expired"), status  # a denial holds nothing
        stored = {k: list(v) for k, v in led["counters"].items()}
        assert stored == dict(expected)

    @invariant()
    def budgets_hold(self) -> None:
        led = self._ledger()
        adjustments = {tx: int(total) for tx, total in led["adjust"]}
        now = self.clock()
        for r in self.rules:
            if r["type"] not in ("spend-limit", "rate-limit") or r["action"] != "deny":
                continue
            current, low = buckets(r["period"], _window_seconds(r["window"]), now)
            rows = [v for (rule_id, b), v in led["counters"].items() if rule_id == r["id"] and low <= b <= current]
            if r["type"] == "rate-limit":
                assert sum(v[2] for v in rows) <= r["limit"]
                continue
            used = sum(v[0] + v[1] for v in rows)
            excess = 0
            for tx_id, rule_id, b in led["holds"]:
                status, est, actual = led["txs"][tx_id]
                if rule_id == r["id"] and low <= b <= current and status == "completed":
                    excess += max(0, actual + adjustments.get(tx_id, 0) - est)
            assert used <= to_nano(Decimal(r["limit"])) + excess, (r["name"], used, excess)

    @invariant()
    def statuses_match_the_model(self) -> None:
        with self.engine.connect() as conn:
            stored = dict(conn.execute(text("SELECT id, status FROM transactions")).all())
        assert stored == {i: t["status"] for i, t in self.txs.items()}


def _window_seconds(window: str | None) -> int | None:
    from ledger.periods import parse_window

    return parse_window(window) if window else None


def test_governor_state_machine_sqlite(_sqlite_template: Path, tmp_path: Path) -> None:
    path = tmp_path / "stateful.db"
    url = f"sqlite:///{path}"

    def fresh() -> str:
        engine_for(url).dispose()
        _checked.discard(url)
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        shutil.copy(_sqlite_template, path)
        return url

    try:
        run_state_machine_as_test(lambda: LedgerMachine(fresh), settings=SETTINGS)
    finally:
        engine_for(url).dispose()


@pytest.mark.postgres
def test_governor_state_machine_postgres(pg_url: str) -> None:
    def fresh() -> str:
        with engine_for(pg_url).begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        return pg_url

    run_state_machine_as_test(lambda: LedgerMachine(fresh), settings=SETTINGS)
