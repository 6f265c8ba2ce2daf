"""The ledger as a FOCUS 1.0 cost-and-usage CSV (the FinOps Open Cost and Usage Specification).

One row per charge, so the data loads into any FinOps tool:

- a **usage** row per transaction that counts as spent (`ledger.store.spend`: completed at its actual
  cost, unknown at its estimate): `BilledCost` is that amount, `ConsumedQuantity` /
  `PricingQuantity` its billable megapixels, `ListUnitPrice` the price book's rate;
- a **credit** (negative) or **adjustment** (positive) row per adjustment line, `BilledCost` the
  line in full. Its `EffectiveCost` is what the line changes in the transaction's spend: a credit
  never takes a transaction below zero, so the `EffectiveCost` of a file always sums to the
  reports' `net`, and its `BilledCost` to actuals + unknown estimates + adjustments.

A charge's `ChargePeriodStart/End` is the UTC hour its transaction was created in (adjustments
belong to their transaction's period, as in every report), its `BillingPeriodStart/End` the UTC
month it was billed in (an adjustment's: the month it was recorded; `ChargeClass` is
`Correction` when that is after its transaction's month). The agent is the `SubAccountId` and
`x_Agent`; the transaction is `x_TransactionId`.

The published validator (`focus-validator` 1.0.0, the one for FOCUS 1.0) still reads a few
columns by their pre-1.0 names; the file carries those too, as extra columns (FOCUS allows
them): `ChargeType` (= `ChargeCategory`), `InvoiceIssuer`, `Provider`, `Publisher`, `ResourceID`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TextIO

from sqlalchemy import BigInteger, Connection, String, select, type_coerce

from pricing import PriceBook
from pricing.errors import ModelNotFound
from pricing.money import ZERO, usd_str

from ..clock import iso
from ..records import TxStatus
from ..store.models import cost_lines, transactions
from ..store.spend import SPENT_AS, counted, sql_spent
from .filters import agent_names

PROVIDER = "fal.ai"
SERVICE_NAME = "fal.ai image generation"
SERVICE_CATEGORY = "AI and Machine Learning"
UNIT = "Megapixels"
BILLING_ACCOUNT = "fal"
#: FOCUS 1.0 columns (mandatory and conditional), then the validator's pre-1.0 names, then ours.
FOCUS_COLUMNS = (
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "SkuId",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
)
VALIDATOR_COLUMNS = ("ChargeType", "InvoiceIssuer", "Provider", "Publisher", "ResourceID")
EXTRA_COLUMNS = (
    "x_Agent",
    "x_TransactionId",
    "x_Status",
    "x_Endpoint",
    "x_Operation",
    "x_Images",
    "x_EstimatedCost",
    "x_PriceBook",
)
COLUMNS = (*FOCUS_COLUMNS, *VALIDATOR_COLUMNS, *EXTRA_COLUMNS)
_SPENT = tuple(s.value for s in TxStatus if SPENT_AS[s] is not None)
_BATCH = 10_000
_RESOURCE_TYPES = {"generate": "Image generation", "transform": "Image transformation", "upscale": "Image upscale"}


@dataclass(frozen=True, slots=True)
class FocusExport:
    """What an export wrote: rows by kind and the sums of its cost columns (USD)."""

    path: str | None
    since: datetime | None
    until: datetime | None
    usage_rows: int
    adjustment_rows: int
    billed_cost: Decimal
    effective_cost: Decimal

    @property
    def rows(self) -> int:
        return self.usage_rows + self.adjustment_rows

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": "FOCUS 1.0",
            "since": iso(self.since),
            "until": iso(self.until),
            "rows": self.rows,
            "usage_rows": self.usage_rows,
            "adjustment_rows": self.adjustment_rows,
            "billed_cost": usd_str(self.billed_cost),
            "effective_cost": usd_str(self.effective_cost),
        }


class _Periods:
    """Charge hours and billing months of stored timestamps, as FOCUS text (cached: rows repeat them)."""

    def __init__(self) -> None:
        self._hours: dict[Any, tuple[str, str, datetime]] = {}
        self._months: dict[tuple[int, int], tuple[str, str]] = {}

    def hour(self, raw: Any) -> tuple[str, str, datetime]:
        """(start, end, start as datetime) of the UTC hour of a stored timestamp (text or naive)."""
        key = raw[:13] if isinstance(raw, str) else raw.replace(minute=0, second=0, microsecond=0)
        found = self._hours.get(key)
        if found is None:
            start = (datetime.strptime(key, "%Y-%m-%d %H") if isinstance(key, str) else key).replace(tzinfo=UTC)
            found = self._hours[key] = (_text(start), _text(start + timedelta(hours=1)), start)
        return found

    def month(self, ts: datetime) -> tuple[str, str]:
        key = (ts.year, ts.month)
        found = self._months.get(key)
        if found is None:
            start = datetime(ts.year, ts.month, 1, tzinfo=UTC)
            after = (start + timedelta(days=32)).replace(day=1)
            found = self._months[key] = (_text(start), _text(after))
        return found


def _text(ts: datetime) -> str:
    return ts.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _usd(nano: int) -> str:
    whole, frac = divmod(abs(nano), 1_000_000_000)
    text = f"{whole}.{frac:09d}".rstrip("0") if frac else str(whole)
    return "-" + text if nano < 0 else text


def write_focus(
    conn: Connection,
    out: TextIO,
    *,
    since: datetime | None,
    until: datetime | None,
    book: PriceBook,
    path: str | None = None,
) -> FocusExport:
    """Write the FOCUS CSV of the transactions created in [since, until) to `out`."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    names = agent_names(conn)
    periods = _Periods()
    rates: dict[tuple[str, str], str] = {}
    usage = adjustments = 0
    billed = effective = 0
    for line, nano in _usage_lines(conn, since, until, names, periods, book, rates):
        out.write(line)
        usage += 1
        billed += nano
        effective += nano
    for fields, billed_nano, effective_usd in _adjustment_rows(conn, since, until, names, periods, book.currency):
        writer.writerow(fields)
        adjustments += 1
        billed += billed_nano
        effective += int(effective_usd.scaleb(9))
    return FocusExport(
        path, since, until, usage, adjustments, Decimal(billed).scaleb(-9), Decimal(effective).scaleb(-9)
    )


