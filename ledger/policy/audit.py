"""The audit log: every change to an agent, a rule or a key is written with it, in the same
database transaction; and the base every part of `Admin` shares.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from ..clock import Clock, utcnow
from ..records import AuditEntry
from ..store.db import reading
from ..store.models import audit_log


def write_audit(
    conn: Connection,
    entity: str,
    entity_id: int,
    name: str,
    action: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    now: datetime,
) -> None:
    conn.execute(
        insert(audit_log).values(
            entity=entity,
            entity_id=entity_id,
            entity_name=name,
            action=action,
            before_json=json.dumps(before, default=str) if before is not None else None,
            after_json=json.dumps(after, default=str) if after is not None else None,
            created_at=now,
        )
    )


class Administration:
    """One ledger database's engine and clock, shared by every part of `Admin`."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock

    def audit(self, *, entity: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The audit log of agent and rule changes, newest first (`entity`: agent or rule)."""
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if entity:
            query = query.where(audit_log.c.entity == entity)
        with reading(self.engine) as conn:
            rows = conn.execute(query).all()
        return [
            AuditEntry(
                r.id,
                r.entity,
                r.entity_id,
                r.entity_name,
                r.action,
                json.loads(r.before_json) if r.before_json else None,
                json.loads(r.after_json) if r.after_json else None,
                r.created_at,
            )
            for r in rows
        ]
