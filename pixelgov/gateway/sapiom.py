"""The Sapiom-compatible transactions API, so the seed platform's SDK (`@sapiom/fetch`) works unchanged.

An SDK user sets `SAPIOM_BASE_URL=https://<gateway>/sapiom` (the SDK adds `/v1`) and
`SAPIOM_API_KEY` to an agent's key, or to a service key with `agentName`/`agentId` in the SDK's
config. Shapes are the SDK's own (`@sapiom/core` 0.3.0, `types/transaction.d.ts`), camelCase:

    POST /sapiom/v1/transactions                  decide without the body: authorized | denied
    GET  /sapiom/v1/transactions                  the caller's own, newest first
    GET  /sapiom/v1/transactions/{id}             one (the SDK polls it while pending)
    POST /sapiom/v1/transactions/{id}/complete    the SDK's outcome and response facts (idempotent)
    GET  /sapiom/v1/transactions/{id}/costs       the costs, from the ledger's cost lines
    POST /sapiom/v1/transactions/{id}/costs       refused (409): the gateway settles what it forwards
    POST /sapiom/v1/transactions/{id}/facts       the caller's facts, kept beside the transaction
    POST /sapiom/v1/transactions/{id}/reauthorize refused (400): x402 payments are not offered

A transaction here is a pre-authorization (`ledger.policy.preauthorize`); its money is the ledger
transaction its one service call (`POST /v1/run/{endpoint}` with `X-Sapiom-Transaction-Id`) made.
Another caller's transaction is 404, the same answer as a missing one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field

from ledger.clock import iso
from ledger.errors import Forbidden, InvalidRequest, NotFound, SettledByGateway
from ledger.records import PreAuthorization, PreAuthState, TxStatus
from pricing.money import usd_str

from .auth import gateway
from .errors import Unauthorized
from .identity import Identity
from .routing import GatewayRoute
from .schemas import Schema
from .service import Gateway

PREFIX = "/sapiom/v1"
RUN_PATH = "/v1/run/"
ORGANIZATION = "pixelgov"
router = APIRouter(prefix=PREFIX, route_class=GatewayRoute, tags=["Sapiom-compatible"])
GW = Annotated[Gateway, Depends(gateway)]
PreId = Annotated[str, Path(min_length=1, max_length=64)]
Short = Annotated[str, Field(max_length=200)]


class Lenient(Schema):
    """The SDK's bodies: its documented fields are validated, others it may add are kept."""

    model_config = ConfigDict(extra="allow")


class RequestFactsRequest(Lenient):
    method: Annotated[str, Field(min_length=1, max_length=16)]
    url: Annotated[str, Field(min_length=1, max_length=4096)]


class RequestFacts(Lenient):
    source: Short
    version: Short
    sdk: dict[str, Any] = Field(default_factory=dict)
    request: RequestFactsRequest


class CreateTransactionIn(Lenient):
    requestFacts: RequestFacts
    agentName: Short | None = None
    agentId: Short | None = None
    serviceName: Short | None = None
    actionName: Short | None = None
    resourceName: Short | None = None
    traceId: Short | None = None
    traceExternalId: Short | None = None
    qualifiers: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class ResponseFacts(Lenient):
    source: Short | None = None
    version: Short | None = None
    facts: dict[str, Any] = Field(default_factory=dict)


class CompleteIn(Lenient):
    outcome: Annotated[str, Field(pattern="^(success|error)$")]
    responseFacts: ResponseFacts | None = None


# --- who is asking ------------------------------------------------------------------------------


async def sapiom_caller(
    request: Request, x_api_key: Annotated[str | None, Header(alias="x-api-key", max_length=512)] = None
) -> Identity:
    """`x-api-key`: an agent's key, a service key (the agent named per transaction) or the admin token."""
    if not x_api_key or not x_api_key.strip():
        raise Unauthorized("missing API key: send x-api-key: <your key>")
    identity = await gateway(request).identify(x_api_key.strip(), None)
    request.state.agent = identity.agent
    return identity


Caller = Annotated[Identity, Depends(sapiom_caller)]


