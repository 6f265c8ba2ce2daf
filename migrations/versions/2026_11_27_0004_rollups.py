"""Report rollups: the ledger summed per UTC day, kept in the same database transaction as every write.

`spend_rollups` holds, per UTC day of `created_at`, agent, endpoint, model, operation and
status, the count and the raw sums of the transactions in that group: estimates, actuals,
images, billable megapixels, adjustment lines, and `adjusted_net` — what the adjustments
change in what those transactions count as spent (`ledger.spend`: a completed transaction
counts actual + adjustments, never below zero; other statuses ignore adjustments).
`denial_rollups` counts denied requests per day, agent, endpoint, model, operation and the
rule (and rule type) each denial names. The finance reports read these (tens of thousands of
rows for a million transactions) for every whole UTC day of their window and the ledger only
for the partial days at its edges.

Database triggers keep them, so no write path — the governor's raw hot path, SQLAlchemy
Core, a bulk load — can forget them, and they commit or roll back with the write:

- a transaction inserted adds itself to its group (and a denial to its rules' counts);
- a status (or money) change moves the transaction from its old group to its new one,
  carrying its adjustments;
- an adjustment line adds its amount, and the change it makes to the clamped spend.

Lock order (PostgreSQL): a rollup row is locked by the statement that writes the
transaction or its line, after the rule rows the governor locks first (see
`ledger.governor`), and a status change locks its old group's row before its new one, in
the direction statuses only ever move (pending → unknown → final), so rollups add no cycle.

`tests/test_rollups.py` checks the tables against the ledger after random operations on both
databases. This revision also drops SQLite's covering report index (0002), which the reports
no longer read and every authorization paid to keep.

Revision ID: 0004_rollups
Revises: 0003_gateway
Create Date: 2026-11-27 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_rollups"
down_revision: str | None = "0003_gateway"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REPORT_INDEX = "ix_transactions_report_days"
_REPORT_COLUMNS = (
    "status, agent_id, model, operation, endpoint, created_at, estimated_cost, actual_cost, images, billable_mp_nano"
)
_KEY = "day, agent_id, endpoint, model, operation, status"
_DENIAL_KEY = "day, agent_id, endpoint, model, operation, rule, rule_type"
_SUMS = "tx_count, estimated, actual, images, billable_mp_nano, adjustments, adjusted_net"
_ADD = ", ".join(f"{c} = spend_rollups.{c} + excluded.{c}" for c in _SUMS.split(", "))

# --- SQLite: triggers in SQL ------------------------------------------------------------------

_SQLITE_ADJ = (
    "(SELECT coalesce(sum(amount), 0) FROM cost_lines WHERE transaction_id = {row}.id AND kind = 'adjustment')"
)


def _sqlite_net(row: str) -> str:
    """What `row`'s adjustments change in its spend: completed counts max(0, actual + adjustments)."""
    adj = _SQLITE_ADJ.format(row=row)
    act = f"coalesce({row}.actual_cost, 0)"
    return f"(CASE WHEN {row}.status = 'completed' THEN max(0, {act} + {adj}) - {act} ELSE 0 END)"


def _sqlite_values(row: str, sign: str, adjusted: bool) -> str:
    """A row's contribution to its group; `adjusted`: read its adjustment lines (a new row has none)."""
    adjustments = f"{sign}{_SQLITE_ADJ.format(row=row)}, {sign}{_sqlite_net(row)}" if adjusted else "0, 0"
    return (
        f"substr({row}.created_at, 1, 10), {row}.agent_id, {row}.endpoint, {row}.model, {row}.operation, "
        f"{row}.status, {sign}1, {sign}{row}.estimated_cost, {sign}coalesce({row}.actual_cost, 0), "
        f"{sign}coalesce({row}.images, 0), {sign}coalesce({row}.billable_mp_nano, 0), {adjustments}"
    )


def _sqlite_upsert(row: str, sign: str = "", *, adjusted: bool = True) -> str:
    return (
        f"INSERT INTO spend_rollups ({_KEY}, {_SUMS}) VALUES ({_sqlite_values(row, sign, adjusted)}) "
        f"ON CONFLICT ({_KEY}) DO UPDATE SET {_ADD};"
    )


