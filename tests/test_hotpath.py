"""The hot path's raw SQL and the SQLAlchemy models agree on every value they write and read.

`ledger.store.hotpath` binds money and timestamps by hand (nano-USD integers, the stored timestamp
form) for speed. Here the same values go in once through the raw path and once through Core
with the models' column types, on SQLite and PostgreSQL, and must come out identical — both
as stored (raw column values) and as read (decoded by either path).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import BigInteger, String, insert, select, type_coerce

from ledger.records import TxStatus
from ledger.store.db import writing
from ledger.store.hotpath import SQL, Driver, bind_ts, tx_row
from ledger.store.models import agents, cost_lines, transactions
from pricing.money import MAX_USD, from_nano, to_nano

AMOUNTS = [Decimal(0), Decimal("0.000000001"), Decimal("0.01185"), Decimal("123456.789012345"), MAX_USD, -MAX_USD]
MOMENTS = [
    datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC),
    datetime(2026, 11, 25, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 3, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(2026, 11, 26, 5, 29, 59, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 11, 25, 7, 0, 0, 500000, tzinfo=timezone(timedelta(hours=-5))),
]


def _values(agent_id: int, amount: Decimal, moment: datetime, n: int) -> dict[str, object]:
    return {
        "agent_id": agent_id,
        # Each row its own report-rollup group: two maximal amounts would overflow any BIGINT sum.
        "endpoint": f"fal-ai/flux/dev/{n}",
        "model": "fal-ai/flux/dev",
        "operation": "generate",
        "request_json": json.dumps({"n": n}),
        "request_hash": f"h{n}",
        "price_book": "b",
        "estimated_cost": amount,
        "status": TxStatus.pending.value,
        "idempotency_key": None,
        "denial_json": None,
        "created_at": moment,
        "images": 1,
        "billable_mp_nano": 790_000_000,
        "forwarder": "gateway",
    }


@pytest.mark.parametrize("amount", AMOUNTS, ids=str)
def test_raw_and_core_writes_store_and_read_identical_values(engine, amount: Decimal) -> None:
    pg = engine.dialect.name == "postgresql"
    with writing(engine) as conn:
        agent_id = conn.execute(
            insert(agents)
            .values(name="parity", status="active", created_at=MOMENTS[0], updated_at=MOMENTS[0])
            .returning(agents.c.id)
        ).scalar_one()
    ids: list[tuple[int, int]] = []
    for n, moment in enumerate(MOMENTS):
        core_values = _values(agent_id, amount, moment, 2 * n)
        raw_values = dict(_values(agent_id, amount, moment, 2 * n + 1))
        raw_values["estimated_cost"] = to_nano(amount)
        raw_values["created_at"] = bind_ts(moment, pg)
        with writing(engine) as conn:
            core_id = conn.execute(insert(transactions).values(**core_values).returning(transactions.c.id)).scalar_one()
            conn.execute(
                insert(cost_lines).values(
                    transaction_id=core_id, kind="estimate", amount=amount, note=None, created_at=moment
                )
            )
            d = Driver(conn)
            if pg:
                raw_id = d.one(SQL[True].insert_tx, raw_values)[0]  # type: ignore[index]
            else:
                d.execute(SQL[False].insert_tx, raw_values)
                raw_id = d.lastrowid
            d.execute(
                SQL[pg].insert_line,
                {
                    "tx_id": raw_id,
                    "kind": "estimate",
                    "amount": to_nano(amount),
                    "note": None,
                    "created_at": bind_ts(moment, pg),
                },
            )
        ids.append((core_id, raw_id))

    t = transactions.c
    with engine.connect() as conn:
        for (core_id, raw_id), moment in zip(ids, MOMENTS):
            # As stored: the very same column values, whichever path wrote them.
            stored = {
                row[0]: row[1:]
                for row in conn.execute(
                    select(t.id, type_coerce(t.estimated_cost, BigInteger), type_coerce(t.created_at, String)).where(
                        t.id.in_([core_id, raw_id])
                    )
                )
            }
            assert stored[core_id] == stored[raw_id]
            assert stored[core_id][0] == to_nano(amount)
            lines = {
                row[0]: row[1:]
                for row in conn.execute(
                    select(
                        cost_lines.c.transaction_id,
                        type_coerce(cost_lines.c.amount, BigInteger),
                        type_coerce(cost_lines.c.created_at, String),
                    ).where(cost_lines.c.transaction_id.in_([core_id, raw_id]))
                )
            }
            assert lines[core_id] == lines[raw_id]
            # As read: Core's column types and the hot path's decoders give the same Python values.
            core_rows = {r.id: r for r in conn.execute(select(transactions).where(t.id.in_([core_id, raw_id])))}
            d = Driver(conn)
            for tx_id in (core_id, raw_id):
                raw = tx_row(d.one(SQL[pg].tx_row, {"tx_id": tx_id}))  # type: ignore[arg-type]
                core = core_rows[tx_id]
                assert raw.estimated_cost == core.estimated_cost == from_nano(to_nano(amount)) == amount
                assert raw.created_at == core.created_at == moment
                assert raw.created_at.tzinfo is not None and raw.created_at.utcoffset() == timedelta(0)
                assert raw.status == core.status == TxStatus.pending


def test_an_amount_finer_than_a_nano_usd_is_stored_rounded_up() -> None:
    # The ledger never stores less than what was estimated: storage rounds up, on both paths.
    assert to_nano(Decimal("0.0000000001")) == 1
    assert to_nano(Decimal("0.0118500001")) == 11850001
    assert to_nano(Decimal("-0.0000000001")) == 0
    assert to_nano(Decimal("1.123456789000000000000000000001")) == 1123456790


def test_a_naive_timestamp_is_refused_on_the_raw_path() -> None:
    with pytest.raises(ValueError):
        bind_ts(datetime(2026, 11, 25, 12, 0, 0), pg=False)
