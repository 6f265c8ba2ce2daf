"""Authorization: a pending transaction and its holds in every matching budget, written in the
same database transaction as the decision, or the denial recorded; idempotent retries replayed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from pricing import Quote
from pricing.money import from_nano, to_nano

from ..errors import Conflict, InvalidRequest
from ..records import AgentRef, Authorization, Decision, Transaction, TxStatus
from ..store.db import reading, writing
from ..store.hotpath import Driver, KeyRow
from ..store.models import alerts
from ..store.queries import by_idempotency_key, find_agent, has_stale_holds, load_transaction
from ..validation import validate_agent_name
from .decision import Deciding
from .periods import buckets
from .preauthorize import use_preauthorization
from .release import Releasing
from .requests import FORWARDERS, request_hash, stored_request, validate_idempotency_key


class _StaleHolds(Exception):
    """Raised inside an authorization to roll it back and expire stale holds first."""


class Authorizing(Deciding, Releasing):
    """Authorization: the decision and the hold, in one database transaction."""

    def authorize(
        self,
        agent_name: str,
        quote: Quote,
        body: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        preauthorization: str | None = None,
        forwarder: str | None = None,
    ) -> Authorization:
        """Record a transaction and hold its estimate in every matching budget, or record the denial.

        A retry with an `idempotency_key` the agent already used returns the first transaction
        (`replayed=True`) and writes nothing; the same key with a different request raises Conflict.
        `forwarder`: "gateway" or "run" when pixelgov itself forwards the request (then pixelgov alone
        settles it, and an unsettled hold expires to `unknown`, still counted); None for a caller
        that forwards by itself (its hold expires to released).

        With `preauthorization` (an id `preauthorize` gave), the transaction uses it, in the same
        database transaction: it must be the agent's, for this endpoint, authorized, unused and
        unexpired, else Forbidden and nothing is written.

        Raises InvalidRequest (bad key or agent name) and NotFound (unknown agent, no auto-create)."""
        validate_idempotency_key(idempotency_key)
        validate_agent_name(agent_name)
        if forwarder not in FORWARDERS:
            raise InvalidRequest(f"forwarder: one of {', '.join(map(str, FORWARDERS))}", field="forwarder")
        digest = request_hash(quote.endpoint, body)
        try:
            try:
                return self._authorize(
                    agent_name, quote, body, idempotency_key, digest, preauthorization, forwarder, may_expire=True
                )
            except _StaleHolds:
                # A denial while stale holds exist: release them in their own transaction, decide again.
                self.expire()
                return self._authorize(
                    agent_name, quote, body, idempotency_key, digest, preauthorization, forwarder, may_expire=False
                )
        except IntegrityError:
            if idempotency_key is None:
                raise
            # A concurrent retry with the same key won the insert: replay its transaction.
            with reading(self.engine) as conn:
                agent = find_agent(conn, agent_name)
                existing = by_idempotency_key(conn, agent.id, idempotency_key) if agent and agent.id else None
                if existing is None:
                    raise
                return self._replay(conn, existing, digest, idempotency_key)

    def used_idempotency_key(self, agent_name: str, key: str) -> bool:
        """Whether the agent already used this idempotency key: `authorize` with it would replay
        that transaction and write nothing. Writes nothing; InvalidRequest for a malformed key or name."""
        validate_idempotency_key(key)
        validate_agent_name(agent_name)
        with reading(self.engine) as conn:
            agent = find_agent(conn, agent_name)
            return bool(agent and agent.id and by_idempotency_key(conn, agent.id, key) is not None)

    def _authorize(
        self,
        agent_name: str,
        quote: Quote,
        body: Mapping[str, Any],
        key: str | None,
        digest: str,
        preauthorization: str | None,
        forwarder: str | None,
        *,
        may_expire: bool,
    ) -> Authorization:
        now = self.clock()
        sql = self._sql
        with writing(self.engine) as conn:
            d = Driver(conn)
            agent, rules = self._agent_and_rules(d, agent_name)  # the agent and its rules: one round trip
            if agent is None:
                self._create_agent_on_first_use(conn, agent_name, now)
                agent, rules = self._agent_and_rules(d, agent_name)
            assert agent is not None and agent.id is not None
            if key is not None:
                found = d.one(sql.by_key, {"agent_id": agent.id, "key": key})
                if found is not None:
                    return self._replay(conn, KeyRow(*found), digest, key)
            decision = self._decide(d, agent, rules, quote, now, lock=True)
            if not decision.allowed and may_expire and has_stale_holds(conn, self._cutoff(now)):
                raise _StaleHolds
            status = TxStatus.pending if decision.allowed else TxStatus.denied
            denial_doc = None
            if not decision.allowed:
                first = decision.denials[0]
                denial_doc = {**first.to_json(), "denials": [x.to_json() for x in decision.denials]}
            est = to_nano(quote.amount)
            ts = d.ts(now)
            values = {
                "agent_id": agent.id,
                "endpoint": quote.endpoint,
                "model": quote.model,
                "operation": quote.operation,
                "request_json": json.dumps(stored_request(body, quote), default=str),
                "request_hash": digest,
                "price_book": quote.price_book,
                "estimated_cost": est,
                "status": status.value,
                "idempotency_key": key,
                "denial_json": json.dumps(denial_doc) if denial_doc else None,
                "created_at": ts,
                # what reports sum instead of re-pricing every request (megapixels in nano-MP, exact)
                "images": quote.images,
                "billable_mp_nano": to_nano(quote.billable_megapixels),
                "forwarder": forwarder,
            }
            if decision.allowed:
                tx_id = self._insert_held(d, values, self._hold_rows(decision.verdicts, now))
                if decision.alerts:
                    self._record_alerts(conn, tx_id, agent, decision, now)
            elif self._pg:
                tx_id = d.one(sql.insert_tx, values)[0]  # type: ignore[index]
            else:
                d.execute(sql.insert_tx, values)
                tx_id = d.lastrowid
            if preauthorization is not None:
                use_preauthorization(conn, preauthorization, tx_id, agent.id, quote.endpoint, now)
            # The record from the values just written (they are what a re-select would read back).
            tx = Transaction(
                tx_id,
                agent.name,
                quote.endpoint,
                quote.model,
                quote.operation,
                status,
                from_nano(est),
                None,
                quote.price_book,
                now,
                None,
                key,
                denial_doc,
                None,
                None,
                None,
                forwarder,
            )
        return Authorization(tx, decision)

    def _insert_held(self, d: Driver, values: dict[str, Any], holds_: list[tuple[int, int]]) -> int:
        """The pending transaction, its estimate line, its holds and the counter increments."""
        sql = self._sql
        if self._pg:
            params = {**values, "rule_ids": [r for r, _ in holds_], "buckets": [b for _, b in holds_]}
            return int(d.one(sql.insert_held_tx, params)[0])  # type: ignore[index]
        d.execute(sql.insert_tx, values)
        tx_id = d.lastrowid
        d.execute(
            sql.insert_line,
            {
                "tx_id": tx_id,
                "kind": "estimate",
                "amount": values["estimated_cost"],
                "note": None,
                "created_at": values["created_at"],
            },
        )
        if holds_:
            upsert_sql, holds_sql = sql.hold_counters(len(holds_))
            held: dict[str, Any] = {"tx_id": tx_id, "est": values["estimated_cost"]}
            for i, (rule_id, bucket) in enumerate(holds_):
                held[f"r{i}"], held[f"b{i}"] = rule_id, bucket
            d.execute(upsert_sql, held)
            d.execute(holds_sql, held)
        return tx_id

    def _record_alerts(self, conn: Connection, tx_id: int, agent: AgentRef, decision: Decision, now: datetime) -> None:
        by_name = {v.rule.name: v.rule for v in decision.verdicts}
        for entry in decision.alerts:
            rule = by_name[entry.rule]
            dedupe = None
            if entry.type == "threshold":
                bucket, _ = buckets(rule.period, rule.window_seconds, now)
                dedupe = f"threshold:{rule.id}:{rule.version}:{bucket}"
            ins = self._upsert(alerts).values(
                rule_id=rule.id,
                rule_name=rule.name,
                agent_id=agent.id,
                transaction_id=tx_id,
                kind="threshold" if dedupe else "rule",
                dedupe_key=dedupe,
                message=entry.reason,
                created_at=now,
            )
            conn.execute(ins.on_conflict_do_nothing() if dedupe else ins)

    def _replay(self, conn: Connection, existing: Any, digest: str, key: str) -> Authorization:
        if existing.request_hash != digest:
            raise Conflict(
                f"idempotency key {key!r} was already used for a different request (transaction {existing.id})",
                field="idempotency_key",
                id=existing.id,
            )
        return Authorization(load_transaction(conn, existing.id), None, replayed=True)
