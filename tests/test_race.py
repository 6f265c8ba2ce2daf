"""Real multi-process races against one ledger: the budget invariant, idempotency, and a mixed
workload (authorize, settle at/above/below the estimate, void, fail, mark unknown, expire).

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
import random
import time
import traceback
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from conftest import PG_TEST_PREFIX, scratch_engine
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


def _open(url: str, clock: Any = _fixed_clock, *, auto_create: bool = True) -> Any:
    """A `Ledger` of the caller's own (each worker process opens one inside the child)."""
    from ledger import Ledger, Settings

    return Ledger(url, clock=clock, settings=Settings(hold_ttl=900, auto_create_agents=auto_create))


def _authorize_worker(url: str, agent: str, count: int, key: str | None, barrier: Any, results: Any) -> None:
    """Runs in a spawned process: wait for every sibling, then authorize `count` times."""
    outcomes: list[tuple[int, str, bool]] = []
    try:
        from pricing import quote

        with _open(url) as opened:
            gov = opened.governor
            q = quote(ENDPOINT, {})
            with opened.engine.connect():  # connect (and import everything) before the start line
                pass
            barrier.wait(timeout=60)
            for _ in range(count):
                auth = gov.authorize(agent, q, {}, idempotency_key=key)
                tx = auth.transaction
                outcomes.append((tx.id, tx.status.value, auth.replayed))
        results.put(("ok", outcomes))
    except BaseException:  # every failure is reported to the parent
        results.put(("error", traceback.format_exc()))


