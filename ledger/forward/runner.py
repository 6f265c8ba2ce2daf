"""A governed run: authorize → forward → settle, with the ledger right whatever the upstream does.

Shared by the CLI's `run` and the gateway. The order of effects is the promise:
nothing is sent unless a hold was recorded first, and every way the call can end
resolves that hold exactly once (settled, failed, or unknown with the estimate
still counted). A process killed in between leaves a pending hold that
expiry (`Governor.expire`, or the hold TTL, lazily) releases.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn

from pricing import Quote, require_runnable, upstream_body, validate_request
from pricing.money import usd_str

from ..errors import Denied, InProgress, UpstreamError, denial_error
from ..policy.governor import Governor
from ..policy.settlement import answer_terms
from ..records import Authorization, Transaction, TxStatus
from .upstream import AsyncUpstream, NoAnswer, Refused, Upstream, UpstreamFailure, UpstreamResult, check_fal_key


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """A governed run's result: the settled transaction and the upstream's JSON, unchanged
    (replayed from the ledger for an idempotent retry)."""

    transaction: Transaction
    result: Any
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"transaction": self.transaction.to_json(), "result": self.result, "replayed": self.replayed}


def runnable(quote: Quote, body: Mapping[str, Any]) -> None:
    """A run needs everything FAL requires (pricing alone does not): raise InvalidRequest if not."""
    require_runnable(quote.operation, validate_request(quote.operation, body))


def answer_facts(answer: UpstreamResult, cost_facts_: Mapping[str, Any]) -> dict[str, Any]:
    """The facts a settled run records: latency, upstream status, FAL's billable units, sizes."""
    facts: dict[str, Any] = {"latency_ms": answer.latency_ms, "upstream_status": answer.status, **cost_facts_}
    if answer.billable_units is not None:
        facts["x-fal-billable-units"] = answer.billable_units
    return facts


def run_governed(
    gov: Governor,
    upstream: Upstream,
    *,
    agent: str,
    quote: Quote,
    body: Mapping[str, Any],
    fal_key: str,
    idempotency_key: str | None = None,
    after_authorize: Callable[[Authorization], None] | None = None,
    forwarder: str = "run",
) -> RunOutcome:
    """Authorize, forward and settle one request. Raises Denied, UpstreamError, InProgress or
    InvalidRequest.

    Whatever happens after the hold is written — an upstream failure, a bug, an interrupt — the
    transaction ends in a documented state before the exception leaves: `failed` when nothing
    was sent, `unknown` when the request may have been served (its estimate stays counted)."""
    started = begin(
        gov,
        agent=agent,
        quote=quote,
        body=body,
        fal_key=fal_key,
        idempotency_key=idempotency_key,
        after_authorize=after_authorize,
        forwarder=forwarder,
    )
    if isinstance(started, RunOutcome):
        return started
    tx_id, stage = started.transaction.id, "while sending"
    try:
        try:
            answer = upstream.call(quote.endpoint, upstream_body(body), fal_key)
        except UpstreamFailure as failure:
            conclude_failure(gov, tx_id, quote, failure)
        stage = "after the answer"
        return conclude(gov, tx_id, quote, answer)
    except (UpstreamError, Denied):
        raise
    except BaseException as exc:
        interrupted(gov, tx_id, stage, exc)
        raise


async def run_governed_async(
    gov: Governor,
    upstream: AsyncUpstream,
    *,
    agent: str,
    quote: Quote,
    body: Mapping[str, Any],
    fal_key: str,
    idempotency_key: str | None = None,
    in_thread: Callable[..., Awaitable[Any]] | None = None,
    preauthorization: str | None = None,
    forwarder: str = "gateway",
) -> RunOutcome:
    """`run_governed` for an event loop: the ledger's short transactions run through `in_thread`
    (default `asyncio.to_thread`; a server passes its bounded pool), the upstream call is awaited,
    so a slow answer holds no thread. The same steps and the same guarantees."""
    import asyncio

    run = in_thread or asyncio.to_thread
    started = await run(
        partial(
            begin,
            gov,
            agent=agent,
            quote=quote,
            body=body,
            fal_key=fal_key,
            idempotency_key=idempotency_key,
            preauthorization=preauthorization,
            forwarder=forwarder,
        )
    )
    if isinstance(started, RunOutcome):
        return started
    tx_id, stage = started.transaction.id, "while sending"
    try:
        try:
            answer = await upstream.call(quote.endpoint, upstream_body(body), fal_key)
        except UpstreamFailure as failure:
            await run(partial(conclude_failure, gov, tx_id, quote, failure))
        stage = "after the answer"
        outcome: RunOutcome = await run(partial(conclude, gov, tx_id, quote, answer))
        return outcome
    except (UpstreamError, Denied):
        raise
    except BaseException as exc:
        # An interrupt (a cancelled request, a shutdown) still ends the transaction.
        await asyncio.shield(run(partial(interrupted, gov, tx_id, stage, exc)))
        raise


