"""Settlement: a transaction completed at its actual cost, which is priced from the upstream's
response as its estimate was from the request, with the facts that say where it came from.

The pricing of an answer is one place, used by `Governor.complete(response=...)` (a caller that forwarded
by itself) and by a governed run (`ledger.forward.runner`). A recorded request is re-priced
from the parameters the ledger stored, which hold an upscale's input size as it was priced,
so settling never reads an image again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from pricing import ActualCost, PriceBook, Quote, actual_cost, quote
from pricing.money import MAX_USD, from_nano, to_nano, usd_str

from ..errors import InvalidRequest, NotFound
from ..records import Transaction, TxStatus
from ..store.db import writing
from ..store.hotpath import Driver
from ..store.models import alerts, transactions
from ..store.queries import load_transaction, transaction_record
from ..store.spend import counted, movement
from .transitions import Transitions, parse_amount, storable


def cost_facts(cost: ActualCost) -> dict[str, Any]:
    """The facts that say where an actual cost came from: `actual_source` and `output_sizes`."""
    facts: dict[str, Any] = {
        "actual_source": "response sizes" if cost.sizes_known else "estimate (the response has no image sizes)"
    }
    if cost.sizes:
        facts["output_sizes"] = ",".join(f"{w}x{h}" for w, h in cost.sizes)
    return facts


def anomaly(book: PriceBook, estimate: Quote, cost: ActualCost) -> str | None:
    """Why an answer's cost cannot be believed, or None. An answer is bounded by what its request
    could produce: no more images than it asked for, none beyond the price book's limits, and an
    amount the ledger can hold. Outside those bounds the answer is not the request's cost."""
    if len(cost.sizes) > estimate.images:
        return f"the answer has {len(cost.sizes)} images for a request of {estimate.images}"
    for w, h in cost.sizes:
        if w > book.max_side or h > book.max_side:
            return f"an image of {w}x{h} is beyond the price book's largest side ({book.max_side})"
        too_large = book.area(w, h).too_large
        if too_large:
            return f"an image of {w}x{h} is beyond the price book's limits ({too_large})"
    if cost.amount > MAX_USD:
        return f"an actual cost of {usd_str(cost.amount)} USD is more than the ledger can hold"
    return None


def answer_terms(
    book: PriceBook, estimate: Quote, estimated: Decimal, body: Any
) -> tuple[Decimal, dict[str, Any], str | None]:
    """(the amount to settle at, the facts to record, the anomaly or None) for an upstream answer to
    a request priced `estimate` and held at `estimated`. An answer with sizes settles at their price;
    one without, at the estimate; one that cannot be believed or priced (`anomaly`) at the estimate,
    its reported sizes kept as facts: it never books more than the request could cost."""
    try:
        cost = actual_cost(estimate, body)
        why = anomaly(book, estimate, cost)
    except Exception as exc:  # noqa: BLE001 - a paid answer is recorded whatever it holds
        cost, why = None, f"the response could not be priced ({type(exc).__name__})"
    if why is None and cost is not None:
        return (cost.amount if cost.sizes_known else estimated), cost_facts(cost), None
    facts: dict[str, Any] = {"actual_source": "estimate (anomalous response)", "anomaly": why}
    reported = reported_sizes(body)
    if reported:
        facts["reported_sizes"] = reported
    return estimated, facts, why


def anomaly_alert(tx_id: int, why: str | None) -> str | None:
    """The alert an anomalous answer raises (None for a believable one)."""
    return None if why is None else f"transaction {tx_id}: anomalous upstream answer ({why}); settled at the estimate"


def reported_sizes(body: Any) -> str | None:
    """The sizes an answer reported, as text (bounded), whatever their type."""
    if not isinstance(body, Mapping):
        return None
    images = body.get("images")
    items: list[Any] = images if isinstance(images, list) else [body.get("image")]
    sizes = [f"{i.get('width')}x{i.get('height')}" for i in items[:1000] if isinstance(i, Mapping)]
    return ",".join(sizes)[:500] if sizes else None


def actual_from_response(
    tx: Transaction, request: Mapping[str, Any], response: Any, *, book: PriceBook
) -> tuple[Decimal, dict[str, Any], str | None]:
    """(actual cost, facts, anomaly or None) for a recorded transaction from the upstream's response,
    priced like its estimate (from `request`, the parameters the ledger stored; see `answer_terms`).
    InvalidRequest if the response is not a JSON object."""
    if not isinstance(response, Mapping):
        raise InvalidRequest("response: must be a JSON object", field="response")
    estimate = quote(tx.endpoint, request, book=book)
    amount, facts, why = answer_terms(book, estimate, tx.estimated_cost, response)
    if estimate.amount != tx.estimated_cost:
        facts["repriced_estimate"] = usd_str(estimate.amount)
    return amount, facts, why


