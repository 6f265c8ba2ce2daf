"""Reports: the images and billable megapixels of each transaction; an index of adjustment lines.

`transactions.images` and `transactions.billable_mp_nano` (billable megapixels in units of
10^-9 MP, an integer like the money columns) are what the request was priced at, written by
the governor with the transaction; the finance reports sum them instead of re-pricing a
million stored requests. Rows written before this revision are filled here by re-pricing
their stored request once (a request that no longer prices — an endpoint gone from the
price book — is left NULL and reported as 0).

`ix_cost_lines_adjustments` is a partial index of adjustment lines only: reports find the
few adjusted transactions without scanning every estimate and actual line, and the hot
path (which writes only estimate and actual lines) never updates it.

`ix_transactions_report_days` (SQLite only) is a covering index that starts with the UTC day
of `created_at` (`substr(created_at, 1, 10)` of the stored text) followed by every column the
reports group by or sum. SQLite aggregates a GROUP BY that follows an index's order as it
scans; any other GROUP BY goes through its sorter, which costs seconds at a million rows. So
the reports on SQLite group by a prefix of this index's leading columns (day, status, agent,
model, operation, endpoint), streaming, and fold that (far smaller) result to what was asked. PostgreSQL
needs no such index: it hashes. SQLite cannot reflect expression indexes, so the index is
not in `ledger.models` and `alembic check` does not see it; it lives in this migration only.

Revision ID: 0002_reports
Revises: 0001_ledger
Create Date: 2026-11-25 16:30:00
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_reports"
down_revision: str | None = "0001_ledger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ADJUSTMENTS = "kind = 'adjustment'"
_BATCH = 5000
#: The report index's columns after its leading day expression (see `ledger.reports`).
REPORT_INDEX = "ix_transactions_report_days"
_REPORT_COLUMNS = (
    "status, agent_id, model, operation, endpoint, created_at, estimated_cost, actual_cost, images, billable_mp_nano"
)


def upgrade() -> None:
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("images", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("billable_mp_nano", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_cost_lines_adjustments",
        "cost_lines",
        ["transaction_id", "amount"],
        unique=False,
        sqlite_where=sa.text(_ADJUSTMENTS),
        postgresql_where=sa.text(_ADJUSTMENTS),
    )
    _backfill(op.get_bind())
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"CREATE INDEX {REPORT_INDEX} ON transactions (substr(created_at, 1, 10), {_REPORT_COLUMNS})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"DROP INDEX IF EXISTS {REPORT_INDEX}")
    op.drop_index("ix_cost_lines_adjustments", table_name="cost_lines")
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.drop_column("billable_mp_nano")
        batch_op.drop_column("images")


def _backfill(conn: sa.Connection) -> None:
    """Re-price the stored request of every transaction written before this revision."""
    from pricing import book_for, quote
    from pricing.errors import PixelgovError
    from pricing.money import to_nano

    book = book_for(os.environ.get("PIXELGOV_PRICE_BOOK") or None)
    tx = sa.table(
        "transactions",
        sa.column("id"),
        sa.column("endpoint"),
        sa.column("request_json"),
        sa.column("images"),
        sa.column("billable_mp_nano"),
    )
    last = 0
    while True:
        rows = conn.execute(
            sa.select(tx.c.id, tx.c.endpoint, tx.c.request_json)
            .where(tx.c.id > last, tx.c.images.is_(None))
            .order_by(tx.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        last = rows[-1].id
        values = []
        for row in rows:
            try:
                q = quote(row.endpoint, json.loads(row.request_json), book=book)
            except (PixelgovError, ValueError, TypeError):
                continue  # no longer priceable: left NULL (counted as 0)
            values.append({"tx_id": row.id, "images": q.images, "mp": to_nano(q.billable_megapixels)})
        if values:
            conn.execute(
                sa.update(tx)
                .where(tx.c.id == sa.bindparam("tx_id"))
                .values(images=sa.bindparam("images"), billable_mp_nano=sa.bindparam("mp")),
                values,
            )