def _spawn_and_collect(target: Any, args_for: Any, while_running: Any = None) -> list[Any]:
    """Start WORKERS spawned processes released together by a barrier; every worker's payload,
    asserting that none failed, hung or exited badly. `while_running()` runs once they are started."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for(i), barrier, results)) for i in range(WORKERS)]
    for p in procs:
        p.start()
    collected, errors = [], []
    try:
        if while_running is not None:
            while_running()
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
    assert not errors, "worker errors (a deadlock, a lock timeout, a constraint…):\n" + "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert len(collected) == WORKERS
    return collected


def _run_workers(
    url: str, agent_for: Any, count: int, key: str | None = None, while_running: Any = None
) -> list[list[tuple[int, str, bool]]]:
    return _spawn_and_collect(_authorize_worker, lambda i: (url, agent_for(i), count, key), while_running)


def _setup_budget(url: str) -> tuple[int, Decimal]:
    from ledger import RuleSpec
    from pricing import quote

    with _open(url) as opened:
        opened.admin.create_agent("racer")
        rule = opened.admin.create_rule(
            RuleSpec(
                name="race-daily",
                type="spend-limit",
                limit=LIMIT,
                period="day",
                agent="racer",
                given={"name", "type", "limit", "period", "agent"},
            )
        )
    return rule.id, quote(ENDPOINT, {}).amount


def _budget_race(url: str) -> None:
    from ledger.policy.periods import buckets
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

    with scratch_engine(url) as engine, engine.connect() as conn:
        by_status = dict(conn.execute(text("SELECT status, COUNT(*) FROM transactions GROUP BY status")).all())
        assert by_status == {"pending": expected, "denied": WORKERS * PER_WORKER - expected}
        pending_nano = conn.execute(
            text("SELECT COALESCE(SUM(estimated_cost), 0) FROM transactions WHERE status = 'pending'")
        ).scalar_one()
        counters = conn.execute(
            text("SELECT bucket, spent, held, requests FROM rule_counters WHERE rule_id = :r"), {"r": rule_id}
        ).all()
        n_holds = conn.execute(text("SELECT COUNT(*) FROM holds WHERE rule_id = :r"), {"r": rule_id}).scalar_one()
        denied_holds = conn.execute(
            text(
                "SELECT COUNT(*) FROM holds h JOIN transactions t ON t.id = h.transaction_id "
                "WHERE t.status <> 'pending'"
            )
        ).scalar_one()
        estimate_lines = conn.execute(text("SELECT COUNT(*) FROM cost_lines WHERE kind = 'estimate'")).scalar_one()
    day, _ = buckets("day", None, NOW)
    assert len(counters) == 1
    bucket, spent, held, requests = counters[0]
    assert bucket == day
    assert from_nano(held) == from_nano(pending_nano) == estimate * expected
    assert from_nano(held) <= Decimal(LIMIT) < from_nano(held) + estimate  # full, and not over
    assert spent == 0 and requests == expected == n_holds
    assert denied_holds == 0 and estimate_lines == expected


def _idempotency_race(url: str) -> None:
    # The agent does not exist yet: the workers also race to create it on first use.
    outcomes = [o for worker in _run_workers(url, lambda i: "idem-agent", 1, key="same-key") for o in worker]
    ids = {tx_id for tx_id, _, _ in outcomes}
    assert len(ids) == 1, outcomes
    assert [s for _, s, _ in outcomes] == ["pending"] * WORKERS
    assert sum(1 for _, _, replayed in outcomes if not replayed) == 1  # one authorized, seven replays

    with scratch_engine(url) as engine, engine.connect() as conn:
        txs = conn.execute(text("SELECT id, idempotency_key, status FROM transactions")).all()
        agents = conn.execute(text("SELECT id FROM agents WHERE name = 'idem-agent'")).all()
        audits = conn.execute(
            text("SELECT COUNT(*) FROM audit_log WHERE entity = 'agent' AND entity_name = 'idem-agent'")
        ).scalar_one()
        estimate_lines = conn.execute(text("SELECT COUNT(*) FROM cost_lines")).scalar_one()
    assert [(r.id, r.idempotency_key, r.status) for r in txs] == [(ids.pop(), "same-key", "pending")]
    assert len(agents) == 1 and audits == 1  # created once, audited once
    assert estimate_lines == 1


def _idempotency_race_existing_agent(url: str, while_running: Any = None) -> None:
    """The agent exists: nothing serializes the workers before their INSERTs, so the losers of the
    unique (agent, key) index raise IntegrityError and must replay the winner's transaction."""
    with _open(url) as opened:
        opened.admin.create_agent("idem-agent")
    outcomes = [
        o
        for worker in _run_workers(url, lambda i: "idem-agent", 1, key="same-key", while_running=while_running)
        for o in worker
    ]
    assert len(outcomes) == WORKERS
    ids = {tx_id for tx_id, _, _ in outcomes}
    assert len(ids) == 1, outcomes  # every worker got the same transaction id
    assert [s for _, s, _ in outcomes] == ["pending"] * WORKERS
    assert sum(1 for _, _, replayed in outcomes if not replayed) == 1, outcomes
    with scratch_engine(url) as engine, engine.connect() as conn:
        txs = conn.execute(text("SELECT id, idempotency_key, status FROM transactions")).all()
        estimate_lines = conn.execute(text("SELECT COUNT(*) FROM cost_lines")).scalar_one()
    assert [(r.id, r.idempotency_key, r.status) for r in txs] == [(ids.pop(), "same-key", "pending")]
    assert estimate_lines == 1


def test_idempotency_race_with_an_existing_agent_sqlite(sqlite_url: str) -> None:
    # (SQLite's BEGIN IMMEDIATE serializes the key lookup with the insert: the replay is the lookup's.)
    _idempotency_race_existing_agent(sqlite_url)


@pytest.mark.postgres
def test_idempotency_race_with_an_existing_agent_postgres(pg_url: str) -> None:
    """Deterministic on PostgreSQL: the test holds a SHARE lock on `transactions` (reads pass, INSERTs
    wait) until every worker has looked its key up, found nothing and is waiting to insert; then lets
    them go. One INSERT wins; the other seven hit the unique index."""
    import psycopg
    from conftest import _pg_dsn

    gate = psycopg.connect(_pg_dsn(pg_url))
    gate.execute("LOCK TABLE transactions IN SHARE MODE")

    def release_when_all_wait() -> None:
        deadline, waiting = time.monotonic() + 60, 0
        with psycopg.connect(_pg_dsn(pg_url), autocommit=True) as watcher:
            while time.monotonic() < deadline:
                waiting = watcher.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE NOT l.granted AND c.relname = 'transactions'"
                ).fetchone()[0]  # type: ignore[index]
                if waiting >= WORKERS:
                    break
                time.sleep(0.01)
        gate.commit()
        assert waiting >= WORKERS, f"only {waiting} of {WORKERS} workers reached the INSERT together"

    try:
        _idempotency_race_existing_agent(pg_url, release_when_all_wait)
    finally:
        gate.close()


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


