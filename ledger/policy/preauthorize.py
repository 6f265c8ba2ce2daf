"""Pre-authorizations: a decision made before the request's body is known, used once by that request.

The seed platform's SDK (`@sapiom/fetch`) asks its transactions API first, with what it knows of
the call it is about to make (method and URL, no body), and sends the request only when the answer
is `authorized`. Without a body there is no price, so the decision here is everything a price does
not change — the agent paused or unknown, the endpoint unknown, a model allowlist, a rate limit,
a spend limit with no room left — and nothing is held. The request itself then comes with the
pre-authorization's id instead of a key; `Authorizing.authorize(preauthorization=...)` prices its
body, decides again under the rules' locks with the exact estimate, holds it, and marks the
pre-authorization used, all in one database transaction (`use_preauthorization`). So an id
authorizes one request at most, for the agent and endpoint it was made for, until its TTL (the
hold TTL) runs out; closing it unused (the SDK's `complete`) cancels it.

The caller's own reports — its outcome, response facts and added facts — are kept beside the
pre-authorization and never move money: what the request cost is its transaction's.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, or_, select, update

from pricing import Quote
from pricing.errors import ModelNotFound
from pricing.money import NANO, ZERO

from ..errors import Forbidden, InvalidRequest, NotFound
from ..records import AgentStatus, Denial, PreAuthorization
from ..store.db import reading, writing
from ..store.models import pre_authorizations
from ..store.queries import find_agent, load_transaction
from ..validation import validate_agent_name
from .decision import Deciding
from .requests import without_secrets

ID_PREFIX = "pa_"
MAX_ID = 64  #: the id column's width
#: The most a caller may store beside a pre-authorization: its request facts, its response
#: facts, each fact it adds (JSON text), and how many facts it may add.
MAX_DOC = 16_384
MAX_FACTS = 100
OUTCOMES = ("success", "error")


def new_preauthorization_id() -> str:
    """An opaque id of 192 random bits (`pa_` + 32 URL-safe characters)."""
    return ID_PREFIX + secrets.token_urlsafe(24)


def check_preauthorization_id(value: Any) -> str:
    """The id, if it could be one (a short ASCII string); InvalidRequest otherwise."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID or not value.isascii() or not value.isprintable():
        raise InvalidRequest(f"transaction id: 1–{MAX_ID} printable ASCII characters", field="id")
    return value


def probe_quote(entry: Any, book_version: str) -> Quote:
    """The smallest request an endpoint could price: one nano-USD. Checked against the rules, it
    fails exactly what no real request could pass: a spend limit with no room left, a cap of zero,
    and everything a price does not change (allowlists, rate limits, a paused agent)."""
    return Quote(
        entry.endpoint, entry.model, entry.operation, 1, 0, 0, ZERO, ZERO, entry.rate, NANO, "USD", book_version
    )


def _doc(value: Any, field: str) -> str:
    text = json.dumps(without_secrets(value), default=str, separators=(",", ":"))
    if len(text) > MAX_DOC:
        raise InvalidRequest(f"{field}: at most {MAX_DOC} characters of JSON (got {len(text)})", field=field)
    return text


def use_preauthorization(
    conn: Connection, pre_id: str, tx_id: int, agent_id: int, endpoint: str, now: datetime
) -> None:
    """Mark the pre-authorization used by transaction `tx_id`, in the caller's database transaction;
    Forbidden (the caller rolls back: nothing written) unless it is the agent's, for `endpoint`,
    authorized, unused, not closed and not expired. One conditional UPDATE: two requests racing
    with one id cannot both use it (PostgreSQL re-checks the WHERE on the row a winner changed)."""
    p = pre_authorizations.c
    used = conn.execute(
        update(pre_authorizations)
        .where(
            p.id == pre_id,
            p.agent_id == agent_id,
            p.endpoint == endpoint,
            p.decision == "authorized",
            p.used_at.is_(None),
            p.closed_at.is_(None),
            p.expires_at > now,
        )
        .values(used_at=now, transaction_id=tx_id)
    ).rowcount
    if used != 1:
        row = conn.execute(select(pre_authorizations).where(p.id == pre_id)).first()
        raise Forbidden(_why_refused(row, agent_id, endpoint, now), id=pre_id)


