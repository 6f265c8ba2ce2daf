"""The seed platform's API for agents: price, check, run, and holds for self-forwarding callers.

POST /v1/price/run/{endpoint}            the quote (no key: prices are public)
POST /v1/check/{endpoint}                the rule decision, writes nothing
POST /v1/run/{endpoint}                  a governed run: the upstream's answer, body and status as it
                                         gave them; the transaction and costs in headers. With
                                         `X-Sapiom-Transaction-Id` (no key): the seed SDK's service call
POST /v1/transactions                    a hold (201; an idempotent retry 200)
GET  /v1/transactions[/{id}]             an agent's own transactions (admin: everyone's)
POST /v1/transactions/{id}/complete      settle: {"actual"} or {"response"} or the estimate
POST /v1/transactions/{id}/void          release the hold
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse

from ledger.clock import EARLIEST, LATEST, within_calendar
from ledger.errors import InvalidRequest, NotFound
from ledger.records import Transaction

from .auth import AgentHeader, AgentIdentity, AuthorizationHeader, Caller, caller, gateway
from .errors import transaction_headers
from .identity import Identity
from .routing import GatewayRoute
from .schemas import (
    AuthorizeIn,
    CompleteIn,
    DecisionOut,
    ErrorBody,
    FalRequest,
    QuoteOut,
    TransactionOut,
    TransactionPage,
    VoidIn,
)
from .service import Gateway

router = APIRouter(prefix="/v1", route_class=GatewayRoute, tags=["agents"])

GW = Annotated[Gateway, Depends(gateway)]
RequestBody = Annotated[FalRequest, Body(description="the FAL request body (JSON object)")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="a retry with the same key returns the first result",
    ),
]
TxId = Annotated[int, Path(ge=1, le=2**63 - 1)]
MAX_PAGE = 1000
MAX_OFFSET = 100_000


def transaction_response(tx: Transaction, *, status_code: int = 200, doc: Any = None) -> JSONResponse:
    return JSONResponse(tx.to_json() if doc is None else doc, status_code=status_code, headers=transaction_headers(tx))


@router.post("/price/run/{endpoint:path}", response_model=QuoteOut, summary="Price a request (no key)")
async def price(endpoint: str, body: RequestBody, gw: GW) -> JSONResponse:
    quote = await gw.quote(endpoint, body)
    return JSONResponse(quote.to_json())


@router.post("/check/{endpoint:path}", response_model=DecisionOut, summary="Pre-flight rule decision")
async def check(endpoint: str, body: RequestBody, identity: AgentIdentity, gw: GW) -> JSONResponse:
    decision = await gw.check(identity.require_agent(), endpoint, body)
    return JSONResponse(decision.to_json())


SapiomTransaction = Annotated[
    str | None,
    Header(
        alias="X-Sapiom-Transaction-Id",
        max_length=10_000,
        description="the seed SDK's authorization (POST /sapiom/v1/transactions), instead of a key: used once",
    ),
]


@router.post(
    "/run/{endpoint:path}",
    response_model=dict[str, Any],
    responses={403: {"model": ErrorBody, "description": "a transaction id used, expired or for another request"}},
    summary="A governed run: the upstream's answer, unchanged",
)
async def run(
    endpoint: str,
    body: RequestBody,
    gw: GW,
    request: Request,
    authorization: AuthorizationHeader = None,
    x_pixelgov_agent: AgentHeader = None,
    sapiom_transaction: SapiomTransaction = None,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    if sapiom_transaction is not None:
        if authorization is not None:
            raise InvalidRequest(
                "give an API key or X-Sapiom-Transaction-Id, not both", field="X-Sapiom-Transaction-Id"
            )
        outcome = await gw.run_preauthorized(sapiom_transaction, endpoint, body)
    else:
        identity = await caller(request, authorization, x_pixelgov_agent)
        outcome = await gw.run(identity.require_agent(), endpoint, body, idempotency_key=idempotency_key)
    tx = outcome.transaction
    request.state.tx = tx.id
    request.state.agent = tx.agent
    response = JSONResponse(outcome.result, status_code=tx.upstream_status or 200, headers=transaction_headers(tx))
    if outcome.replayed:
        response.headers["X-Pixelgov-Replayed"] = "true"
    return response


@router.post(
    "/transactions",
    response_model=TransactionOut,
    status_code=201,
    summary="Authorize a hold for a caller that forwards by itself",
)
async def authorize(
    payload: AuthorizeIn, identity: AgentIdentity, gw: GW, request: Request, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    tx, replayed = await gw.authorize(
        identity.require_agent(),
        payload.endpoint,
        payload.request,
        idempotency_key=payload.idempotency_key or idempotency_key,
    )
    request.state.tx = tx.id
    return transaction_response(tx, status_code=200 if replayed else 201)


@router.get("/transactions", response_model=TransactionPage, summary="Transactions, newest first")
async def transactions(
    identity: Caller,
    gw: GW,
    agent: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
    since: Annotated[datetime | None, Query()] = None,
    until: Annotated[datetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JSONResponse:
    if identity.kind != "admin":
        agent = identity.require_agent()
    rows = await gw.db(
        gw.ledger.governor.transactions,
        agent=agent,
        status=status,
        since=_utc(since),
        until=_utc(until),
        limit=offset + limit + 1,
    )
    page = rows[offset : offset + limit]
    return JSONResponse(
        {
            "transactions": [tx.to_json() for tx in page],
            "limit": limit,
            "offset": offset,
            "has_more": len(rows) > offset + limit,
        }
    )


def _utc(ts: datetime | None) -> datetime | None:
    """A time filter as the ledger takes it: aware, UTC when no zone is given (as the CLI reads it),
    between 1970 and 2200 (InvalidRequest otherwise)."""
    if ts is None:
        return None
    ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    if not within_calendar(ts):
        raise InvalidRequest(
            f"time: {ts.isoformat()} is not between {EARLIEST.year} and {LATEST.year}", field="since/until"
        )
    return ts


async def own_transaction(gw: Gateway, identity: Identity, tx_id: int, *, detail: bool = False) -> Transaction:
    tx = await gw.db(gw.ledger.governor.transaction, tx_id, detail=detail)
    if not identity.owns(tx.agent):
        raise NotFound(f"no transaction {tx_id}", id=tx_id)  # another agent's: as if it did not exist
    return tx


@router.get("/transactions/{tx_id}", response_model=TransactionOut, summary="One transaction, with lines and facts")
async def transaction(tx_id: TxId, identity: Caller, gw: GW) -> JSONResponse:
    return transaction_response(await own_transaction(gw, identity, tx_id, detail=True))


@router.post("/transactions/{tx_id}/complete", response_model=TransactionOut, summary="Settle a hold")
async def complete(
    tx_id: TxId, identity: Caller, gw: GW, payload: Annotated[CompleteIn | None, Body()] = None
) -> JSONResponse:
    await own_transaction(gw, identity, tx_id)
    payload = payload or CompleteIn()
    tx = await gw.db(
        gw.ledger.governor.complete,
        tx_id,
        actual=payload.actual,
        response=payload.response,
        by_agent=identity.is_agent_side,
    )
    gw.metrics.observe_transaction(tx)
    return transaction_response(tx)


@router.post("/transactions/{tx_id}/void", response_model=TransactionOut, summary="Release a hold")
async def void(tx_id: TxId, identity: Caller, gw: GW, payload: Annotated[VoidIn | None, Body()] = None) -> JSONResponse:
    await own_transaction(gw, identity, tx_id)
    tx = await gw.db(gw.ledger.governor.void, tx_id, (payload or VoidIn()).reason, by_agent=identity.is_agent_side)
    return transaction_response(tx)
