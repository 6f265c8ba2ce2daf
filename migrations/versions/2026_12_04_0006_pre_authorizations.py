"""Pre-authorizations: the seed platform's SDK asks before it sends; the request uses the answer once.

Revision ID: 0006_pre_authorizations
Revises: 0005_dashboard_logouts
Create Date: 2026-12-04 22:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_pre_authorizations"
down_revision: str | None = "0005_dashboard_logouts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pre_authorizations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.Integer(), nullable=True),
        sa.Column("agent_name", sa.String(length=200), nullable=False),
        sa.Column("service_key_id", sa.Integer(), nullable=True),
        sa.Column("endpoint", sa.String(length=200), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("decline_reason", sa.Text(), nullable=True),
        sa.Column("denial_json", sa.Text(), nullable=True),
        sa.Column("request_json", sa.Text(), nullable=False),
        sa.Column("transaction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("response_json", sa.Text(), nullable=True),
        sa.Column("facts_json", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["agent_id"], ["agents.id"], name=op.f("fk_pre_authorizations_agent_id_agents")),
        sa.ForeignKeyConstraint(
            ["service_key_id"], ["service_keys.id"], name=op.f("fk_pre_authorizations_service_key_id_service_keys")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"], ["transactions.id"], name=op.f("fk_pre_authorizations_transaction_id_transactions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pre_authorizations")),
        sa.UniqueConstraint("transaction_id", name=op.f("uq_pre_authorizations_transaction_id")),
    )
    op.create_index(
        op.f("ix_pre_authorizations_agent_name_created_at"), "pre_authorizations", ["agent_name", "created_at"]
    )
    op.create_index(
        op.f("ix_pre_authorizations_service_key_id_created_at"),
        "pre_authorizations",
        ["service_key_id", "created_at"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_pre_authorizations_service_key_id_created_at"), table_name="pre_authorizations")
    op.drop_index(op.f("ix_pre_authorizations_agent_name_created_at"), table_name="pre_authorizations")
    op.drop_table("pre_authorizations")