# --- a mixed workload: every writer path at once --------------------------------------------

MIXED_PER_WORKER = 15
MIXED_ACTIONS = ("at", "above", "below", "void", "fail", "unknown-then-settle", "keep", "expire")


def _mixed_worker(url: str, agent: str, seed: int, barrier: Any, results: Any) -> None:
    """Authorize, then resolve each transaction at random; one action expires every pending hold."""
    outcomes: list[str] = []
    try:
        from ledger import Conflict
        from pricing import quote

        start = time.monotonic()
        with _open(url, clock=lambda: NOW + timedelta(seconds=time.monotonic() - start)) as opened:
            gov = opened.governor
            q = quote(ENDPOINT, {})
            rng = random.Random(seed)
            with opened.engine.connect():
                pass
            barrier.wait(timeout=60)
            for i in range(MIXED_PER_WORKER):
                auth = gov.authorize(agent, q, {"prompt": f"{agent} {i}"})
                if not auth.allowed:
                    outcomes.append("denied")
                    continue
                tx_id, action = auth.transaction.id, rng.choice(MIXED_ACTIONS)
                try:
                    if action in ("at", "above", "below"):
                        actual = {"at": q.amount, "above": q.amount * Decimal("1.5"), "below": q.amount / 2}[action]
                        gov.settle(tx_id, actual, facts={"worker": agent})
                    elif action == "void":
                        gov.void(tx_id, "race")
                    elif action == "fail":
                        gov.fail(tx_id, "race", upstream_status=500)
                    elif action == "unknown-then-settle":
                        gov.mark_unknown(tx_id, "race")
                        gov.settle(tx_id, q.amount)
                    elif action == "expire":
                        gov.expire(older_than=0)
                    outcomes.append(action)
                except Conflict:
                    outcomes.append("conflict")  # another worker's expire released it first: refused, as it must be
        results.put(("ok", outcomes))
    except BaseException:  # every failure is reported to the parent
        results.put(("error", traceback.format_exc()))


def _run_mixed(url: str) -> list[str]:
    # two processes per agent
    per_worker = _spawn_and_collect(_mixed_worker, lambda i: (url, f"mixed-{i % 4}", 1000 + i))
    return [outcome for outcomes in per_worker for outcome in outcomes]


#: Every authorization that holds money adds a request to its rule's counter row: on each such row
#: write a trigger records the rule's usage as that transaction sees it (PostgreSQL: its own writes plus
#: every commit; the rule lock makes that the state at its commit; SQLite: the writer's state). The
#: window summed is the part of the rule's window the authorization certainly checked.
_AUDIT_SUM = (
    "SELECT NEW.rule_id, SUM(c.spent + c.held), SUM(c.requests) FROM rule_counters c "
    "JOIN race_span s ON s.rule_id = c.rule_id "
    "WHERE c.rule_id = NEW.rule_id AND c.bucket > NEW.bucket - s.span AND c.bucket <= NEW.bucket"
)
_AUDIT_PG = [
    "CREATE TABLE race_span (rule_id integer PRIMARY KEY, span bigint NOT NULL)",
    "CREATE TABLE race_audit (rule_id integer, total bigint, requests bigint)",
    "CREATE FUNCTION race_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF TG_OP = 'INSERT' OR NEW.requests > OLD.requests THEN INSERT INTO race_audit " + _AUDIT_SUM + "; END IF; "
    "RETURN NULL; END $$",
    "CREATE TRIGGER race_audit AFTER INSERT OR UPDATE ON rule_counters FOR EACH ROW EXECUTE FUNCTION race_audit_fn()",
]
_AUDIT_SQLITE = [
    *_AUDIT_PG[:2],
    "CREATE TRIGGER race_audit_ins AFTER INSERT ON rule_counters BEGIN INSERT INTO race_audit " + _AUDIT_SUM + "; END",
    "CREATE TRIGGER race_audit_upd AFTER UPDATE ON rule_counters WHEN NEW.requests > OLD.requests "
    "BEGIN INSERT INTO race_audit " + _AUDIT_SUM + "; END",
]
_UNAUDIT = [
    "DROP TRIGGER IF EXISTS race_audit ON rule_counters",
    "DROP FUNCTION IF EXISTS race_audit_fn()",
    "DROP TABLE IF EXISTS race_audit",
    "DROP TABLE IF EXISTS race_span",
]


