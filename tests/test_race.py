"""Real multi-process races against one ledger: the budget invariant and idempotency.

Eight OS processes (multiprocessing, "spawn": fresh interpreters, their own engines and
connections) are released together by a barrier and hammer one `deny` spend-limit whose
limit is not a multiple of the estimate. Exactly floor(limit / estimate) requests may be
held — never more (overspend), never fewer (a lost update or a spurious denial) — and the
rule's counter must equal the sum of the pending estimates. Once on a SQLite file, once on
PostgreSQL (the `pg_url` fixture fails on CI when PostgreSQL is unreachable).
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import traceback
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

WORKERS = 8
PER_WORKER = 25
ENDPOINT = "fal-ai/flux/dev"
LIMIT = "0.75"  # 0.75 / 0.01185 = 63.29…: not a multiple of the estimate
#: One fixed instant for every worker, far from any day boundary: the race is about
#: concurrency, not about a day rolling over between two workers' clocks.
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
JOIN_TIMEOUT = 120

pytestmark = pytest.mark.slow


def _fixed_clock() -> datetime:
    return NOW


def _authorize_worker(url: str, agent: str, count: int, key: str | None, barrier: Any, results: Any) -> None:
    """Runs in a spawned process: wait for every sibling, then authorize `count` times."""
    outcomes: list[tuple[int, str, bool]] = []
    try:
        from ledger.db import engine_for
        from ledger.governor import Governor
        from pricing import quote

        engine = engine_for(url)
        gov = Governor(engine, clock=_fixed_clock, hold_ttl=900, auto_create=True)
        q = quote(ENDPOINT, {})
        with engine.connect():  # connect (and import everything) before the start line
            pass
        barrier.wait(timeout=60)
        for _ in range(count):
            auth = gov.authorize(agent, q, {}, idempotency_key=key)
            outcomes.append((auth.transaction["id"], auth.transaction["status"], auth.replayed))
        engine.dispose()
        results.put(("ok", outcomes))
    except BaseException:  # noqa: BLE001 - every failure is reported to the parent
        results.put(("error", traceback.format_exc()))


def _run_workers(url: str, agent_for: Any, count: int, key: str | None = None) -> list[list[tuple[int, str, bool]]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=_authorize_worker, args=(url, agent_for(i), count, key, barrier, results))
             for i in range(WORKERS)]
    for p in procs:
        p.start()
    collected, errors = [], []
    try:
        for _ in procs:
            kind, payload = results.get(timeout=JOIN_TIMEOUT)
            (collected if kind == "ok" else errors).append(payload)
    except queue_module.Empty:
        errors.append("a worker did not report within the timeout")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    assert not errors, "worker errors:\n" + "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert len(collected) == WORKERS
    return collected


def _setup_budget(url: str) -> tuple[int, Decimal]:
    from ledger.admin import Admin
    from ledger.db import open_ledger
    from ledger.rules import RuleSpec
    from pricing import quote

    engine = open_ledger(url)
    admin = Admin(engine, clock=_fixed_clock)
    admin.create_agent("racer")
    rule = admin.create_rule(RuleSpec(name="race-daily", type="spend-limit", limit=LIMIT, period="day",
                                      agent="racer", given={"name", "type", "limit", "period", "agent"}))
    return rule["id"], quote(ENDPOINT, {}).amount


def _budget_race(url: str) -> None:
    from ledger.db import open_ledger
    from ledger.periods import buckets
    from pricing.money import from_nano

    rule_id, estimate = _setup_budget(url)
    expected = int(Decimal(LIMIT) / estimate)
    assert 0 < expected < WORKERS * PER_WORKER and Decimal(LIMIT) % estimate != 0

    outcomes = [o for worker in _run_workers(url, lambda i: "racer", PER_WORKER) for o in worker]
    assert len(outcomes) == WORKERS * PER_WORKER
    statuses = [s for _, s, _ in outcomes]
    assert statuses.count("pending") == expected
    assert statuses.count("denied") == WORKERS * PER_WORKER - expected
    assert len({tx_id for tx_id, _, _ in outcomes}) == WORKERS * PER_WORKER  # every request its own row

    engine = open_ledger(url)
    with engine.connect() as conn:
        by_status = dict(conn.execute(text("SELECT status, COUNT(*) FROM transactions GROUP BY status")).all())
        assert by_status == {"pending": expected, "denied": WORKERS * PER_WORKER - expected}
        pending_nano = conn.execute(text(
            "SELECT COALESCE(SUM(estimated_cost), 0) FROM transactions WHERE status = 'pending'")).scalar_one()
        counters = conn.execute(text("SELECT bucket, spent, held, requests FROM rule_counters WHERE rule_id = :r"),
                                {"r": rule_id}).all()
        n_holds = conn.execute(text("SELECT COUNT(*) FROM holds WHERE rule_id = :r"), {"r": rule_id}).scalar_one()
        denied_holds = conn.execute(text(
            "SELECT COUNT(*) FROM holds h JOIN transactions t ON t.id = h.transaction_id "
            "WHERE t.status <> 'pending'")).scalar_one()
        estimate_lines = conn.execute(text(
            "SELECT COUNT(*) FROM cost_lines WHERE kind = 'estimate'")).scalar_one()
    day, _ = buckets("day", None, NOW)
    assert len(counters) == 1
    bucket, spent, held, requests = counters[0]
    assert bucket == day
    assert from_nano(held) == from_nano(pending_nano) == estimate * expected
    assert from_nano(held) <= Decimal(LIMIT) < from_nano(held) + estimate  # full, and not over
    assert spent == 0 and requests == expected == n_holds
    assert denied_holds == 0 and estimate_lines == expected


def _idempotency_race(url: str) -> None:
    from ledger.db import open_ledger

    # The agent does not exist yet: the workers also race to create it on first use.
    outcomes = [o for worker in _run_workers(url, lambda i: "idem-agent", 1, key="same-key") for o in worker]
    ids = {tx_id for tx_id, _, _ in outcomes}
    assert len(ids) == 1, outcomes
    assert [s for _, s, _ in outcomes] == ["pending"] * WORKERS
    assert sum(1 for _, _, replayed in outcomes if not replayed) == 1  # one authorized, seven replays

    engine = open_ledger(url)
    with engine.connect() as conn:
        txs = conn.execute(text("SELECT id, idempotency_key, status FROM transactions")).all()
        agents = conn.execute(text("SELECT id FROM agents WHERE name = 'idem-agent'")).all()
        audits = conn.execute(text(
            "SELECT COUNT(*) FROM audit_log WHERE entity = 'agent' AND entity_name = 'idem-agent'")).scalar_one()
        estimate_lines = conn.execute(text("SELECT COUNT(*) FROM cost_lines")).scalar_one()
    assert [(r.id, r.idempotency_key, r.status) for r in txs] == [(ids.pop(), "same-key", "pending")]
    assert len(agents) == 1 and audits == 1  # created once, audited once
    assert estimate_lines == 1


def test_budget_race_sqlite(sqlite_url: str) -> None:
    _budget_race(sqlite_url)


@pytest.mark.postgres
def test_budget_race_postgres(pg_url: str) -> None:
    _budget_race(pg_url)


def test_idempotency_race_sqlite(sqlite_url: str) -> None:
    _idempotency_race(sqlite_url)


@pytest.mark.postgres
def test_idempotency_race_postgres(pg_url: str) -> None:
    _idempotency_race(pg_url)
