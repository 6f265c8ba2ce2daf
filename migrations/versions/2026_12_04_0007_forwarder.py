"""Who forwards a transaction's request: pixelgov itself (the gateway, `pixelgov run`) or the caller.

pixelgov alone settles what it forwards, and its unsettled holds expire to `unknown` (the request
may have been served, so the estimate stays counted); a caller's own hold expires to released.
Transactions recorded before this migration have no forwarder: they are treated as callers' holds,
as every transaction was until now.

Revision ID: 0007_forwarder
Revises: 0006_pre_authorizations
Create Date: 2026-12-04 23:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_forwarder"
down_revision: str | None = "0006_pre_authorizations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (no batch copy): SQLite keeps the table, and with it the report triggers.
    op.add_column("transactions", sa.Column("forwarder", sa.String(length=16), nullable=True))


def downgrade() -> None:
    op.drop_column("transactions", "forwarder")
