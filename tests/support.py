"""Small helpers the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from ledger.models import rule_counters


def rule_usage(engine: Any, rule_id: int) -> tuple[Decimal, Decimal, int]:
    """(spent, held, requests) of a rule over all its buckets, read straight from its counters."""
    c = rule_counters.c
    with engine.connect() as conn:
        row = conn.execute(select(func.sum(c.spent), func.sum(c.held), func.sum(c.requests))
                           .where(c.rule_id == rule_id)).one()
    return row[0] or Decimal(0), row[1] or Decimal(0), int(row[2] or 0)