class Settling(Transitions):
    """Settlement at an actual cost, and the notes added to a transaction afterwards."""

    def complete(
        self,
        tx_id: int,
        *,
        actual: Decimal | str | None = None,
        response: Any = None,
        by_agent: bool = False,
    ) -> Transaction:
        """Settle a pending (or unknown) transaction, choosing its actual cost: `actual` (USD) when
        given; else priced from an upstream `response`'s image sizes (the estimate when the response
        has none); else the estimate. Records where the actual came from as the `actual_source` fact.

        `by_agent`: the agent itself asks: it may complete only a hold it forwards by itself (one
        pixelgov forwarded is SettledByGateway, 409: pixelgov settles it from the upstream's answer).

        Raises InvalidRequest (both given, a bad amount or response), NotFound, Conflict."""
        if actual is not None and response is not None:
            raise InvalidRequest("actual: give an actual cost or a response, not both", field="actual")
        facts: dict[str, Any] = {}
        alert = None
        if actual is not None:
            amount = parse_amount(actual, "actual")
            facts["actual_source"] = "given"
        else:
            tx = self.transaction(tx_id, detail=response is not None)
            if response is not None:
                assert tx.detail is not None
                amount, facts, why = actual_from_response(tx, tx.detail.request, response, book=self.book)
                alert = anomaly_alert(tx_id, why)
            else:
                amount = tx.estimated_cost
                facts["actual_source"] = "estimate (no actual given)"
        return self.settle(tx_id, amount, facts=facts, by_agent=by_agent, alert=alert)

    def settle(
        self,
        tx_id: int,
        actual: Decimal,
        *,
        facts: Mapping[str, Any] | None = None,
        upstream_request_id: str | None = None,
        upstream_status: int | None = None,
        response: Any = None,
        allow_expired: bool = False,
        alert: str | None = None,
        by_agent: bool = False,
    ) -> Transaction:
        """Complete a transaction at its `actual` cost (USD): the hold is released and the actual
        counted as spent; an actual above the estimate is recorded as a `variance` fact. `alert`
        records an alert (kind "anomaly") in the same database transaction.

        Settles `pending` and `unknown` transactions (and `expired` ones with `allow_expired`: a run
        whose answer came after its hold expired). Raises InvalidRequest, NotFound, Conflict."""
        if actual < 0:
            raise InvalidRequest("actual: must not be negative", field="actual")
        storable(actual, "actual")
        allowed = (TxStatus.pending, TxStatus.unknown, *((TxStatus.expired,) if allow_expired else ()))
        now = self.clock()
        with writing(self.engine) as conn:
            d = Driver(conn)
            row = self._lock_tx(d, tx_id, allowed, "complete", by_agent=by_agent)
            est = row.estimated_cost
            notes = [("variance", usd_str(actual - est))] if actual > est else []
            notes += (facts or {}).items()
            moved = movement(counted(row.status, est), counted(TxStatus.completed, est, actual))
            row = self._set_status(
                d,
                row,
                TxStatus.completed,
                now,
                line=("actual", actual),
                notes=notes,
                actual_cost=actual,
                completed_at=now,
                upstream_request_id=upstream_request_id,
                upstream_status=upstream_status,
                response_json=json.dumps(response) if response is not None else None,
            )
            self._move_counters(d, tx_id, moved, locked=self._pg)
            if alert is not None:
                conn.execute(
                    alerts.insert().values(
                        rule_id=None,
                        rule_name="(anomaly)",
                        agent_id=row.agent_id,
                        transaction_id=tx_id,
                        kind="anomaly",
                        dedupe_key=None,
                        message=alert,
                        created_at=now,
                    )
                )
            return transaction_record(row, row.agent_name)

    def add_cost(
        self, tx_id: int, amount: Decimal, *, kind: str = "adjustment", note: str | None = None
    ) -> Transaction:
        """An adjustment (USD, positive or negative) to a completed transaction: a new cost line,
        counted in its budgets as `ledger.store.spend` says (a credit never takes it below zero)."""
        if kind != "adjustment":
            raise InvalidRequest(f"kind: only adjustment cost lines can be added (got {kind!r})", field="kind")
        storable(amount, "amount")
        now = self.clock()
        with writing(self.engine) as conn:
            d = Driver(conn)
            row = self._lock_tx(d, tx_id, (TxStatus.completed,), "adjust")
            before = from_nano(int(d.one(self._sql.adjustments, {"tx_id": tx_id})[0]))  # type: ignore[index]
            storable(before + amount, "amount")
            est, actual = row.estimated_cost, row.actual_cost
            moved = movement(
                counted(TxStatus.completed, est, actual, before),
                counted(TxStatus.completed, est, actual, before + amount),
            )
            self._move_counters(d, tx_id, moved)  # rules before the line: its trigger writes a rollup row
            d.execute(
                self._sql.insert_line,
                {"tx_id": tx_id, "kind": kind, "amount": to_nano(amount), "note": note, "created_at": d.ts(now)},
            )
            return transaction_record(row, row.agent_name)

    def add_fact(self, tx_id: int, key: str, value: Any) -> Transaction:
        """Attach a key/value note (1–100 character key) to any transaction."""
        if not key or len(key) > 100:
            raise InvalidRequest("fact: the key must be 1–100 characters", field="key")
        now = self.clock()
        with writing(self.engine) as conn:
            if conn.execute(select(transactions.c.id).where(transactions.c.id == tx_id)).first() is None:
                raise NotFound(f"no transaction {tx_id}", id=tx_id)
            self._add_facts(Driver(conn), tx_id, {key: value}, now)
            return load_transaction(conn, tx_id)
