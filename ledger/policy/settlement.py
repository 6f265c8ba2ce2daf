"""The actual cost of an upstream response, and the facts recorded from it.

One place for both, used by `Governor.complete(response=...)` (a caller that forwarded
by itself) and by a governed run (`ledger.forward.runner`). A recorded request is re-priced
from the parameters the ledger stored, which hold an upscale's input size as it was priced,
so settling never reads an image again.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pricing import ActualCost, PriceBook, actual_cost, quote
from pricing.money import usd_str

from ..errors import InvalidRequest
from ..records import Transaction


def cost_facts(cost: ActualCost) -> dict[str, Any]:
    """The facts that say where an actual cost came from: `actual_source` and `output_sizes`."""
    facts: dict[str, Any] = {
        "actual_source": "response sizes" if cost.sizes_known else "estimate (the response has no image sizes)"
    }
    if cost.sizes:
        facts["output_sizes"] = ",".join(f"{w}x{h}" for w, h in cost.sizes)
    return facts


def actual_from_response(
    tx: Transaction, request: Mapping[str, Any], response: Any, *, book: PriceBook
) -> tuple[Decimal, dict[str, Any]]:
    """(actual cost, facts) for a recorded transaction from the upstream's response, priced like
    its estimate (from `request`, the parameters the ledger stored). InvalidRequest if the
    response is not a JSON object."""
    if not isinstance(response, Mapping):
        raise InvalidRequest("response: must be a JSON object", field="response")
    estimate = quote(tx.endpoint, request, book=book)
    cost = actual_cost(estimate, response)
    facts = cost_facts(cost)
    if estimate.amount != tx.estimated_cost:
        facts["repriced_estimate"] = usd_str(estimate.amount)
    amount = cost.amount if cost.sizes_known else tx.estimated_cost
    return amount, facts
