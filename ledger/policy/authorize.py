"""Authorization: a pending transaction and its holds in every matching budget, written in the
same database transaction as the decision, or the denial recorded; idempotent retries replayed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from pricing import Quote
from pricing.money import from_nano, to_nano

from ..errors import Conflict, InvalidRequest
from ..records import AgentRef, AgentStatus, Authorization, Decision, Transaction, TxStatus
from ..store.db import reading, writing
from ..store.hotpath import Driver, KeyRow
from ..store.models import alerts
from ..store.queries import by_idempotency_key, find_agent, has_stale_holds, load_transaction
from ..validation import validate_agent_name
from .decision import Deciding, unknown_agent
from .periods import buckets
from .release import Releasing

MAX_KEY_LENGTH = 200  #: the idempotency_key column's width


#: Request fields whose name contains one of these are never stored (at any depth; `headers` whole).
_SECRET_HINTS = (
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "authorization",
    "auth",
    "credential",
    "cookie",
    "session",
    "headers",
    "signature",
)


def validate_idempotency_key(key: str | None) -> str | None:
    """The key, if the ledger can store it (1–200 characters); InvalidRequest otherwise."""
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidRequest(
            f"idempotency_key: 1–{MAX_KEY_LENGTH} characters (got {len(key)})", field="idempotency_key"
        )
    return key


def request_hash(endpoint: str, body: Mapping[str, Any]) -> str:
    """The digest that tells an idempotent retry from a different request with the same key."""
    canonical = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def stored_request(body: Mapping[str, Any], quote: Quote) -> dict[str, Any]:
    """Request parameters as the ledger keeps them: secrets dropped, data: URIs summarized,
    and an upscale's input size (as priced) recorded so the request can be re-priced."""
    kept: dict[str, Any] = _without_secrets(body)
    if quote.operation == "upscale":
        kept["input_size"] = f"{quote.input_width}x{quote.input_height}"
    return kept


def _without_secrets(value: Any) -> Any:
    """`value` with secret-like keys dropped at every depth and long data: URIs summarized."""
    if isinstance(value, Mapping):
        return {k: _without_secrets(v) for k, v in value.items() if not any(h in str(k).lower() for h in _SECRET_HINTS)}
    if isinstance(value, list | tuple):
        return [_without_secrets(v) for v in value]
    if isinstance(value, str) and value.startswith("data:") and len(value) > 200:
        return f"{value[: value.find(',') + 1]}…({len(value)} chars)"
    return value


class _StaleHolds(Exception):
    """Raised inside an authorization to roll it back and expire stale holds first."""


class Authorizing(Deciding, Releasing):
    """Authorization: the decision and the hold, in one database transaction."""

    def authorize(
        self, agent_name: str, quote: Quote, body: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Authorization:
        """Record a transaction and hold its estimate in every matching budget, or record the denial.

        A retry with an `idempotency_key` the agent already used returns the first transaction
        (`replayed=True`) and writes nothing; the same key with a different request raises Conflict.
        Raises InvalidRequest (bad key or agent name) and NotFound (unknown agent, no auto-create)."""
        validate_idempotency_key(idempotency_key)
        validate_agent_name(agent_name)
        digest = request_hash(quote.endpoint, body)
        try:
            try:
                return self._authorize(agent_name, quote, body, idempotency_key, digest, may_expire=True)
            except _StaleHolds:
                # A denial while stale holds exist: release them in their own transaction, decide again.
                self.expire()
                return self._authorize(agent_name, quote, body, idempotency_key, digest, may_expire=False)
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
        self, agent_name: str, quote: Quote, body: Mapping[str, Any], key: str | None, digest: str, *, may_expire: bool
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

    def _create_agent_on_first_use(self, conn: Connection, name: str, now: datetime) -> AgentRef:
        if not self.auto_create:
            raise unknown_agent(name)
        from ..store.models import agents
        from .audit import write_audit

        created = conn.execute(
            self._upsert(agents)
            .values(name=name, status=AgentStatus.active, created_at=now, updated_at=now)
            .on_conflict_do_nothing()
            .returning(agents.c.id)
        ).first()
        agent = find_agent(conn, name)
        assert agent is not None and agent.id is not None
        if created is not None:  # not when a concurrent first use created it (PostgreSQL waits for that one)
            write_audit(
                conn,
                "agent",
                agent.id,
                name,
                "create",
                None,
                {"name": name, "status": "active", "created": "on first use"},
                now,
            )
        return agent

    def _replay(self, conn: Connection, existing: Any, digest: str, key: str) -> Authorization:
        if existing.request_hash != digest:
            raise Conflict(
                f"idempotency key {key!r} was already used for a different request (transaction {existing.id})",
                field="idempotency_key",
                id=existing.id,
            )
        return Authorization(load_transaction(conn, existing.id), None, replayed=True)