def _mixed_race(url: str) -> None:
    from sqlalchemy.engine import make_url

    pg = url.startswith("postgresql")
    # The audit tables below are created, and dropped, only in a database of the tests' own.
    assert not pg or (make_url(url).database or "").startswith(PG_TEST_PREFIX), url
    with scratch_engine(url) as engine:
        try:
            with engine.begin() as conn:
                for stmt in _AUDIT_PG if pg else _AUDIT_SQLITE:
                    conn.execute(text(stmt))
            _mixed_race_audited(url)
        finally:
            if pg:  # the session's PostgreSQL database outlives this test
                with engine.begin() as conn:
                    for stmt in _UNAUDIT:
                        conn.execute(text(stmt))


def _mixed_race_audited(url: str) -> None:
    from ledger import RuleSpec, RuleType
    from ledger.policy.periods import buckets
    from pricing.money import to_nano

    with _open(url) as opened:
        admin = opened.admin
        shared = [
            admin.create_rule(
                RuleSpec(
                    name="shared-daily",
                    type="spend-limit",
                    limit="0.5",
                    period="day",
                    given={"name", "type", "limit", "period"},
                )
            ),
            admin.create_rule(
                RuleSpec(
                    name="shared-rolling",
                    type="spend-limit",
                    limit="0.4",
                    window="1h",
                    given={"name", "type", "limit", "window"},
                )
            ),
            admin.create_rule(
                RuleSpec(
                    name="shared-rate",
                    type="rate-limit",
                    limit="100",
                    period="hour",
                    given={"name", "type", "limit", "period"},
                )
            ),
        ]
        with opened.engine.begin() as conn:
            for r in shared:
                conn.execute(
                    text("INSERT INTO race_span VALUES (:r, :span)"), {"r": r.id, "span": 3600 if r.window else 1}
                )
    assert [r.window for r in shared] == [None, "1h", None]
    assert [r.type for r in shared] == [RuleType.spend_limit, RuleType.spend_limit, RuleType.rate_limit]
    assert shared[2].limit == 100 and isinstance(shared[2].limit, int)
    outcomes = _run_mixed(url)
    assert len(outcomes) == WORKERS * MIXED_PER_WORKER
    assert "denied" in outcomes and any(o not in ("denied", "conflict") for o in outcomes)

    with scratch_engine(url) as engine, engine.connect() as conn:
        txs = {
            r[0]: (r[1], r[2], r[3])
            for r in conn.execute(text("SELECT id, status, estimated_cost, actual_cost FROM transactions"))
        }
        holds = conn.execute(text("SELECT transaction_id, rule_id, bucket FROM holds")).all()
        counters = {
            (r[0], r[1]): [r[2], r[3], r[4]]
            for r in conn.execute(text("SELECT rule_id, bucket, spent, held, requests FROM rule_counters"))
        }
    assert len(txs) == WORKERS * MIXED_PER_WORKER
    # Every counter equals its recount from the rows.
    expected: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    for tx_id, rule_id, bucket in holds:
        status, est, actual = txs[tx_id]
        row = expected[(rule_id, bucket)]
        row[2] += 1
        if status == "pending":
            row[1] += est
        elif status == "completed":
            row[0] += actual
        elif status == "unknown":
            row[0] += est
    assert counters == dict(expected)
    # The budget invariant, with the variances recorded as the only excess.
    now = NOW + timedelta(minutes=5)
    for r in shared:
        window = 3600 if r.window else None
        current, low = buckets(r.period, window, now)
        mine = [(tx, b) for tx, rule_id, b in holds if rule_id == r.id and low <= b <= current]
        rows = [v for (rule_id, b), v in counters.items() if rule_id == r.id and low <= b <= current]
        if r.type == RuleType.rate_limit:
            assert sum(v[2] for v in rows) <= r.limit
            continue
        excess = sum(max(0, txs[tx][2] - txs[tx][1]) for tx, _ in mine if txs[tx][0] == "completed")
        limit_nano = to_nano(r.limit)
        assert sum(v[0] + v[1] for v in rows) <= limit_nano + excess, r.name
    # The invariant at every commit, not only at the end: no authorization ever held money (or counted a
    # request) beyond a limit, even if that overspend was voided, failed or expired afterwards.
    with scratch_engine(url) as engine, engine.connect() as conn:
        seen = {
            r[0]: (r[1], r[2], r[3])
            for r in conn.execute(
                text("SELECT rule_id, MAX(total), MAX(requests), COUNT(*) FROM race_audit GROUP BY rule_id")
            )
        }
    allowed = sum(1 for o in outcomes if o != "denied")
    for r in shared:
        max_total, max_requests, n = seen[r.id]
        assert n == allowed, (r.name, n, allowed)  # one audit row per allowed authorization
        if r.type == RuleType.rate_limit:
            assert max_requests <= r.limit, (r.name, max_requests)
        else:
            assert max_total <= to_nano(r.limit), (r.name, max_total)


