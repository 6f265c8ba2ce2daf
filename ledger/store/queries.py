"""The governor's reads: transactions as records, agents by name, idempotency keys, stale holds.

SQLAlchemy Core, run inside a transaction the caller opened (`db.reading` or `db.writing`).
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, or_, select

from ..errors import InvalidRequest, NotFound
from ..records import AgentRef, AgentStatus, CostLine, Fact, Transaction, TransactionDetail, TxStatus
from ..validation import validate_agent_name
from .models import agents, cost_lines, facts, holds, spending_rules, transactions


def transaction_record(row: Any, agent_name: str, detail: TransactionDetail | None = None) -> Transaction:
    """A `Transaction` from a row with the transactions table's columns."""
    return Transaction(
        id=row.id,
        agent=agent_name,
        endpoint=row.endpoint,
        model=row.model,
        operation=row.operation,
        status=TxStatus(row.status),
        estimated_cost=row.estimated_cost,
        actual_cost=row.actual_cost,
        price_book=row.price_book,
        created_at=row.created_at,
        completed_at=row.completed_at,
        idempotency_key=row.idempotency_key,
        denial=json.loads(row.denial_json) if row.denial_json else None,
        upstream_request_id=row.upstream_request_id,
        upstream_status=row.upstream_status,
        outcome=row.outcome,
        forwarder=row.forwarder,
        detail=detail,
    )


def load_transaction(conn: Connection, tx_id: int, *, detail: bool = False) -> Transaction:
    """One transaction (with its request, cost lines, facts and stored result when `detail`);
    NotFound if there is none."""
    row = conn.execute(
        select(transactions, agents.c.name.label("agent_name"))
        .join(agents, agents.c.id == transactions.c.agent_id)
        .where(transactions.c.id == tx_id)
    ).first()
    if row is None:
        raise NotFound(f"no transaction {tx_id}", id=tx_id)
    extra = None
    if detail:
        lines = conn.execute(
            select(cost_lines).where(cost_lines.c.transaction_id == tx_id).order_by(cost_lines.c.id)
        ).all()
        notes = conn.execute(select(facts).where(facts.c.transaction_id == tx_id).order_by(facts.c.id)).all()
        extra = TransactionDetail(
            request=json.loads(row.request_json),
            cost_lines=tuple(CostLine(r.kind, r.amount, r.note, r.created_at) for r in lines),
            facts=tuple(Fact(r.key, r.value, r.created_at) for r in notes),
            result=json.loads(row.response_json) if row.response_json else None,
        )
    return transaction_record(row, row.agent_name, extra)


def list_transactions(
    conn: Connection,
    *,
    agent: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[Transaction]:
    """Transactions newest first, filtered; InvalidRequest for an unknown status or a malformed
    agent name, NotFound for an unknown agent."""
    t = transactions.c
    if agent:
        validate_agent_name(agent)
    query = select(transactions, agents.c.name.label("agent_name")).join(agents, agents.c.id == t.agent_id)
    if agent:
        if find_agent(conn, agent) is None:
            raise NotFound(f"unknown agent {agent!r}", agent=agent)
        query = query.where(agents.c.name == agent)
    if status:
        if status not in TxStatus.__members__:
            raise InvalidRequest(f"status: {status!r}; allowed: {', '.join(TxStatus.__members__)}", field="status")
        query = query.where(t.status == TxStatus(status))
    if since:
        query = query.where(t.created_at >= since)
    if until:
        query = query.where(t.created_at < until)
    rows = conn.execute(query.order_by(t.id.desc()).limit(limit)).all()
    return [transaction_record(r, r.agent_name) for r in rows]


def find_agent(conn: Connection, name: str) -> AgentRef | None:
    row = conn.execute(select(agents.c.id, agents.c.name, agents.c.status).where(agents.c.name == name)).first()
    return AgentRef(row.id, row.name, AgentStatus(row.status)) if row else None


def by_idempotency_key(conn: Connection, agent_id: int, key: str) -> Any:
    """(id, request_hash) of the agent's transaction with this idempotency key, or None."""
    return conn.execute(
        select(transactions.c.id, transactions.c.request_hash).where(
            transactions.c.agent_id == agent_id, transactions.c.idempotency_key == key
        )
    ).first()


def rule_rows_in_scope(conn: Connection, agent_id: int | None) -> list[Any]:
    """The rows of every enabled rule of the agent and of every global rule, by id."""
    scope: ColumnElement[bool] = spending_rules.c.agent_id.is_(None)
    if agent_id is not None:
        scope = or_(scope, spending_rules.c.agent_id == agent_id)
    rows = conn.execute(
        select(spending_rules).where(spending_rules.c.enabled.is_(True), scope).order_by(spending_rules.c.id)
    )
    return list(rows)


def has_stale_holds(conn: Connection, cutoff: datetime) -> bool:
    t = transactions.c
    return (
        conn.execute(select(t.id).where(t.status == TxStatus.pending, t.created_at < cutoff).limit(1)).first()
        is not None
    )


def stale_held(conn: Connection, cutoff: datetime) -> dict[tuple[int, int], Decimal]:
    """The estimates of pending holds created before `cutoff`, per (rule, bucket): what an expiry
    would release (a hold pixelgov forwarded expires to `unknown` and stays counted: not these)."""
    t = transactions.c
    rows = conn.execute(
        select(holds.c.rule_id, holds.c.bucket, func.sum(t.estimated_cost))
        .join(transactions, t.id == holds.c.transaction_id)
        .where(t.status == TxStatus.pending, t.created_at < cutoff, t.forwarder.is_(None))
        .group_by(holds.c.rule_id, holds.c.bucket)
    )
    return {(r[0], r[1]): r[2] for r in rows}


def queued_transaction_id(conn: Connection, request_id: str) -> int | None:
    """The transaction a gateway queue request id names, or None (one primary-key read)."""
    from .models import queue_requests

    return conn.execute(
        select(queue_requests.c.transaction_id).where(queue_requests.c.request_id == request_id)
    ).scalar()


def queue_request_id_of(conn: Connection, tx_id: int) -> str | None:
    """The gateway queue request id of a transaction, or None."""
    from .models import queue_requests

    return conn.execute(select(queue_requests.c.request_id).where(queue_requests.c.transaction_id == tx_id)).scalar()
