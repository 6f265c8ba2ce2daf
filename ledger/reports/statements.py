"""`pixelgov report statement`: the month-end statement per agent, with its adjustment lines."""

from __future__ import annotations

from sqlalchemy import Connection, select

from ..store.models import cost_lines, transactions
from .filters import Filter, check_filter, parse_month, transaction_terms
from .reader import ReportReader, collector_paused, merge
from .records import ACC_WIDTH, AgentStatement, Statement, StatementAdjustment, StatementLine, Totals


class Statements(ReportReader):
    """Month-end statements."""

    @collector_paused
    def statement(self, month: str, *, agent: str | None = None) -> Statement:
        """The month-end statement (`YYYY-MM`) of every agent with transactions that month, or of one."""
        since, until = parse_month(month)
        with self._read() as conn:
            f = check_filter(conn, self.book, since, until, agent, None, None, None)
            groups = self._fold(conn, f, ("agent", "model", "operation"), None)
            adjustments = self._adjustment_lines(conn, f)
            names = self._agent_names(conn)
        by_agent: dict[int, list[StatementLine]] = {}
        totals: dict[int, list[int]] = {}
        grand = [0] * ACC_WIDTH
        for (agent_id, model_name, op), acc in groups.items():
            by_agent.setdefault(agent_id, []).append(StatementLine(model_name, op, Totals.of(acc)))
            merge(totals.setdefault(agent_id, [0] * ACC_WIDTH), acc)
            merge(grand, acc)
        statements = []
        for agent_id in sorted(by_agent, key=lambda a: names.get(a, "")):
            lines = tuple(sorted(by_agent[agent_id], key=lambda line: (line.model, line.operation)))
            statements.append(
                AgentStatement(
                    names.get(agent_id, str(agent_id)),
                    lines,
                    tuple(adjustments.get(agent_id, ())),
                    Totals.of(totals[agent_id]),
                )
            )
        return Statement(month.strip(), f.window(), tuple(statements), Totals.of(grand))

    def _adjustment_lines(self, conn: Connection, f: Filter) -> dict[int, list[StatementAdjustment]]:
        t, c = transactions.c, cost_lines.c
        query = (
            select(t.agent_id, c.transaction_id, t.model, c.amount, c.note, c.created_at)
            .select_from(cost_lines.join(transactions, t.id == c.transaction_id))
            .where(c.kind == "adjustment", *transaction_terms(f))
            .order_by(t.agent_id, c.created_at, c.id)
        )
        out: dict[int, list[StatementAdjustment]] = {}
        for row in conn.execute(query):
            out.setdefault(row[0], []).append(StatementAdjustment(row[1], row[2], row[3], row[4], row[5]))
        return out