def owns(identity: Identity, pre: PreAuthorization) -> bool:
    """An agent's key sees its agent's transactions; a service key those asked through it; the admin all."""
    if identity.kind == "service":
        return pre.service_key_id == identity.key_id
    return identity.owns(pre.agent)


async def own(gw: Gateway, identity: Identity, pre_id: str) -> PreAuthorization:
    try:
        pre = await gw.db(gw.ledger.governor.preauthorization, pre_id)
    except InvalidRequest:
        pre = None
    if pre is None or not owns(identity, pre):
        raise NotFound(f"no transaction {pre_id}", id=pre_id)  # another caller's: as if it did not exist
    return pre


async def agent_of(gw: Gateway, identity: Identity, payload: CreateTransactionIn) -> str:
    """The agent a new transaction speaks for (`agentId` before `agentName`, as the SDK prefers)."""
    if identity.kind == "agent":
        assert identity.agent is not None
        if payload.agentName not in (None, identity.agent) or (
            payload.agentId is not None and not (await _agent_id_name(gw, payload.agentId) == identity.agent)
        ):
            raise Forbidden(f"this key belongs to agent {identity.agent!r}: it cannot speak for another agent")
        return identity.agent
    if payload.agentId is not None:
        name = await _agent_id_name(gw, payload.agentId)
        if name is None:
            raise NotFound(f"agentId: unknown agent id {payload.agentId!r}", field="agentId")
        return name
    if payload.agentName is None:
        raise InvalidRequest("agentName: a service key must name the agent (agentName or agentId)", field="agentName")
    return payload.agentName


async def _agent_id_name(gw: Gateway, agent_id: str) -> str | None:
    """An agent's name by its id (pixelgov's integer id, as a string), or None."""
    if not agent_id.isascii() or not agent_id.isdigit() or len(agent_id) > 10:
        return None
    try:
        return (await gw.db(gw.ledger.admin.agent_by_id, int(agent_id))).name
    except NotFound:
        return None


def run_endpoint(request: Request, facts: RequestFacts) -> tuple[str | None, str | None]:
    """(the endpoint the SDK's request will call, or None and why this gateway does not govern it).
    InvalidRequest for a URL that is not this gateway's."""
    url = facts.request.url
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise InvalidRequest(f"requestFacts.request.url: {url[:200]!r} is not an http(s) URL", field="url")
    host = (request.headers.get("host") or "").lower()
    if _netloc(parts.scheme, parts.netloc) != _netloc(request.url.scheme, host):
        raise InvalidRequest(
            f"requestFacts.request.url: {parts.netloc[:200]!r} is not this gateway ({host!r}): pixelgov governs "
            "only the requests it forwards itself",
            field="url",
        )
    if facts.request.method.upper() != "POST" or not parts.path.startswith(RUN_PATH):
        return None, f"{facts.request.method.upper()} {parts.path[:200]} is not an image run of this gateway"
    endpoint = unquote(parts.path[len(RUN_PATH) :]).strip("/")
    return (endpoint or None), (None if endpoint else "the request names no endpoint")


def _netloc(scheme: str, netloc: str) -> str:
    netloc = netloc.lower().rpartition("@")[2]
    default = {"http": ":80", "https": ":443"}.get(scheme.lower(), "")
    return netloc[: -len(default)] if default and netloc.endswith(default) else netloc


# --- shapes -------------------------------------------------------------------------------------


def status_of(pre: PreAuthorization, now: datetime) -> tuple[str, str | None, str | None]:
    """(the SDK's status, outcome, declineReason): from the pre-authorization and, once used, from
    the ledger transaction the gateway settled (the caller's own report never overrides money)."""
    state = pre.state(now)
    if state == PreAuthState.denied:
        return "denied", None, pre.decline_reason
    if state == PreAuthState.cancelled:
        return "cancelled", pre.outcome, None
    if state == PreAuthState.authorized:
        return "authorized", None, None
    tx = pre.transaction
    if tx is None or tx.status == TxStatus.pending:
        return "authorized", None, None
    if tx.status == TxStatus.denied:
        reason = "; ".join(f"{d.rule}: {d.reason}" if d.rule else d.reason for d in tx.denials)
        return "denied", None, reason or "denied by a spending rule"
    if tx.status == TxStatus.completed:
        return "completed", "success", None
    return "completed", (None if tx.status == TxStatus.unknown else "error"), None


