"""Ledgers for the report tests, and the recount the reports must agree with.

`LedgerWriter` writes transactions straight into the tables, as the governor writes them
(the row, its estimate / actual / adjustment cost lines, the denial JSON, and the images and
billable megapixels it was priced at), so a test can place any status at any instant.
`recount` reads every row back and totals it in Python, one transaction at a time, through
`ledger.store.spend.counted` — an independent recount of what the reports compute in SQL.
`via_governor` is the one place the report tests call the governor's API.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select

from ledger.records import TxStatus
from ledger.store.models import agents, cost_lines, denial_rollups, facts, spend_rollups, transactions
from ledger.store.spend import COUNTS_REQUEST, HELD_AS, SPENT_AS, counted
from pricing import default_book, quote
from pricing.money import ZERO, to_nano

BODY = {"prompt": "a red fox", "image_size": "landscape_4_3"}
DAY = timedelta(days=1)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


class LedgerWriter:
    """Transactions written straight into a migrated ledger (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.book = default_book()
        self._agents: dict[str, int] = {}

    def clear(self) -> None:
        with self.engine.begin() as conn:
            # The ledger never deletes; a test that starts over empties the rollups its triggers kept too.
            for table in (facts, cost_lines, transactions, agents, spend_rollups, denial_rollups):
                conn.execute(delete(table))
        self._agents.clear()

    def agent(self, name: str) -> int:
        if name not in self._agents:
            with self.engine.begin() as conn:
                found = conn.execute(select(agents.c.id).where(agents.c.name == name)).scalar()
                if found is None:
                    now = utc(2026, 1, 1)
                    found = conn.execute(
                        insert(agents)
                        .values(name=name, status="active", created_at=now, updated_at=now)
                        .returning(agents.c.id)
                    ).scalar_one()
            self._agents[name] = found
        return self._agents[name]

    def add(
        self,
        agent: str = "bot",
        endpoint: str = "fal-ai/flux/dev",
        *,
        at: datetime,
        status: str = "completed",
        body: Mapping[str, Any] | None = None,
        actual: Decimal | None = None,
        adjustments: Sequence[tuple[Decimal, str | None]] = (),
        denied_by: Sequence[str] = ("budget",),
        adjusted_at: datetime | None = None,
    ) -> int:
        """One transaction created at `at`; a completed one costs `actual` (default: its estimate)."""
        q = quote(endpoint, dict(BODY if body is None else body), book=self.book)
        est = q.amount
        if status == TxStatus.completed and actual is None:
            actual = est
        if status != TxStatus.completed:
            actual = None
        denial = None
        if status == TxStatus.denied:
            entries = [{"rule": r, "type": "spend-limit", "reason": f"{r}: over budget"} for r in denied_by]
            denial = json.dumps({**entries[0], "denials": entries})
        agent_id = self.agent(agent)
        with self.engine.begin() as conn:
            tx_id = conn.execute(
                insert(transactions)
                .values(
                    agent_id=agent_id,
                    endpoint=endpoint,
                    model=q.model,
                    operation=q.operation,
                    request_json=json.dumps(dict(BODY if body is None else body)),
                    request_hash="0" * 64,
                    price_book=q.price_book,
                    estimated_cost=est,
                    actual_cost=actual,
                    status=TxStatus(status),
                    denial_json=denial,
                    created_at=at,
                    completed_at=None if status in ("pending", "unknown", "denied") else at + timedelta(seconds=3),
                    images=q.images,
                    billable_mp_nano=to_nano(q.billable_megapixels),
                )
                .returning(transactions.c.id)
            ).scalar_one()
            lines = []
            if status != TxStatus.denied:
                lines.append({"kind": "estimate", "amount": est, "created_at": at})
            if actual is not None:
                lines.append({"kind": "actual", "amount": actual, "created_at": at + timedelta(seconds=3)})
            for amount, note in adjustments:
                lines.append(
                    {
                        "kind": "adjustment",
                        "amount": amount,
                        "note": note,
                        "created_at": adjusted_at or at + timedelta(hours=1),
                    }
                )
            for line in lines:
                conn.execute(insert(cost_lines).values(transaction_id=tx_id, note=line.pop("note", None), **line))
        return tx_id


# --- the recount -------------------------------------------------------------------------------


@dataclass
class Recount:
    """Totals of a set of transactions, summed one transaction at a time (USD, Decimal)."""

    transactions: int = 0
    denials: int = 0
    images: int = 0
    billable_mp: Decimal = ZERO
    estimated: Decimal = ZERO
    actual: Decimal = ZERO
    adjustments: Decimal = ZERO
    held: Decimal = ZERO
    unknown: Decimal = ZERO
    net: Decimal = ZERO
    variance: Decimal = ZERO
    ids: list[int] = field(default_factory=list)

    def add(self, row: Mapping[str, Any], adjustment: Decimal) -> None:
        status = TxStatus(row["status"])
        est, act = row["estimated_cost"], row["actual_cost"]
        c = counted(status, est, act, adjustment)
        self.ids.append(row["id"])
        if status in COUNTS_REQUEST:
            self.transactions += 1
        else:
            self.denials += 1
        if SPENT_AS[status] is not None:
            self.images += row["images"] or 0
            self.billable_mp += Decimal(row["billable_mp_nano"] or 0).scaleb(-9)
        if SPENT_AS[status] is not None or HELD_AS[status] is not None:
            self.estimated += est
        if SPENT_AS[status] == "settled":
            self.actual += act or ZERO
            self.variance += (act or ZERO) - est
        if SPENT_AS[status] == "estimate":
            self.unknown += c.spent
        self.adjustments += adjustment
        self.held += c.held
        self.net += c.spent

    def to_json(self) -> dict[str, Any]:
        """As `Totals.to_json()` writes it."""
        from pricing.money import usd_str

        return {
            "transactions": self.transactions,
            "denials": self.denials,
            "images": self.images,
            **{
                k: usd_str(getattr(self, k))
                for k in ("billable_mp", "estimated", "actual", "adjustments", "held", "unknown", "net", "variance")
            },
        }


def ledger_rows(engine: Engine) -> list[dict[str, Any]]:
    """Every transaction with its agent's name and its summed adjustments."""
    t = transactions.c
    with engine.connect() as conn:
        adjusted = dict(
            conn.execute(
                select(cost_lines.c.transaction_id, func.sum(cost_lines.c.amount))
                .where(cost_lines.c.kind == "adjustment")
                .group_by(cost_lines.c.transaction_id)
            ).all()
        )
        rows = (
            conn.execute(select(transactions, agents.c.name.label("agent")).join(agents, agents.c.id == t.agent_id))
            .mappings()
            .all()
        )
    out = []
    for row in rows:
        doc = dict(row)
        doc["adjustment"] = adjusted.get(row["id"]) or ZERO
        out.append(doc)
    return out


def period_start(period: str, day: date) -> date:
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def label(period: str, ts: datetime) -> str:
    start = period_start(period, ts.date())
    return start.strftime("%Y-%m") if period == "month" else start.isoformat()


def recount(
    engine: Engine,
    by: Sequence[str] = (),
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    where: Callable[[Mapping[str, Any]], bool] | None = None,
) -> dict[tuple[str, ...], Recount]:
    """Totals per key (`by`: agent, model, operation, day, week, month) of the transactions
    created in [since, until) that `where` keeps."""
    out: dict[tuple[str, ...], Recount] = {}
    for row in ledger_rows(engine):
        if (since is not None and row["created_at"] < since) or (until is not None and row["created_at"] >= until):
            continue
        if where is not None and not where(row):
            continue
        key = tuple(label(k, row["created_at"]) if k in ("day", "week", "month") else row[k] for k in by)
        out.setdefault(key, Recount()).add(row, row["adjustment"])
    return out


def total(groups: Mapping[Any, Recount]) -> Recount:
    whole = Recount()
    for group in groups.values():
        for name in (
            "transactions",
            "denials",
            "images",
            "billable_mp",
            "estimated",
            "actual",
            "adjustments",
            "held",
            "unknown",
            "net",
            "variance",
        ):
            setattr(whole, name, getattr(whole, name) + getattr(group, name))
    return whole


# --- through the governor ----------------------------------------------------------------------


def _id(tx: Any) -> int:
    return tx.id if hasattr(tx, "id") else tx["id"]


def via_governor(ledger: Any, clock: Any, script: Iterable[tuple[str, str, str]]) -> dict[str, int]:
    """Run a script of (name, agent, outcome) through the real governor, one request a minute:
    outcome is completed, completed+credit, completed+big-credit, completed+charge, over (an actual
    above the estimate), unknown, failed, voided, pending, expired or denied (needs a rule that
    denies it). Returns the transaction id of each name."""
    gov = ledger.governor
    ids: dict[str, int] = {}
    for name, agent, outcome in script:
        clock.advance(60)
        q = ledger.quote("fal-ai/flux/dev", BODY)
        auth = gov.authorize(agent, q, BODY)
        tx_id = ids[name] = _id(auth.transaction)
        if outcome == "denied":
            assert not auth.allowed
            continue
        assert auth.allowed, outcome
        if outcome.startswith("completed") or outcome == "over":
            gov.settle(tx_id, Decimal("0.02") if outcome == "over" else Decimal("0.0118"))
            extra = {
                "completed+credit": Decimal("-0.005"),
                "completed+big-credit": Decimal("-1"),
                "completed+charge": Decimal("0.003"),
            }.get(outcome)
            if extra is not None:
                gov.add_cost(tx_id, extra, note=outcome)
        elif outcome == "unknown":
            gov.mark_unknown(tx_id, "timeout")
        elif outcome == "failed":
            gov.fail(tx_id, "upstream 500")
        elif outcome == "voided":
            gov.void(tx_id, "never sent")
        elif outcome == "expired":
            clock.advance(1000)
            assert tx_id in gov.expire()
    return ids