def _why_refused(row: Any, agent_id: int, endpoint: str, now: datetime) -> str:
    if row is None or row.agent_id != agent_id:
        return "unknown transaction id"
    if row.decision != "authorized":
        return f"transaction {row.id} was denied: {row.decline_reason}"
    if row.used_at is not None:
        return f"transaction {row.id} was already used (one request per authorization)"
    if row.closed_at is not None:
        return f"transaction {row.id} was completed without a request: it authorizes nothing now"
    if row.expires_at <= now:
        return f"transaction {row.id} expired at {row.expires_at.isoformat()}: authorize again"
    return f"transaction {row.id} authorizes {row.endpoint!r}, not {endpoint!r}"


class PreAuthorizing(Deciding):
    """Pre-authorizations: decided without a body, used once, closed by their caller."""

    def preauthorize(
        self,
        agent_name: str,
        endpoint: str | None,
        *,
        request: Mapping[str, Any],
        service_key_id: int | None = None,
        decline: str | None = None,
    ) -> PreAuthorization:
        """Decide, without a price, whether `agent_name` may call `endpoint`, and record the answer
        (authorized until the hold TTL runs out, or denied with a reason). Nothing is held.

        `decline` denies it outright with that reason (the caller found the request is not one this
        ledger governs, e.g. no run endpoint). An unknown agent is created on first use when that is
        on, else denied. `request` is what the caller said of its request (stored without secrets)."""
        validate_agent_name(agent_name)
        request_json = _doc(request, "requestFacts")
        now = self.clock()
        denials: list[Denial] = []
        if decline is not None:
            denials.append(Denial(None, "not-governed", decline))
        elif endpoint is None:
            denials.append(Denial(None, "not-governed", "the request names no endpoint of this gateway"))
        else:
            try:
                entry = self.book.endpoint(endpoint)
            except ModelNotFound as exc:
                denials.append(Denial(None, "model_not_found", exc.message))
            else:
                with reading(self.engine) as conn:
                    known = find_agent(conn, agent_name) is not None
                if known or self.auto_create:
                    denials += self.check(agent_name, probe_quote(entry, self.book.version)).denials
                else:
                    denials.append(
                        Denial(
                            None, "unknown-agent", f"unknown agent {agent_name!r} (agents are not created on first use)"
                        )
                    )
        pre_id = new_preauthorization_id()
        with writing(self.engine) as conn:
            agent = find_agent(conn, agent_name)
            if agent is None and self.auto_create and not any(d.type == "unknown-agent" for d in denials):
                agent = self._create_agent_on_first_use(conn, agent_name, now)
            if agent is not None and agent.status == AgentStatus.paused and not denials:
                denials.append(Denial(None, "agent-paused", f"agent {agent_name!r} is paused"))
            reason = "; ".join(f"{d.rule}: {d.reason}" if d.rule else d.reason for d in denials) or None
            conn.execute(
                pre_authorizations.insert().values(
                    id=pre_id,
                    agent_id=agent.id if agent else None,
                    agent_name=agent_name,
                    service_key_id=service_key_id,
                    endpoint=(endpoint or "")[:200],
                    decision="denied" if denials else "authorized",
                    decline_reason=reason,
                    denial_json=json.dumps([d.to_json() for d in denials]) if denials else None,
                    request_json=request_json,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.hold_ttl),
                )
            )
            return self._preauthorization(conn, pre_id)

    def preauthorization(self, pre_id: str) -> PreAuthorization:
        """One pre-authorization, with its transaction (cost lines and facts) once used. NotFound."""
        check_preauthorization_id(pre_id)
        with reading(self.engine) as conn:
            return self._preauthorization(conn, pre_id)

    def preauthorizations(
        self, *, agent: str | None = None, service_key_id: int | None = None, limit: int = 100, offset: int = 0
    ) -> list[PreAuthorization]:
        """Pre-authorizations newest first, of an agent's and/or asked through a service key."""
        if not 1 <= limit <= 1000 or not 0 <= offset <= 100_000:
            raise InvalidRequest("limit: 1–1000 and offset: 0–100000", field="limit")
        p = pre_authorizations.c
        scope = []
        if agent is not None:
            scope.append(p.agent_name == agent)
        if service_key_id is not None:
            scope.append(p.service_key_id == service_key_id)
        with reading(self.engine) as conn:
            ids = (
                conn.execute(
                    select(p.id)
                    .where(or_(*scope) if scope else p.id.is_not(None))
                    .order_by(p.created_at.desc(), p.id)
                    .limit(limit)
                    .offset(offset)
                )
                .scalars()
                .all()
            )
            return [self._preauthorization(conn, i) for i in ids]

    def close_preauthorization(
        self, pre_id: str, outcome: str, response_facts: Any = None
    ) -> tuple[PreAuthorization, bool]:
        """The caller is done: record its outcome and response facts (the first report is kept: a
        retry changes nothing), and cancel the pre-authorization if it was never used. Never moves
        money. Returns (the pre-authorization, whether this call recorded the report)."""
        check_preauthorization_id(pre_id)
        if outcome not in OUTCOMES:
            raise InvalidRequest(f"outcome: one of {', '.join(OUTCOMES)}", field="outcome")
        response_json = None if response_facts is None else _doc(response_facts, "responseFacts")
        now = self.clock()
        p = pre_authorizations.c
        with writing(self.engine) as conn:
            self._row(conn, pre_id)
            recorded = conn.execute(
                update(pre_authorizations)
                .where(p.id == pre_id, p.outcome.is_(None))
                .values(outcome=outcome, response_json=response_json, closed_at=now)
            ).rowcount
            return self._preauthorization(conn, pre_id), recorded == 1

    def add_preauthorization_facts(self, pre_id: str, facts: Any) -> tuple[PreAuthorization, int]:
        """Keep a caller's facts (any JSON, bounded) beside the pre-authorization; (it, the fact's index)."""
        check_preauthorization_id(pre_id)
        text = _doc(facts, "facts")
        with writing(self.engine) as conn:
            row = self._row(conn, pre_id, lock=True)
            kept: list[Any] = json.loads(row.facts_json) if row.facts_json else []
            if len(kept) >= MAX_FACTS:
                raise InvalidRequest(f"facts: at most {MAX_FACTS} per transaction", field="facts")
            kept.append(json.loads(text))
            conn.execute(
                update(pre_authorizations)
                .where(pre_authorizations.c.id == pre_id)
                .values(facts_json=json.dumps(kept, separators=(",", ":")))
            )
            return self._preauthorization(conn, pre_id), len(kept) - 1

    def _row(self, conn: Connection, pre_id: str, *, lock: bool = False) -> Any:
        query = select(pre_authorizations).where(pre_authorizations.c.id == pre_id)
        row = conn.execute(query.with_for_update() if lock and self._pg else query).first()
        if row is None:
            raise NotFound(f"no transaction {pre_id}", id=pre_id)
        return row

    def _preauthorization(self, conn: Connection, pre_id: str) -> PreAuthorization:
        row = self._row(conn, pre_id)
        tx = load_transaction(conn, row.transaction_id, detail=True) if row.transaction_id is not None else None
        denials: Sequence[Any] = json.loads(row.denial_json) if row.denial_json else ()
        return PreAuthorization(
            id=row.id,
            agent=row.agent_name,
            endpoint=row.endpoint,
            decision=row.decision,
            decline_reason=row.decline_reason,
            denials=tuple(Denial.from_json(d) for d in denials),
            request=json.loads(row.request_json),
            created_at=row.created_at,
            expires_at=row.expires_at,
            used_at=row.used_at,
            closed_at=row.closed_at,
            outcome=row.outcome,
            response_facts=json.loads(row.response_json) if row.response_json else None,
            facts=tuple(json.loads(row.facts_json)) if row.facts_json else (),
            service_key_id=row.service_key_id,
            transaction=tx,
        )