def costs_of(pre: PreAuthorization) -> list[dict[str, Any]]:
    """The SDK's costs from the ledger's append-only cost lines: the estimate (active while held or
    counted), the actual that supersedes it, and any adjustments."""
    tx = pre.transaction
    if tx is None or tx.detail is None:
        return []
    lines = tx.detail.cost_lines
    estimate_id = None
    actual_at = next((line.created_at for line in lines if line.kind == "actual"), None)
    out = []
    for i, line in enumerate(lines):
        cost_id = f"{pre.id}.{i}"
        estimate = line.kind == "estimate"
        superseded = actual_at if estimate else None
        if estimate and superseded is None and tx.status not in (TxStatus.pending, TxStatus.unknown):
            superseded = tx.completed_at  # released: nothing spent
        out.append(
            {
                "id": cost_id,
                "transactionId": pre.id,
                "organizationId": ORGANIZATION,
                "fiatAmount": usd_str(line.amount),
                "fiatAssetSymbol": "USD",
                "isEstimate": estimate,
                "isActive": superseded is None,
                "supersedesCostId": estimate_id if line.kind == "actual" else None,
                "supersededAt": iso(superseded),
                "costDetails": {"kind": line.kind, "ledgerTransaction": tx.id, "note": line.note},
                "createdAt": iso(line.created_at),
                "updatedAt": iso(superseded or line.created_at),
            }
        )
        if estimate:
            estimate_id = cost_id
    return out


def transaction_doc(pre: PreAuthorization, now: datetime) -> dict[str, Any]:
    """A `TransactionResponse` as the SDK types it, plus `declineReason` and pixelgov's own details."""
    status, outcome, decline = status_of(pre, now)
    asked = pre.request
    tx = pre.transaction
    completed = (tx.completed_at if tx is not None else None) or pre.closed_at
    updated = max(t for t in (pre.created_at, pre.used_at, pre.closed_at, completed) if t is not None)
    doc: dict[str, Any] = {
        "id": pre.id,
        "organizationId": ORGANIZATION,
        "serviceName": asked.get("serviceName") or "fal",
        "actionName": asked.get("actionName") or "run",
        "resourceName": asked.get("resourceName") or pre.endpoint,
        "serviceId": None,
        "status": status,
        "outcome": outcome,
        "declineReason": decline,
        "requiresPayment": False,
        "qualifiers": asked.get("qualifiers") or {},
        "metadata": asked.get("metadata") or {},
        "createdAt": iso(pre.created_at),
        "updatedAt": iso(updated),
        "authorizedAt": iso(pre.created_at) if pre.decision == "authorized" else None,
        "completedAt": iso(completed) if status in ("completed", "cancelled") else None,
        "currentPaymentTransactionId": None,
        "costs": costs_of(pre),
        "pixelgov": {
            "agent": pre.agent,
            "endpoint": pre.endpoint,
            "expiresAt": iso(pre.expires_at),
            "usedAt": iso(pre.used_at),
            "reportedOutcome": pre.outcome,
            "transaction": tx.to_json() if tx is not None else None,
        },
    }
    if asked.get("traceId") or asked.get("traceExternalId"):
        doc["trace"] = {"id": asked.get("traceId"), "externalId": asked.get("traceExternalId")}
    return doc


# --- routes -------------------------------------------------------------------------------------


