"""The report rollups (migration 0004) equal the ledger, after any sequence of operations.

`spend_rollups` and `denial_rollups` are kept by database triggers in the same transaction as
each ledger write. These tests drive the library through random lifecycles — authorizations
(allowed and denied, across UTC midnights), settlements, failures, voids, unknown outcomes,
expiry, late settlement of an expired hold, positive and negative adjustments — then recount
the rollups in Python from the ledger's own rows with `ledger.store.spend.counted` (the one
definition of spend) and compare every group to the nano-USD. On PostgreSQL the same runs
from several threads at once, which must also never deadlock.
"""

from __future__ import annotations

import json
import random
import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from conftest import pg_database, scratch_engine
from report_data import LedgerWriter, utc
from sqlalchemy import Engine, func, insert, inspect, select
from support import spec

from ledger import Ledger, Settings
from ledger.errors import Conflict, PixelgovError
from ledger.records import TxStatus
from ledger.store import db
from ledger.store.models import cost_lines, denial_rollups, spend_rollups, transactions
from ledger.store.spend import counted
from pricing import quote
from pricing.money import to_nano

QUOTES = [
    quote("fal-ai/flux/dev", {}),
    quote("fal-ai/flux/schnell", {"image_size": "square_hd", "num_images": 2}),
    quote("fal-ai/fast-sdxl", {}),  # an alias: its model is fal-ai/stable-diffusion-xl
    quote("fal-ai/flux-pro", {"image_size": {"width": 1280, "height": 720}}),
    quote("fal-ai/flux/dev/image-to-image", {"image_url": "https://example.com/a.png"}),
]
AGENTS = ("alpha", "beta", "gamma")
START = datetime(2026, 11, 24, 22, 0, tzinfo=UTC)


def recount(engine: Engine) -> tuple[dict[tuple[Any, ...], list[int]], dict[tuple[Any, ...], int]]:
    """What the rollups must hold, computed in Python from the ledger's transactions and lines."""
    t, c = transactions.c, cost_lines.c
    with engine.connect() as conn:
        rows = conn.execute(select(transactions)).all()
        adjusted = dict(
            conn.execute(
                select(c.transaction_id, func.sum(c.amount)).where(c.kind == "adjustment").group_by(c.transaction_id)
            ).all()
        )
    spend: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * 7)
    denials: dict[tuple[Any, ...], int] = defaultdict(int)
    for row in rows:
        status = TxStatus(row.status)
        day = row.created_at.astimezone(UTC).date()
        group = (day, row.agent_id, row.endpoint, row.model, row.operation)
        adj = Decimal(adjusted.get(row.id) or 0)
        net = (
            counted(status, row.estimated_cost, row.actual_cost, adj).spent
            - counted(status, row.estimated_cost, row.actual_cost).spent
        )
        sums = spend[(*group, status.value)]
        for i, value in enumerate(
            (
                1,
                to_nano(row.estimated_cost),
                to_nano(row.actual_cost or Decimal(0)),
                row.images or 0,
                row.billable_mp_nano or 0,
                to_nano(adj),
                to_nano(net),
            )
        ):
            sums[i] += value
        if status == TxStatus.denied and row.denial_json:
            named: dict[tuple[str, str], int] = defaultdict(int)
            for d in json.loads(row.denial_json)["denials"]:
                named[(d.get("rule") or "", d.get("type") or "")] += 1
            for (rule, kind), n in named.items():
                denials[(*group, rule, kind)] += n
    assert t is not None
    return dict(spend), dict(denials)


def stored(engine: Engine) -> tuple[dict[tuple[Any, ...], list[int]], dict[tuple[Any, ...], int]]:
    r, d = spend_rollups.c, denial_rollups.c
    with engine.connect() as conn:
        spend_rows = conn.execute(select(spend_rollups)).all()
        denial_rows = conn.execute(select(denial_rollups)).all()
    spend = {}
    for row in spend_rows:
        sums = [
            row.tx_count,
            to_nano(row.estimated),
            to_nano(row.actual),
            row.images,
            row.billable_mp_nano,
            to_nano(row.adjustments),
            to_nano(row.adjusted_net),
        ]
        key = (row.day, row.agent_id, row.endpoint, row.model, row.operation, row.status)
        if row.tx_count == 0:
            assert sums == [0] * 7, (key, sums)  # a group whose transactions all moved on holds nothing
            continue
        spend[key] = sums
    denials = {
        (row.day, row.agent_id, row.endpoint, row.model, row.operation, row.rule, row.rule_type): row.denials
        for row in denial_rows
        if row.denials
    }
    assert r is not None and d is not None
    return spend, denials


