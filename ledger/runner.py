"""A governed run: authorize → forward → settle, with the ledger right whatever the upstream does.

Shared by `pixelgov run` and the gateway. The order of effects is the promise:
nothing is sent unless a hold was recorded first, and every way the call can end
resolves that hold exactly once (settled, failed, or unknown with the estimate
still counted). A process killed in between leaves a pending hold that
`pixelgov tx expire` (or the hold TTL, lazily) releases.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pricing import Quote, actual_cost, require_runnable, upstream_body, validate_request
from pricing.money import usd_str

from .errors import UpstreamError, denial_error
from .governor import Authorization, Governor
from .upstream import NoAnswer, Refused, Unreachable, Upstream, check_fal_key


@dataclass
class RunOutcome:
    transaction: dict[str, Any]
    result: Any  #: the upstream's JSON, unchanged (replayed for an idempotent retry)
    replayed: bool = False
    alerts: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"transaction": self.transaction, "result": self.result, "replayed": self.replayed}


def runnable(quote: Quote, body: Mapping[str, Any]) -> None:
    """A run needs everything FAL requires (pricing alone does not): raise InvalidRequest if not."""
    require_runnable(quote.operation, validate_request(quote.operation, body))


def run_governed(
    gov: Governor, upstream: Upstream, *, agent: str, quote: Quote, body: Mapping[str, Any], fal_key: str,
    idempotency_key: str | None = None, after_authorize: Callable[[Authorization], None] | None = None,
) -> RunOutcome:
    """Authorize, forward and settle one request. Raises Denied, UpstreamError or InvalidRequest."""
    runnable(quote, body)
    check_fal_key(fal_key)
    auth = gov.authorize(agent, quote, body, idempotency_key=idempotency_key)
    if after_authorize:
        after_authorize(auth)
    tx = auth.transaction
    if auth.replayed:
        if tx["status"] == "denied":
            raise denial_error(tx, (tx["denial"] or {}).get("denials", []), agent)
        if tx["status"] != "completed":
            # The earlier attempt's outcome is replayed, failures included: never a success without a result.
            raise UpstreamError(f"idempotency key {idempotency_key!r} was already used by transaction {tx['id']}, "
                                f"which is {tx['status']}" + (f": {tx['outcome']}" if tx.get("outcome") else "")
                                + "; nothing sent", upstream_status=tx.get("upstream_status"), transaction=tx)
        detail = gov.transaction(tx["id"], detail=True)
        return RunOutcome(tx, detail.get("result"), replayed=True)
    if not auth.allowed:
        raise denial_error(tx, tx["denial"]["denials"], agent)
    tx_id = tx["id"]
    try:
        answer = upstream.call(quote.endpoint, upstream_body(body), fal_key)
    except Unreachable as exc:
        done = gov.fail(tx_id, exc.message, facts_={"upstream_outcome": "unreachable"})
        raise UpstreamError(f"{exc.message}; transaction {tx_id} failed, nothing spent", transaction=done) from None
    except Refused as exc:
        done = gov.fail(tx_id, exc.message, upstream_status=exc.status,
                        facts_={"upstream_status": exc.status, "latency_ms": exc.latency_ms})
        raise UpstreamError(f"{exc.message}; transaction {tx_id} failed, nothing spent",
                            upstream_status=exc.status, transaction=done) from None
    except NoAnswer as exc:
        done = gov.mark_unknown(tx_id, exc.message, facts_={"upstream_outcome": "no answer",
                                                            "latency_ms": exc.latency_ms})
        raise UpstreamError(
            f"{exc.message}; transaction {tx_id} is unknown: its estimate {usd_str(quote.amount)} stays counted "
            f"until you settle it (`pixelgov tx complete {tx_id}`) or void it", transaction=done) from None
    cost = actual_cost(quote, answer.body)
    facts: dict[str, Any] = {
        "latency_ms": answer.latency_ms, "upstream_status": answer.status,
        "actual_source": "response sizes" if cost.sizes_known else "estimate (the response has no image sizes)",
    }
    if cost.sizes:
        facts["output_sizes"] = ",".join(f"{w}x{h}" for w, h in cost.sizes)
    if answer.billable_units is not None:
        facts["x-fal-billable-units"] = answer.billable_units
    settled = gov.settle(tx_id, cost.amount, facts_=facts, upstream_request_id=answer.request_id,
                         upstream_status=answer.status, response=answer.body, allow_expired=True)
    return RunOutcome(settled, answer.body, alerts=auth.decision.alerts if auth.decision else None)