@router.post("/transactions", status_code=201, summary="Authorize a request before it is sent (no body, no price)")
async def create(payload: CreateTransactionIn, identity: Caller, gw: GW, request: Request) -> JSONResponse:
    agent = await agent_of(gw, identity, payload)
    endpoint, decline = run_endpoint(request, payload.requestFacts)
    asked = payload.model_dump(exclude_none=True)
    pre = await gw.db(
        gw.ledger.governor.preauthorize,
        agent,
        endpoint,
        request=asked,
        service_key_id=identity.key_id,
        decline=decline,
    )
    request.state.agent = agent
    gw.metrics.observe_decision("allowed" if pre.decision == "authorized" else "denied")
    return JSONResponse(transaction_doc(pre, gw.ledger.clock()), status_code=201)


@router.get("/transactions", summary="The caller's transactions, newest first")
async def transactions(
    identity: Caller,
    gw: GW,
    status: Annotated[str | None, Query(max_length=20)] = None,
    service: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> JSONResponse:
    if identity.kind == "agent":
        scope: dict[str, Any] = {"agent": identity.agent}
    elif identity.kind == "service":
        scope = {"service_key_id": identity.key_id}
    else:
        scope = {}
    found = await gw.db(gw.ledger.governor.preauthorizations, limit=limit, offset=offset, **scope)
    now = gw.ledger.clock()
    docs = [transaction_doc(pre, now) for pre in found]
    if status is not None:
        docs = [d for d in docs if d["status"] == status]
    if service is not None:
        docs = [d for d in docs if d["serviceName"] == service]
    return JSONResponse(docs)


@router.get("/transactions/{pre_id}", summary="One transaction")
async def transaction(pre_id: PreId, identity: Caller, gw: GW) -> JSONResponse:
    return JSONResponse(transaction_doc(await own(gw, identity, pre_id), gw.ledger.clock()))


@router.post("/transactions/{pre_id}/complete", summary="The caller's outcome (never moves money)")
async def complete(pre_id: PreId, payload: CompleteIn, identity: Caller, gw: GW) -> JSONResponse:
    await own(gw, identity, pre_id)
    facts = payload.responseFacts.model_dump() if payload.responseFacts is not None else None
    pre, recorded = await gw.db(gw.ledger.governor.close_preauthorization, pre_id, payload.outcome, facts)
    doc: dict[str, Any] = {"transaction": transaction_doc(pre, gw.ledger.clock())}
    if recorded and facts is not None:
        doc["factId"] = f"{pre_id}.response"
    return JSONResponse(doc)


@router.get("/transactions/{pre_id}/costs", summary="The transaction's costs (from the ledger)")
async def costs(pre_id: PreId, identity: Caller, gw: GW) -> JSONResponse:
    return JSONResponse(costs_of(await own(gw, identity, pre_id)))


@router.post("/transactions/{pre_id}/costs", summary="Refused: the gateway settles what it forwards")
async def add_cost(
    pre_id: PreId, identity: Caller, gw: GW, payload: Annotated[dict[str, Any] | None, Body()] = None
) -> JSONResponse:
    await own(gw, identity, pre_id)
    raise SettledByGateway(
        "costs of a pixelgov transaction come from the upstream's answer, settled by the gateway; "
        "a caller cannot add one (an admin adjusts with POST /v1/transactions/{id}/costs)",
        id=pre_id,
        reason="gateway_settles",
    )


@router.post("/transactions/{pre_id}/facts", summary="Keep the caller's facts beside the transaction")
async def add_facts(
    pre_id: PreId, payload: Annotated[dict[str, Any], Body()], identity: Caller, gw: GW
) -> JSONResponse:
    await own(gw, identity, pre_id)
    _, index = await gw.db(gw.ledger.governor.add_preauthorization_facts, pre_id, payload)
    return JSONResponse({"success": True, "factId": f"{pre_id}.fact{index}"}, status_code=201)


@router.post("/transactions/{pre_id}/reauthorize", summary="Refused: x402 payments are not offered")
async def reauthorize(
    pre_id: PreId, identity: Caller, gw: GW, payload: Annotated[dict[str, Any] | None, Body()] = None
) -> JSONResponse:
    await own(gw, identity, pre_id)
    raise InvalidRequest(
        "reauthorize: pixelgov does not take x402 (crypto) payments; the server pays FAL with its own key",
        field="x402",
        reason="not_offered",
    )