def assert_rollups_equal_the_ledger(engine: Engine) -> None:
    expected_spend, expected_denials = recount(engine)
    got_spend, got_denials = stored(engine)
    assert got_spend == expected_spend
    assert got_denials == expected_denials


class Clock:
    def __init__(self) -> None:
        self.now = START
        self.lock = threading.Lock()

    def __call__(self) -> datetime:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += timedelta(seconds=seconds)


def pick(ledger: Ledger, rng: random.Random, *statuses: str) -> Any:
    found = [tx for status in statuses for tx in ledger.governor.transactions(status=status, limit=20)]
    return rng.choice(found) if found else None


def random_operations(ledger: Ledger, rng: random.Random, steps: int, clock: Clock | None = None) -> None:
    gov = ledger.governor
    for _ in range(steps):
        roll = rng.random()
        try:
            if roll < 0.45:
                gov.authorize(rng.choice(AGENTS), rng.choice(QUOTES), {"prompt": "x"})
            elif roll < 0.65:
                if tx := pick(ledger, rng, "pending", "unknown", "expired"):
                    actual = tx.estimated_cost * Decimal(rng.choice(("0", "0.5", "1", "1.3", "2")))
                    gov.settle(tx.id, actual, allow_expired=True)
            elif roll < 0.71:
                if tx := pick(ledger, rng, "pending"):
                    gov.fail(tx.id, "upstream said no", upstream_status=500)
            elif roll < 0.77:
                if tx := pick(ledger, rng, "pending", "unknown"):
                    gov.void(tx.id, "cancelled")
            elif roll < 0.84:
                if tx := pick(ledger, rng, "pending"):
                    gov.mark_unknown(tx.id, "timed out")
            elif roll < 0.94:
                if tx := pick(ledger, rng, "completed"):
                    amount = Decimal(rng.choice(("-0.5", "-0.01", "0.002", "0.3", "-0.000000001")))
                    gov.add_cost(tx.id, amount, note="correction")
            elif clock is not None:
                clock.advance(rng.choice((60, 1000, 3600 * 5)))  # past the TTL, across midnight
                gov.expire()
            else:
                gov.expire(older_than=rng.choice((0, 30)))
        except (Conflict, PixelgovError):
            pass  # another writer resolved the transaction drawn first: nothing changes
        if clock is not None and rng.random() < 0.2:
            clock.advance(rng.choice((1, 45, 600)))


def rules_and_a_paused_agent(ledger: Ledger) -> None:
    admin = ledger.admin
    for name in AGENTS:
        admin.create_agent(name, with_key=False)
    admin.create_rule(spec(name="daily", type="spend-limit", limit="0.5", period="day"))
    admin.create_rule(spec(name="burst", type="rate-limit", limit=6, window="10m", agent="beta"))
    admin.create_rule(spec(name="cheap-only", type="model-allowlist", models=["fal-ai/flux/*"], agent="gamma"))
    admin.create_rule(spec(name="watch", type="request-cap", limit="0.02", action="alert"))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rollups_equal_the_ledger_after_random_operations(db_url: str, seed: int) -> None:
    clock = Clock()
    with Ledger(db_url, clock=clock, settings=Settings(hold_ttl=900, auto_create_agents=True)) as ledger:
        rules_and_a_paused_agent(ledger)
        rng = random.Random(seed)
        statuses: set[str] = set()
        for round_ in range(4):
            random_operations(ledger, rng, 60, clock)
            if round_ == 2:
                ledger.admin.update_agent("alpha", status="paused")  # its next requests: denied, naming no rule
            assert_rollups_equal_the_ledger(ledger.engine)
            statuses |= {key[-1] for key in stored(ledger.engine)[0]}
        spend, denials = stored(ledger.engine)
        assert {"completed", "denied"} <= statuses and len(statuses) >= 5, statuses
        assert len({key[0] for key in spend}) >= 2  # the run crossed at least one UTC midnight
        assert any(key[5] == "" for key in denials)  # the paused agent's denials name no rule
        assert any(sums[5] for sums in spend.values())  # and adjustments were rolled up


def test_a_credit_larger_than_the_spend_clamps_in_the_rollup_as_in_the_budget(ledger) -> None:  # type: ignore[no-untyped-def]
    gov = ledger.governor
    tx = gov.authorize("bot", QUOTES[0], {"prompt": "x"}).transaction
    gov.settle(tx.id, Decimal("0.01"))
    for amount, adjustments, net in (
        ("-0.004", "-0.004", "0.006"),
        ("-0.05", "-0.054", "0"),  # below zero: the spend clamps at 0
        ("0.02", "-0.034", "0"),  # 0.01 - 0.034 is still below zero
        ("0.1", "0.066", "0.076"),
    ):
        gov.add_cost(tx.id, Decimal(amount))
        assert_rollups_equal_the_ledger(ledger.engine)
        total = ledger.reports.spend(["agent"]).total
        assert (total.adjustments, total.net) == (Decimal(adjustments), Decimal(net))