_SQLITE_TRIGGERS = (
    "CREATE TRIGGER tr_transactions_rollup_insert AFTER INSERT ON transactions BEGIN "
    + _sqlite_upsert("NEW", adjusted=False)
    + " END",
    "CREATE TRIGGER tr_transactions_rollup_denial AFTER INSERT ON transactions WHEN NEW.status = 'denied' BEGIN "
    f"INSERT INTO denial_rollups ({_DENIAL_KEY}, denials) "
    "SELECT substr(NEW.created_at, 1, 10), NEW.agent_id, NEW.endpoint, NEW.model, NEW.operation, "
    "coalesce(json_extract(value, '$.rule'), ''), coalesce(json_extract(value, '$.type'), ''), count(*) "
    "FROM json_each(NEW.denial_json, '$.denials') WHERE true GROUP BY 6, 7 "
    f"ON CONFLICT ({_DENIAL_KEY}) DO UPDATE SET denials = denial_rollups.denials + excluded.denials; END",
    # Old group first, then new: statuses only move forward, so every writer locks in one order.
    "CREATE TRIGGER tr_transactions_rollup_update AFTER UPDATE OF "
    "status, estimated_cost, actual_cost, images, billable_mp_nano, created_at, agent_id, endpoint, model, operation "
    "ON transactions BEGIN " + _sqlite_upsert("OLD", "-") + " " + _sqlite_upsert("NEW") + " END",
    "CREATE TRIGGER tr_cost_lines_rollup_adjustment AFTER INSERT ON cost_lines WHEN NEW.kind = 'adjustment' BEGIN "
    "UPDATE spend_rollups SET adjustments = adjustments + NEW.amount, adjusted_net = adjusted_net + ("
    "SELECT CASE WHEN t.status = 'completed' THEN "
    "max(0, coalesce(t.actual_cost, 0) + b.before + NEW.amount) - max(0, coalesce(t.actual_cost, 0) + b.before) "
    "ELSE 0 END FROM transactions t, (SELECT coalesce(sum(amount), 0) AS before FROM cost_lines "
    "WHERE transaction_id = NEW.transaction_id AND kind = 'adjustment' AND id < NEW.id) b "
    "WHERE t.id = NEW.transaction_id) "
    f"WHERE ({_KEY}) = (SELECT substr(created_at, 1, 10), agent_id, endpoint, model, operation, status "
    "FROM transactions WHERE id = NEW.transaction_id); END",
)
_SQLITE_TRIGGER_NAMES = (
    "tr_transactions_rollup_insert",
    "tr_transactions_rollup_denial",
    "tr_transactions_rollup_update",
    "tr_cost_lines_rollup_adjustment",
)

# --- PostgreSQL: plpgsql trigger functions ---------------------------------------------------

_PG_FUNCTIONS = (
    f"""
CREATE FUNCTION pixelgov_rollup_transaction() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    adj bigint := 0;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD.status = 'completed' OR NEW.status = 'completed' THEN
            SELECT coalesce(sum(amount), 0) INTO adj FROM cost_lines
            WHERE transaction_id = NEW.id AND kind = 'adjustment';
        END IF;
        UPDATE spend_rollups SET
            tx_count = tx_count - 1,
            estimated = estimated - OLD.estimated_cost,
            actual = actual - coalesce(OLD.actual_cost, 0),
            images = images - coalesce(OLD.images, 0),
            billable_mp_nano = billable_mp_nano - coalesce(OLD.billable_mp_nano, 0),
            adjustments = adjustments - adj,
            adjusted_net = adjusted_net - CASE WHEN OLD.status = 'completed'
                THEN greatest(0, coalesce(OLD.actual_cost, 0) + adj) - coalesce(OLD.actual_cost, 0) ELSE 0 END
        WHERE day = OLD.created_at::date AND agent_id = OLD.agent_id AND endpoint = OLD.endpoint
            AND model = OLD.model AND operation = OLD.operation AND status = OLD.status;
    END IF;
    INSERT INTO spend_rollups ({_KEY}, {_SUMS}) VALUES (
        NEW.created_at::date, NEW.agent_id, NEW.endpoint, NEW.model, NEW.operation, NEW.status, 1,
        NEW.estimated_cost, coalesce(NEW.actual_cost, 0), coalesce(NEW.images, 0),
        coalesce(NEW.billable_mp_nano, 0), adj,
        CASE WHEN NEW.status = 'completed'
            THEN greatest(0, coalesce(NEW.actual_cost, 0) + adj) - coalesce(NEW.actual_cost, 0) ELSE 0 END)
    ON CONFLICT ({_KEY}) DO UPDATE SET {_ADD};
    IF TG_OP = 'INSERT' AND NEW.status = 'denied' AND NEW.denial_json IS NOT NULL THEN
        INSERT INTO denial_rollups ({_DENIAL_KEY}, denials)
        SELECT NEW.created_at::date, NEW.agent_id, NEW.endpoint, NEW.model, NEW.operation,
            coalesce(d ->> 'rule', ''), coalesce(d ->> 'type', ''), count(*)
        FROM jsonb_array_elements(NEW.denial_json::jsonb -> 'denials') AS d GROUP BY 6, 7
        ON CONFLICT ({_DENIAL_KEY}) DO UPDATE SET denials = denial_rollups.denials + excluded.denials;
    END IF;
    RETURN NULL;
END $$
""",
    """
CREATE FUNCTION pixelgov_rollup_adjustment() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t transactions%ROWTYPE;
    before bigint;
    act bigint;
BEGIN
    SELECT * INTO t FROM transactions WHERE id = NEW.transaction_id;
    SELECT coalesce(sum(amount), 0) INTO before FROM cost_lines
    WHERE transaction_id = NEW.transaction_id AND kind = 'adjustment' AND id < NEW.id;
    act := coalesce(t.actual_cost, 0);
    UPDATE spend_rollups SET
        adjustments = adjustments + NEW.amount,
        adjusted_net = adjusted_net + CASE WHEN t.status = 'completed'
            THEN greatest(0, act + before + NEW.amount) - greatest(0, act + before) ELSE 0 END
    WHERE day = t.created_at::date AND agent_id = t.agent_id AND endpoint = t.endpoint
        AND model = t.model AND operation = t.operation AND status = t.status;
    RETURN NULL;
END $$
""",
)
_PG_TRIGGERS = (
    "CREATE TRIGGER tr_transactions_rollup AFTER INSERT OR UPDATE OF "
    "status, estimated_cost, actual_cost, images, billable_mp_nano, created_at, agent_id, endpoint, model, operation "
    "ON transactions FOR EACH ROW EXECUTE FUNCTION pixelgov_rollup_transaction()",
    "CREATE TRIGGER tr_cost_lines_rollup_adjustment AFTER INSERT ON cost_lines FOR EACH ROW "
    "WHEN (NEW.kind = 'adjustment') EXECUTE FUNCTION pixelgov_rollup_adjustment()",
)