def test_mixed_race_sqlite(sqlite_url: str) -> None:
    _mixed_race(sqlite_url)


@pytest.mark.postgres
def test_mixed_race_postgres(pg_url: str) -> None:
    _mixed_race(pg_url)


# --- a rule changed while an authorization waits for its lock --------------------------------


@pytest.mark.postgres
def test_an_authorization_waiting_for_a_rule_lock_decides_with_the_rule_as_changed(
    pg_url: str, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL reads the rules before locking them: an authorization that waits for a rule's
    lock while an update lowers its limit must decide with the new limit, not the one it read."""
    import threading

    import psycopg

    from ledger import RuleSpec
    from pricing import quote
    from pricing.money import to_nano

    opened = _open(pg_url, auto_create=False)
    request.addfinalizer(opened.close)
    engine, admin, gov = opened.engine, opened.admin, opened.governor
    admin.create_agent("bot")
    admin.create_rule(
        RuleSpec(
            name="daily",
            type="spend-limit",
            limit="1",
            period="day",
            agent="bot",
            given={"name", "type", "limit", "period", "agent"},
        )
    )
    q = quote(ENDPOINT, {})
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    outcome: dict[str, Any] = {}

    def authorize() -> None:
        try:
            outcome["auth"] = gov.authorize("bot", q, {})
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    with psycopg.connect(dsn) as editor, psycopg.connect(dsn, autocommit=True) as watcher:
        # What `rules update daily --limit 0.01` does, held open: the rule row stays locked.
        editor.execute(
            "UPDATE spending_rules SET limit_amount = %s, version = version + 1 WHERE name = 'daily'",
            (to_nano(Decimal("0.01")),),
        )
        worker = threading.Thread(target=authorize)
        worker.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the authorization waits for the rule's lock
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if waiting and waiting[0] >= 1:
                break
            time.sleep(0.02)
        else:
            editor.rollback()
            worker.join(10)
            pytest.fail(f"the authorization never waited for the rule lock: {outcome}")
        editor.commit()
        worker.join(20)
    assert "error" not in outcome, outcome.get("error")
    auth = outcome["auth"]
    assert not auth.allowed, "decided with the limit read before the lock (1 USD), not the committed 0.01"
    assert auth.transaction.denial is not None and auth.transaction.denial["rule"] == "daily"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM holds")).scalar_one() == 0
