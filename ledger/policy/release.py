"""Release: fail, void, mark unknown and expire, each moving exactly the counters the
transaction was counted in.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from ..errors import InvalidRequest
from ..records import Transaction, TxStatus
from ..store.db import writing
from ..store.hotpath import Driver
from ..store.models import holds, spending_rules, transactions
from ..store.queries import transaction_record
from ..store.spend import counted, movement
from .transitions import Transitions


class Releasing(Transitions):
    """Holds released: failed, voided, unknown (still counted) or expired."""

    def fail(
        self, tx_id: int, reason: str, *, upstream_status: int | None = None, facts: Mapping[str, Any] | None = None
    ) -> Transaction:
        """The upstream refused or errored before generating: hold released, nothing spent."""
        return self._release(tx_id, TxStatus.failed, (TxStatus.pending,), reason, upstream_status, facts)

    def void(self, tx_id: int, reason: str | None = None, *, by_agent: bool = False) -> Transaction:
        """Release a pending hold (or an unknown outcome's counted estimate) by hand.

        `by_agent`: the agent itself asks (the gateway's agent routes): it may void only a hold it
        forwards by itself; one pixelgov forwarded is SettledByGateway (409). An admin may void any,
        but one pixelgov forwarded only with a `reason` (it may have been served and billed)."""
        return self._release(
            tx_id, TxStatus.voided, (TxStatus.pending, TxStatus.unknown), reason, None, None, by_agent=by_agent
        )

    def mark_unknown(self, tx_id: int, reason: str, *, facts: Mapping[str, Any] | None = None) -> Transaction:
        """No answer after sending: the estimate stays counted as spent until settled or voided."""
        return self._release(tx_id, TxStatus.unknown, (TxStatus.pending,), reason, None, facts)

    def _release(
        self,
        tx_id: int,
        to: TxStatus,
        allowed: tuple[TxStatus, ...],
        reason: str | None,
        upstream_status: int | None,
        facts: Mapping[str, Any] | None,
        *,
        by_agent: bool = False,
    ) -> Transaction:
        now = self.clock()
        verb = {"failed": "fail", "voided": "void", "unknown": "mark unknown"}[to.value]
        with writing(self.engine) as conn:
            d = Driver(conn)
            row = self._lock_tx(d, tx_id, allowed, verb, by_agent=by_agent)
            if to == TxStatus.voided and row.forwarder is not None and not (reason or "").strip():
                raise InvalidRequest(
                    f"reason: transaction {tx_id} was forwarded by pixelgov ({row.forwarder}) and may have been "
                    "served and billed; voiding it needs a reason",
                    field="reason",
                )
            est = row.estimated_cost
            moved = movement(counted(row.status, est), counted(to, est))
            row = self._set_status(
                d,
                row,
                to,
                now,
                notes=(facts or {}).items(),
                outcome=reason,
                upstream_status=upstream_status,
                completed_at=now if to != TxStatus.unknown else None,
            )
            self._move_counters(d, tx_id, moved, locked=self._pg)
            return transaction_record(row, row.agent_name)

    def expire(self, older_than: float | None = None) -> list[int]:
        """Resolve every pending hold older than the hold TTL (or `older_than` seconds); the ids resolved.

        A caller's own hold (no forwarder) is released: `expired`. One pixelgov forwarded itself (the
        gateway, `pixelgov run`) that nobody settled — its process was killed, say — becomes `unknown`:
        the request may have been served and billed, so its estimate stays counted until an admin
        settles or voids it."""
        if older_than is not None and not 0 <= older_than < float("inf"):
            raise InvalidRequest("older_than: a finite number of seconds ≥ 0", field="older_than")
        now = self.clock()
        with writing(self.engine) as conn:
            return self._expire_stale(conn, now, older_than)

    def _expire_stale(self, conn: Connection, now: datetime, older_than: float | None = None) -> list[int]:
        cutoff = self._cutoff(now, older_than)
        t = transactions.c
        stale = [t.status == TxStatus.pending, t.created_at < cutoff]
        if self._pg:
            # The lock order (module docstring): the transactions' rows, their rules, then the rollup
            # rows that the update's trigger writes.
            ids = conn.execute(select(t.id).where(*stale).order_by(t.id).with_for_update()).scalars().all()
            if not ids:
                return []
            conn.execute(
                select(spending_rules.c.id)
                .where(spending_rules.c.id.in_(select(holds.c.rule_id).where(holds.c.transaction_id.in_(ids))))
                .order_by(spending_rules.c.id)
                .with_for_update(key_share=True)
            )
            stale = [t.id.in_(ids), t.status == TxStatus.pending]
        released = conn.execute(
            update(transactions)
            .where(*stale, t.forwarder.is_(None))
            .values(status=TxStatus.expired, completed_at=now, outcome="hold expired (older than the hold TTL)")
            .returning(t.id, t.estimated_cost)
        ).all()
        unsettled = conn.execute(
            update(transactions)
            .where(*stale, t.forwarder.is_not(None))
            .values(
                status=TxStatus.unknown,
                outcome="not settled within the hold TTL (the forwarding process stopped?): it may have been "
                "served, so its estimate stays counted until settled or voided",
            )
            .returning(t.id, t.estimated_cost)
        ).all()
        d = Driver(conn)
        resolved = [(tx_id, est, TxStatus.expired) for tx_id, est in released]
        resolved += [(tx_id, est, TxStatus.unknown) for tx_id, est in unsettled]
        for tx_id, est, to in sorted(resolved):
            moved = movement(counted(TxStatus.pending, est), counted(to, est))
            self._move_counters(d, tx_id, moved, locked=True)
        return sorted(r[0] for r in resolved)