# --- the backfill: the same sums, over the ledger as it stands --------------------------------


def _backfill_sql(pg: bool) -> tuple[str, str]:
    day = "t.created_at::date" if pg else "substr(t.created_at, 1, 10)"
    top = "greatest" if pg else "max"
    act = "coalesce(t.actual_cost, 0)"
    spend = (
        f"INSERT INTO spend_rollups ({_KEY}, {_SUMS}) "
        f"SELECT {day}, t.agent_id, t.endpoint, t.model, t.operation, t.status, count(*), "
        f"sum(t.estimated_cost), sum({act}), sum(coalesce(t.images, 0)), sum(coalesce(t.billable_mp_nano, 0)), "
        "sum(coalesce(a.amount, 0)), "
        f"sum(CASE WHEN t.status = 'completed' THEN {top}(0, {act} + coalesce(a.amount, 0)) - {act} ELSE 0 END) "
        "FROM transactions t LEFT JOIN (SELECT transaction_id, sum(amount) AS amount FROM cost_lines "
        "WHERE kind = 'adjustment' GROUP BY transaction_id) a ON a.transaction_id = t.id "
        "GROUP BY 1, 2, 3, 4, 5, 6"
    )
    if pg:
        elements = "jsonb_array_elements(t.denial_json::jsonb -> 'denials') AS d"
        rule, kind = "coalesce(d ->> 'rule', '')", "coalesce(d ->> 'type', '')"
    else:
        elements = "json_each(t.denial_json, '$.denials') AS d"
        rule, kind = "coalesce(json_extract(d.value, '$.rule'), '')", "coalesce(json_extract(d.value, '$.type'), '')"
    denials = (
        f"INSERT INTO denial_rollups ({_DENIAL_KEY}, denials) "
        f"SELECT {day}, t.agent_id, t.endpoint, t.model, t.operation, {rule}, {kind}, count(*) "
        f"FROM transactions t CROSS JOIN {elements} "
        "WHERE t.status = 'denied' AND t.denial_json IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6, 7"
    )
    return spend, denials


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    money = sa.BigInteger()
    op.create_table(
        "spend_rollups",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("agent_id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("tx_count", sa.BigInteger(), nullable=False),
        sa.Column("estimated", money, nullable=False),
        sa.Column("actual", money, nullable=False),
        sa.Column("images", sa.BigInteger(), nullable=False),
        sa.Column("billable_mp_nano", sa.BigInteger(), nullable=False),
        sa.Column("adjustments", money, nullable=False),
        sa.Column("adjusted_net", money, nullable=False),
        sa.PrimaryKeyConstraint(
            "day", "agent_id", "endpoint", "model", "operation", "status", name=op.f("pk_spend_rollups")
        ),
    )
    op.create_table(
        "denial_rollups",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("agent_id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("rule", sa.String(length=200), nullable=False),
        sa.Column("rule_type", sa.String(length=20), nullable=False),
        sa.Column("denials", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "day", "agent_id", "endpoint", "model", "operation", "rule", "rule_type", name=op.f("pk_denial_rollups")
        ),
    )
    if pg:
        # No writer may add to the ledger between the backfill and the triggers taking over.
        op.execute("LOCK TABLE transactions, cost_lines IN SHARE ROW EXCLUSIVE MODE")
    for statement in _backfill_sql(pg):
        op.execute(statement)
    if pg:
        for statement in (*_PG_FUNCTIONS, *_PG_TRIGGERS):
            op.execute(statement)
    else:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)
        op.execute(f"DROP INDEX IF EXISTS {REPORT_INDEX}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS tr_cost_lines_rollup_adjustment ON cost_lines")
        op.execute("DROP TRIGGER IF EXISTS tr_transactions_rollup ON transactions")
        op.execute("DROP FUNCTION IF EXISTS pixelgov_rollup_adjustment()")
        op.execute("DROP FUNCTION IF EXISTS pixelgov_rollup_transaction()")
    else:
        for name in _SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute(f"CREATE INDEX {REPORT_INDEX} ON transactions (substr(created_at, 1, 10), {_REPORT_COLUMNS})")
    op.drop_table("denial_rollups")
    op.drop_table("spend_rollups")