def _window(since: datetime | None, until: datetime | None) -> list[Any]:
    t = transactions.c
    where = []
    if since is not None:
        where.append(t.created_at >= since)
    if until is not None:
        where.append(t.created_at < until)
    return where


def _rate(book: PriceBook, rates: dict[tuple[str, str], str], endpoint: str, price_book: str) -> str:
    """The book's USD per megapixel for a transaction priced with this book's version, else empty."""
    key = (endpoint, price_book)
    found = rates.get(key)
    if found is None:
        found = ""
        if price_book == book.version:
            with suppress(ModelNotFound):  # an endpoint this book no longer prices: no list price
                found = usd_str(book.endpoint(endpoint).rate) or ""
        rates[key] = found
    return found


#: The columns of a usage row that change from row to row; the others are rendered once per
#: (agent, endpoint, model, operation, status, price book, images, megapixels).
_PER_ROW = {
    "BilledCost": "cost",
    "ContractedCost": "cost",
    "EffectiveCost": "cost",
    "ListCost": "cost",
    "BillingPeriodEnd": "bill_end",
    "BillingPeriodStart": "bill_start",
    "ChargePeriodEnd": "end",
    "ChargePeriodStart": "start",
    "x_TransactionId": "tx",
    "x_EstimatedCost": "est",
}
_MAX_TEMPLATES = 100_000


def _quote(text: str) -> str:
    """A CSV field as `csv.writer` writes it (QUOTE_MINIMAL)."""
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _template(constant: dict[str, str]) -> str:
    """A usage line with the constant columns rendered and `{slots}` for the per-row ones."""
    fields = [
        "{" + _PER_ROW[c] + "}" if c in _PER_ROW else _quote(constant.get(c, "")).replace("{", "{{").replace("}", "}}")
        for c in COLUMNS
    ]
    return ",".join(fields) + "\n"


def _usage_lines(
    conn: Connection,
    since: datetime | None,
    until: datetime | None,
    names: dict[int, str],
    periods: _Periods,
    book: PriceBook,
    rates: dict[tuple[str, str], str],
) -> Iterator[tuple[str, int]]:
    """(CSV line, billed nano-USD) per transaction counted as spent, in id order."""
    t = transactions.c
    spent = sql_spent(t.status, t.estimated_cost, t.actual_cost, None)
    query = (
        select(
            t.id,
            t.agent_id,
            t.endpoint,
            t.model,
            t.operation,
            type_coerce(t.status, String),
            type_coerce(t.estimated_cost, BigInteger),
            spent,
            type_coerce(t.created_at, String),
            t.images,
            t.billable_mp_nano,
            t.price_book,
        )
        .where(t.status.in_(_SPENT), *_window(since, until))
        .order_by(t.id)
    )
    templates: dict[tuple[Any, ...], str] = {}
    for (
        tx_id,
        agent_id,
        endpoint,
        model,
        operation,
        status,
        est,
        nano,
        created,
        images,
        mp,
        price_book,
    ) in conn.execution_options(yield_per=_BATCH).execute(query):
        key = (agent_id, endpoint, model, operation, status, price_book, images, mp)
        template = templates.get(key)
        if template is None:
            if len(templates) >= _MAX_TEMPLATES:
                templates.clear()
            template = templates[key] = _template(
                _usage_constants(
                    names.get(agent_id, str(agent_id)),
                    endpoint,
                    model,
                    operation,
                    status,
                    price_book,
                    images,
                    mp,
                    _rate(book, rates, endpoint, price_book),
                    book.currency,
                )
            )
        start, end, start_ts = periods.hour(created)
        bill_start, bill_end = periods.month(start_ts)
        nano = int(nano)
        yield (
            template.format(
                cost=_usd(nano),
                bill_end=bill_end,
                bill_start=bill_start,
                end=end,
                start=start,
                tx=tx_id,
                est=_usd(int(est)),
            ),
            nano,
        )