def test_a_rollback_leaves_no_rollup_behind(ledger) -> None:  # type: ignore[no-untyped-def]
    """The rollups commit or roll back with the ledger write that changed them."""
    gov = ledger.governor
    gov.authorize("bot", QUOTES[0], {"prompt": "x"})
    before = stored(ledger.engine)
    with pytest.raises(RuntimeError), ledger.engine.begin() as conn:
        tx = conn.execute(select(transactions)).first()
        values = {k: v for k, v in tx._mapping.items() if k != "id"}
        conn.execute(insert(transactions).values({**values, "idempotency_key": "rolled-back"}))
        assert conn.execute(select(func.sum(spend_rollups.c.tx_count))).scalar() == 2
        raise RuntimeError("abort")
    assert stored(ledger.engine) == before


@pytest.mark.postgres
@pytest.mark.slow
def test_concurrent_writers_keep_the_rollups_exact_and_never_deadlock(pg_url: str) -> None:
    clock = Clock()
    with Ledger(pg_url, clock=clock, settings=Settings(hold_ttl=900, auto_create_agents=True)) as setup:
        rules_and_a_paused_agent(setup)
    failures: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            with Ledger(pg_url, clock=clock, settings=Settings(hold_ttl=900, auto_create_agents=True)) as mine:
                random_operations(mine, random.Random(seed), 60)
        except BaseException as exc:  # reported below: a deadlock would land here
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    with Ledger(pg_url) as check:
        assert_rollups_equal_the_ledger(check.engine)
        with check.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(transactions)).scalar() > 100


def test_rollup_days_are_utc_days(ledger, clock) -> None:  # type: ignore[no-untyped-def]
    clock.set(datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC))
    ledger.governor.authorize("bot", QUOTES[0], {"prompt": "x"})
    clock.set(datetime(2026, 12, 1, 0, 0, tzinfo=UTC))
    ledger.governor.authorize("bot", QUOTES[0], {"prompt": "x"})
    spend, _ = stored(ledger.engine)
    assert sorted(key[0] for key in spend) == [date(2026, 11, 30), date(2026, 12, 1)]


# --- the migration: a ledger written before it is rolled up by the upgrade ---------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_at_0003(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
        db.upgrade(url, "0003_gateway")
        yield url
    else:
        with pg_database(request.getfixturevalue("pg_server"), migrated=False) as url:
            db.upgrade(url, "0003_gateway")
            yield url


def test_upgrading_rolls_up_the_ledger_written_before_and_downgrading_removes_the_rollups(ledger_at_0003: str) -> None:
    url = ledger_at_0003
    with scratch_engine(url) as engine:
        writer = LedgerWriter(engine)
        writer.add(at=utc(2026, 10, 31, 23, 59))
        writer.add("other", "fal-ai/fast-sdxl", at=utc(2026, 11, 1), actual=Decimal("0.02"))
        writer.add(at=utc(2026, 11, 1, 8), adjustments=[(Decimal("-1"), "refund"), (Decimal("0.004"), None)])
        writer.add(at=utc(2026, 11, 1, 9), status="denied", denied_by=("budget", "cap"))
        writer.add(at=utc(2026, 11, 1, 9), status="unknown")
        writer.add(at=utc(2026, 11, 2), status="pending")
    db.upgrade(url)
    with Ledger(url) as ledger:
        assert_rollups_equal_the_ledger(ledger.engine)
        spend, denials = stored(ledger.engine)
        assert sum(sums[0] for sums in spend.values()) == 6
        assert sorted(key[5] for key in denials) == ["budget", "cap"]
        ledger.governor.settle(ledger.governor.transactions(status="pending")[0].id, Decimal("0.5"))
        assert_rollups_equal_the_ledger(ledger.engine)  # and the triggers took over
    db.downgrade(url, "0003_gateway")
    with scratch_engine(url) as engine:
        names = set(inspect(engine).get_table_names())
        assert not names & {"spend_rollups", "denial_rollups"}
        LedgerWriter(engine).add(at=utc(2026, 11, 3))  # no trigger left behind to fail a write
    db.upgrade(url)
    with Ledger(url) as ledger:
        assert_rollups_equal_the_ledger(ledger.engine)