def begin(
    gov: Governor,
    *,
    agent: str,
    quote: Quote,
    body: Mapping[str, Any],
    fal_key: str,
    idempotency_key: str | None = None,
    after_authorize: Callable[[Authorization], None] | None = None,
    preauthorization: str | None = None,
    forwarder: str = "run",
) -> Authorization | RunOutcome:
    """A run's first step: check the request can run, authorize (the hold). Returns the pending
    authorization to forward, or the replayed outcome of an idempotent retry; raises Denied,
    InProgress, UpstreamError (a replayed failure) or InvalidRequest. An exception in
    `after_authorize` fails the transaction (nothing was sent). `preauthorization`: the id of a
    pre-authorization this run uses (Forbidden, nothing written, if it may not). `forwarder`: who
    sends it ("run" or "gateway"): pixelgov alone settles it."""
    runnable(quote, body)
    check_fal_key(fal_key)
    auth = gov.authorize(
        agent,
        quote,
        body,
        idempotency_key=idempotency_key,
        preauthorization=preauthorization,
        forwarder=forwarder,
    )
    tx = auth.transaction
    if auth.replayed:
        return _replay(gov, tx, agent, idempotency_key)
    try:
        if after_authorize:
            after_authorize(auth)
    except BaseException as exc:
        if auth.allowed:
            interrupted(gov, tx.id, "before sending", exc)
        raise
    if not auth.allowed:
        raise denial_error(tx, tx.denials, agent)
    return auth


def conclude_failure(gov: Governor, tx_id: int, quote: Quote, failure: UpstreamFailure) -> NoReturn:
    """Record an upstream failure by what it means for money and raise UpstreamError: `failed`
    (unreachable or refused: nothing spent) or `unknown` (no answer: the estimate stays counted)."""
    if isinstance(failure, Refused):
        done = gov.fail(
            tx_id,
            failure.message,
            upstream_status=failure.status,
            facts={"upstream_status": failure.status, "latency_ms": failure.latency_ms},
        )
        raise UpstreamError(
            f"{failure.message}; transaction {tx_id} failed, nothing spent",
            upstream_status=failure.status,
            transaction=done,
        ) from None
    if isinstance(failure, NoAnswer):
        done = gov.mark_unknown(
            tx_id, failure.message, facts={"upstream_outcome": "no answer", "latency_ms": failure.latency_ms}
        )
        raise UpstreamError(
            f"{failure.message}; transaction {tx_id} is unknown: its estimate {usd_str(quote.amount)} stays "
            "counted until it is settled or voided",
            transaction=done,
            reason="unknown",
        ) from None
    done = gov.fail(tx_id, failure.message, facts={"upstream_outcome": "unreachable"})
    raise UpstreamError(f"{failure.message}; transaction {tx_id} failed, nothing spent", transaction=done) from None


def conclude(gov: Governor, tx_id: int, quote: Quote, answer: UpstreamResult) -> RunOutcome:
    """Settle a paid answer (see `_settle`)."""
    return RunOutcome(_settle(gov, tx_id, quote, answer), answer.body)


def _replay(gov: Governor, tx: Transaction, agent: str, key: str | None) -> RunOutcome:
    """An idempotent retry: the first attempt's outcome, failures included; nothing is sent."""
    if tx.status == TxStatus.denied:
        raise denial_error(tx, tx.denials, agent)
    if tx.status == TxStatus.pending:
        raise InProgress(
            f"idempotency key {key!r}: transaction {tx.id} is still in progress; retry later (nothing sent)",
            transaction=tx,
        )
    if tx.status != TxStatus.completed:
        # Never a success without a result.
        raise UpstreamError(
            f"idempotency key {key!r} was already used by transaction {tx.id}, "
            f"which is {tx.status.value}" + (f": {tx.outcome}" if tx.outcome else "") + "; nothing sent",
            upstream_status=tx.upstream_status,
            transaction=tx,
        )
    detail = gov.transaction(tx.id, detail=True).detail
    return RunOutcome(tx, detail.result if detail else None, replayed=True)


def _settle(gov: Governor, tx_id: int, quote: Quote, answer: UpstreamResult) -> Transaction:
    """Settle a paid answer at its actual cost; an answer whose cost cannot be believed (more images
    than asked for, sizes beyond what the price book allows, an amount the ledger cannot hold, a
    response that cannot be priced) is an anomaly: recorded as facts and an alert, settled at the
    estimate — never dropped (`ledger.policy.settlement.answer_terms`)."""
    amount, facts, why = answer_terms(gov.book, quote, quote.amount, answer.body)
    return gov.settle(
        tx_id,
        amount,
        facts=answer_facts(answer, facts),
        upstream_request_id=answer.request_id,
        upstream_status=answer.status,
        response=answer.body,
        allow_expired=True,
        alert=None
        if why is None
        else f"transaction {tx_id}: anomalous upstream answer ({why}); settled at the estimate",
    )


def interrupted(gov: Governor, tx_id: int, stage: str, exc: BaseException) -> None:
    """End a transaction a run could not finish: `failed` if nothing was sent, else `unknown`."""
    reason = f"the run was interrupted {stage} ({type(exc).__name__})"
    try:
        if stage == "before sending":
            gov.fail(tx_id, reason, facts={"upstream_outcome": "not sent"})
        else:
            gov.mark_unknown(tx_id, reason, facts={"upstream_outcome": "interrupted"})
    except Exception:  # noqa: BLE001, S110 - the original error matters more; the hold TTL remains
        pass
