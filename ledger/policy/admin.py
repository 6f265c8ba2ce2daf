"""Administration: agents (with hashed API keys), spending rules, alerts, the audit log.

Every change to an agent or a rule writes an audit entry in the same transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from ..records import Alert
from ..store.db import reading
from ..store.models import agents, alerts, spending_rules
from .access import AccessBook
from .agents import AgentBook
from .rulebook import RuleBook


class Admin(AgentBook, RuleBook, AccessBook):
    """Agents, spending rules, alerts and the audit log of one ledger database.

    Every change writes an audit entry in the same database transaction. Returns typed records
    (`ledger.records`); raises InvalidRequest (bad input, nothing written), NotFound (unknown agent
    or rule) and Conflict (a duplicate name).
    """

    def alerts(self, *, limit: int = 100) -> list[Alert]:
        """Alerts, newest first."""
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(alerts, agents.c.name.label("agent_name"))
                .outerjoin(agents, agents.c.id == alerts.c.agent_id)
                .order_by(alerts.c.id.desc())
                .limit(limit)
            ).all()
        return [alert_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """How many agents and rules there are."""
        with reading(self.engine) as conn:
            return {
                "agents": conn.execute(select(func.count()).select_from(agents)).scalar_one(),
                "rules": conn.execute(select(func.count()).select_from(spending_rules)).scalar_one(),
            }


def alert_record(row: Any) -> Alert:
    """An `alerts` row joined with its agent's name (`agent_name`) as the record."""
    return Alert(row.id, row.rule_name, row.kind, row.agent_name, row.transaction_id, row.message, row.created_at)
