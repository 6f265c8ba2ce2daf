"""Migration 0002 (reports): transactions written before it get the images and billable megapixels
they were priced at. Migration 0004 (rollups): the reports read whole days from the rollups."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import pg_database, scratch_engine
from report_data import LedgerWriter, utc
from sqlalchemy import event, insert, select

from ledger.store import db
from ledger.store.models import agents, transactions

BEFORE = "0001_ledger"


@pytest.fixture
def old_sqlite(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db.upgrade(url, BEFORE)
    return url


@pytest.fixture
def old_postgres(pg_server: str) -> Iterator[str]:
    with pg_database(pg_server, migrated=False) as url:
        db.upgrade(url, BEFORE)
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def old_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("old_sqlite" if request.param == "sqlite" else "old_postgres")


def test_upgrading_fills_images_and_megapixels_of_earlier_transactions(old_url: str) -> None:
    requests = {
        "fal-ai/flux/dev": {"prompt": "x", "image_size": "landscape_4_3", "num_images": 2},
        "fal-ai/topaz/upscale/image": {"image_url": "https://example.com/a.png", "scale": 2, "input_size": "1024x768"},
        "fal-ai/retired-model": {"prompt": "x"},
    }
    columns = [c for c in transactions.c if c.name not in ("id", "images", "billable_mp_nano", "forwarder")]
    with scratch_engine(old_url) as engine, engine.begin() as conn:
        now = utc(2026, 11, 1)
        agent_id = conn.execute(
            insert(agents).values(name="old", status="active", created_at=now, updated_at=now).returning(agents.c.id)
        ).scalar_one()
        for endpoint, body in requests.items():
            values: dict[str, Any] = {c.name: None for c in columns}
            values.update(
                agent_id=agent_id,
                endpoint=endpoint,
                model=endpoint,
                operation="generate",
                request_json=json.dumps(body),
                request_hash="0" * 64,
                price_book="old",
                estimated_cost=Decimal(0),
                status="completed",
                created_at=now,
            )
            conn.execute(insert(transactions).values(values))
    db.upgrade(old_url)
    with scratch_engine(old_url) as engine, engine.connect() as conn:
        found = {
            r.endpoint: (r.images, r.billable_mp_nano)
            for r in conn.execute(
                select(transactions.c.endpoint, transactions.c.images, transactions.c.billable_mp_nano)
            )
        }
    assert found == {
        "fal-ai/flux/dev": (2, 1_580_000_000),  # 2 x 0.79 MP
        "fal-ai/topaz/upscale/image": (1, 3_150_000_000),  # 2048x1536 -> 3.15 MP
        "fal-ai/retired-model": (None, None),  # no longer priced: left unknown
    }


def test_reports_read_whole_days_from_the_rollups_and_only_partial_days_from_the_ledger(db_url: str) -> None:
    from ledger import Ledger

    with Ledger(db_url) as ledger:
        LedgerWriter(ledger.engine).add(at=utc(2026, 11, 2))
        statements: list[str] = []

        @event.listens_for(ledger.engine, "before_cursor_execute")
        def remember(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
            statements.append(" ".join(statement.split()))

        whole = ledger.reports.spend(["agent", "model", "week"], since=utc(2026, 11, 1), until=utc(2026, 12, 1))
        ledger.reports.summary(period="2026-11")
        ledger.reports.leaderboard("rule")
        assert [s for s in statements if "FROM transactions" in s] == []
        assert any("FROM spend_rollups" in s for s in statements)
        assert any("FROM denial_rollups" in s for s in statements)

        statements.clear()
        partial = ledger.reports.spend(
            ["agent", "model", "week"], since=utc(2026, 11, 1, 12), until=utc(2026, 11, 3, 6)
        )
        event.remove(ledger.engine, "before_cursor_execute", remember)
        ledger_reads = [s for s in statements if "FROM transactions" in s]
        assert ledger_reads and all("transactions.created_at >=" in s for s in ledger_reads)
        assert whole.total == partial.total  # the one transaction, counted once either way
