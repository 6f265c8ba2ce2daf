"""Small helpers the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Table, func, select

from ledger.policy.rules import RuleSpec
from ledger.store.models import (
    agents,
    alerts,
    audit_log,
    cost_lines,
    facts,
    holds,
    pre_authorizations,
    rule_counters,
    spending_rules,
    transactions,
)

#: Every table of the ledger, parents before children.
LEDGER_TABLES: tuple[Table, ...] = (
    agents,
    spending_rules,
    transactions,
    cost_lines,
    facts,
    holds,
    rule_counters,
    alerts,
    audit_log,
    pre_authorizations,
)


def spec(**fields: Any) -> RuleSpec:
    """A RuleSpec giving exactly the fields named (as the CLI and the API build one)."""
    return RuleSpec(**fields, given=set(fields))


def rule_usage(engine: Any, rule_id: int) -> tuple[Decimal, Decimal, int]:
    """(spent, held, requests) of a rule over all its buckets, read straight from its counters."""
    c = rule_counters.c
    with engine.connect() as conn:
        row = conn.execute(
            select(func.sum(c.spent), func.sum(c.held), func.sum(c.requests)).where(c.rule_id == rule_id)
        ).one()
    return row[0] or Decimal(0), row[1] or Decimal(0), int(row[2] or 0)


def count(engine: Any, table: Table) -> int:
    """How many rows `table` has."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def row_counts(engine: Any) -> dict[str, int]:
    """The row count of every ledger table."""
    return {table.name: count(engine, table) for table in LEDGER_TABLES}


def snapshot(engine: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every ledger table, sorted: equal snapshots mean nothing was written."""
    with engine.connect() as conn:
        return {
            table.name: sorted((tuple(r) for r in conn.execute(select(table))), key=repr) for table in LEDGER_TABLES
        }
