"""The actual cost of an upstream response, for a transaction already in the ledger."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping

from pricing import actual_cost
from pricing.money import MAX_USD, usd_str

from .errors import InvalidRequest
from .quoting import quote_body

def storable(amount: Decimal, field: str) -> Decimal:
    """`amount`, or InvalidRequest when the ledger could not store it (rather than a driver overflow)."""
    if abs(amount) > MAX_USD:
        raise InvalidRequest(f"{field}: {usd_str(amount)} is above the largest amount the ledger holds "
                             f"({usd_str(MAX_USD)})", field=field)
    return amount


def load_response(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidRequest(f"response: cannot read {path} ({exc.strerror})", field="response") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"response: {path} is not valid JSON ({exc.msg})", field="response") from None


def actual_from_response(tx: Mapping[str, Any], response: Any) -> tuple[Decimal, dict[str, Any]]:
    """(actual cost, facts) for a transaction from the upstream's response, priced like its estimate."""
    if not isinstance(response, Mapping):
        raise InvalidRequest("response: must be a JSON object", field="response")
    estimate = quote_body(tx["endpoint"], tx["request"])
    cost = actual_cost(estimate, response)
    facts: dict[str, Any] = {"actual_source": "response sizes" if cost.sizes_known else
                             "estimate (the response has no image sizes)"}
    if cost.sizes:
        facts["output_sizes"] = ",".join(f"{w}x{h}" for w, h in cost.sizes)
    if usd_str(estimate.amount) != tx["estimated_cost"]:
        facts["repriced_estimate"] = usd_str(estimate.amount)
    amount = cost.amount if cost.sizes_known else Decimal(tx["estimated_cost"])
    return storable(amount, "response"), facts