def _usage_constants(
    agent: str,
    endpoint: str,
    model: str,
    operation: str,
    status: str,
    price_book: str,
    images: int | None,
    mp: int | None,
    rate: str,
    currency: str,
) -> dict[str, str]:
    quantity = _usd(int(mp)) if mp is not None else ""
    unit = UNIT if quantity else ""
    return {
        "BillingAccountId": BILLING_ACCOUNT,
        "BillingAccountName": PROVIDER,
        "BillingCurrency": currency,
        "ChargeCategory": "Usage",
        "ChargeDescription": f"{model} {operation}: {images if images is not None else '?'}"
        f" image(s), {quantity or '?'} billable MP",
        "ChargeFrequency": "Usage-Based",
        "ConsumedQuantity": quantity,
        "ConsumedUnit": unit,
        "ContractedUnitPrice": rate,
        "InvoiceIssuerName": PROVIDER,
        "ListUnitPrice": rate,
        "PricingCategory": "Standard",
        "PricingQuantity": quantity,
        "PricingUnit": unit,
        "ProviderName": PROVIDER,
        "PublisherName": PROVIDER,
        "ResourceId": endpoint,
        "ResourceName": endpoint,
        "ResourceType": _RESOURCE_TYPES.get(operation, operation),
        "ServiceCategory": SERVICE_CATEGORY,
        "ServiceName": SERVICE_NAME,
        "SkuId": model,
        "SkuPriceId": f"{price_book}:{model}",
        "SubAccountId": agent,
        "SubAccountName": agent,
        "Tags": json.dumps({"agent": agent, "operation": operation, "status": status}),
        "ChargeType": "Usage",
        "InvoiceIssuer": PROVIDER,
        "Provider": PROVIDER,
        "Publisher": PROVIDER,
        "ResourceID": endpoint,
        "x_Agent": agent,
        "x_Status": status,
        "x_Endpoint": endpoint,
        "x_Operation": operation,
        "x_Images": "" if images is None else str(images),
        "x_PriceBook": price_book,
    }


def _adjustment_rows(
    conn: Connection,
    since: datetime | None,
    until: datetime | None,
    names: dict[int, str],
    periods: _Periods,
    currency: str,
) -> Iterator[tuple[list[Any], int, Decimal]]:
    """Adjustment lines in transaction and line order, each with the change it makes to its
    transaction's spend (`spend.counted` before and after it: the sum over a transaction's lines
    is exactly what its adjustments change)."""
    t, c = transactions.c, cost_lines.c
    query = (
        select(
            c.transaction_id,
            c.amount,
            c.note,
            c.created_at,
            t.agent_id,
            t.endpoint,
            t.model,
            t.operation,
            type_coerce(t.status, String),
            t.estimated_cost,
            t.actual_cost,
            type_coerce(t.created_at, String),
            t.price_book,
        )
        .select_from(cost_lines.join(transactions, t.id == c.transaction_id))
        .where(c.kind == "adjustment", *_window(since, until))
        .order_by(c.transaction_id, c.id)
    )
    running: tuple[int, Decimal] | None = None
    for (
        tx_id,
        amount,
        note,
        recorded,
        agent_id,
        endpoint,
        model,
        operation,
        status,
        est,
        actual,
        created,
        price_book,
    ) in conn.execute(query):
        before = running[1] if running is not None and running[0] == tx_id else ZERO
        running = (tx_id, before + amount)
        change = counted(status, est, actual, before + amount).spent - counted(status, est, actual, before).spent
        agent = names.get(agent_id, str(agent_id))
        start, end, start_ts = periods.hour(created)
        bill_start, bill_end = periods.month(recorded)
        correction = "Correction" if (recorded.year, recorded.month) > (start_ts.year, start_ts.month) else ""
        category = "Credit" if amount < 0 else "Adjustment"
        billed = usd_str(amount)
        description = f"{note or category.lower()} ({model}, transaction {tx_id})"
        tags = json.dumps({"agent": agent, "operation": operation, "status": status})
        yield (
            [
                billed,
                BILLING_ACCOUNT,
                PROVIDER,
                currency,
                bill_end,
                bill_start,
                category,
                correction,
                description,
                "One-Time",
                end,
                start,
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                billed,
                "",
                usd_str(change),
                PROVIDER,
                billed,
                "",
                "",
                "",
                "",
                PROVIDER,
                PROVIDER,
                "",
                "",
                endpoint,
                endpoint,
                _RESOURCE_TYPES.get(operation, ""),
                SERVICE_CATEGORY,
                SERVICE_NAME,
                model,
                f"{price_book}:{model}",
                agent,
                agent,
                tags,
                category,
                PROVIDER,
                PROVIDER,
                PROVIDER,
                endpoint,
                agent,
                tx_id,
                status,
                endpoint,
                operation,
                "",
                usd_str(est),
                price_book,
            ],
            _nano(amount),
            change,
        )


def _nano(amount: Decimal) -> int:
    return int(amount.scaleb(9))
