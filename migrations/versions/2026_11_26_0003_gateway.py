"""The gateway: service keys (one key for a fleet of agents) and queue request ids.

Revision ID: 0003_gateway
Revises: 0002_reports
Create Date: 2026-11-26 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_gateway"
down_revision: str | None = "0002_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "service_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("key_prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_service_keys_key_hash")),
        sa.UniqueConstraint("name", name=op.f("uq_service_keys_name")),
    )
    op.create_table(
        "queue_requests",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("transaction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["transaction_id"], ["transactions.id"], name=op.f("fk_queue_requests_transaction_id_transactions")
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_queue_requests")),
        sa.UniqueConstraint("transaction_id", name=op.f("uq_queue_requests_transaction_id")),
    )


def downgrade() -> None:
    op.drop_table("queue_requests")
    op.drop_table("service_keys")
