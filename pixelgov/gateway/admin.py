"""The admin API under `/v1/` (`Authorization: Bearer $PIXELGOV_ADMIN_TOKEN`).

GET/POST   /v1/agents                    create answers the API key once
GET/PATCH  /v1/agents/{name}             status active|paused, description
POST       /v1/agents/{name}/rotate-key
GET/POST   /v1/spending-rules
GET/PATCH/DELETE /v1/spending-rules/{name or id}   PATCH carries `version` (stale: 409)
POST       /v1/transactions/{id}/costs | /facts    (list, get, complete: seed.py, admin sees all)
GET        /v1/alerts, /v1/audit
GET/POST   /v1/service-keys, DELETE /v1/service-keys/{name} (revoke)
GET        /v1/analytics/summary | chart | leaderboards   (the reports module)
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse

from ledger.errors import NotFound

from .auth import Admin, gateway
from .routing import GatewayRoute
from .schemas import (
    AgentIn,
    AgentOut,
    AgentPatch,
    CostIn,
    FactIn,
    RuleIn,
    RuleOut,
    RulePatch,
    ServiceKeyIn,
    ServiceKeyOut,
    TransactionOut,
)
from .seed import TxId, _utc, transaction_response
from .service import Gateway

router = APIRouter(prefix="/v1", route_class=GatewayRoute, dependencies=[Admin], tags=["admin"])
GW = Annotated[Gateway, Depends(gateway)]
AgentName = Annotated[str, Path(min_length=1, max_length=200)]
RuleRef = Annotated[str, Path(min_length=1, max_length=200, description="a rule's name or numeric id")]


def _rule_ref(ref: str) -> str:
    """A rule reference the library can look up: `Admin` reads an all-digit reference as an id too,
    and `str.isdigit` is true for digits int() refuses ("¹"): no rule is named so, and no id is one."""
    if ref.isdigit() and not ref.isascii():
        raise NotFound(f"unknown rule {ref!r}", rule=ref)
    return ref


def _spec(payload: Any) -> Any:
    from ledger.policy.rules import RuleSpec

    given = set(payload.model_fields_set) - {"version"}
    fields = {k: getattr(payload, k) for k in given}
    if isinstance(fields.get("limit"), int) and not isinstance(fields.get("limit"), bool):
        fields["limit"] = str(fields["limit"])
    return RuleSpec(**fields, given=given)


# --- agents ---------------------------------------------------------------------------------------


@router.get("/agents", response_model=list[AgentOut], summary="Every agent")
async def agents(gw: GW) -> JSONResponse:
    return JSONResponse([a.to_json() for a in await gw.db(gw.ledger.admin.agents)])


@router.post("/agents", response_model=AgentOut, status_code=201, summary="Create an agent (its key shown once)")
async def create_agent(payload: AgentIn, gw: GW) -> JSONResponse:
    agent = await gw.db(gw.ledger.admin.create_agent, payload.name, payload.description, with_key=payload.with_key)
    return JSONResponse(agent.to_json(), status_code=201)


@router.post("/agents/{name:path}/rotate-key", response_model=AgentOut, summary="A new API key (shown once)")
async def rotate_key(name: AgentName, gw: GW) -> JSONResponse:
    return JSONResponse((await gw.db(gw.ledger.admin.rotate_key, name)).to_json())


@router.get("/agents/{name:path}", response_model=AgentOut, summary="One agent")
async def agent(name: AgentName, gw: GW) -> JSONResponse:
    return JSONResponse((await gw.db(gw.ledger.admin.agent, name)).to_json())


@router.patch("/agents/{name:path}", response_model=AgentOut, summary="Pause, resume or describe an agent")
async def update_agent(name: AgentName, payload: AgentPatch, gw: GW) -> JSONResponse:
    agent = await gw.db(gw.ledger.admin.update_agent, name, status=payload.status, description=payload.description)
    return JSONResponse(agent.to_json())


# --- spending rules -------------------------------------------------------------------------------


@router.get("/spending-rules", response_model=list[RuleOut], summary="Every spending rule")
async def rules(gw: GW) -> JSONResponse:
    return JSONResponse([r.to_json() for r in await gw.db(gw.ledger.admin.rules)])


@router.post("/spending-rules", response_model=RuleOut, status_code=201, summary="Create a spending rule")
async def create_rule(payload: RuleIn, gw: GW) -> JSONResponse:
    rule = await gw.db(gw.ledger.admin.create_rule, _spec(payload))
    return JSONResponse(rule.to_json(), status_code=201)


@router.get("/spending-rules/{rule}", response_model=RuleOut, summary="One spending rule (by name or id)")
async def rule(rule: RuleRef, gw: GW) -> JSONResponse:
    return JSONResponse((await gw.db(gw.ledger.admin.rule, _rule_ref(rule))).to_json())


@router.patch("/spending-rules/{rule}", response_model=RuleOut, summary="Change a rule (carries its version)")
async def update_rule(rule: RuleRef, payload: RulePatch, gw: GW) -> JSONResponse:
    updated = await gw.db(gw.ledger.admin.update_rule, _rule_ref(rule), _spec(payload), version=payload.version)
    return JSONResponse(updated.to_json())


@router.delete("/spending-rules/{rule}", response_model=RuleOut, summary="Delete a rule (the audit log keeps it)")
async def delete_rule(rule: RuleRef, gw: GW) -> JSONResponse:
    return JSONResponse((await gw.db(gw.ledger.admin.delete_rule, _rule_ref(rule))).to_json())


# --- transactions (list, get, complete and void are in seed.py: the admin sees every agent's) ----


@router.post("/transactions/{tx_id}/costs", response_model=TransactionOut, summary="Add an adjustment line")
async def add_cost(tx_id: TxId, payload: CostIn, gw: GW) -> JSONResponse:
    from ledger.policy.transitions import parse_amount

    amount = parse_amount(payload.amount, "amount", allow_negative=True)
    tx = await gw.db(gw.ledger.governor.add_cost, tx_id, amount, kind=payload.kind, note=payload.note)
    return transaction_response(tx)


@router.post("/transactions/{tx_id}/facts", response_model=TransactionOut, summary="Add a fact")
async def add_fact(tx_id: TxId, payload: FactIn, gw: GW) -> JSONResponse:
    return transaction_response(await gw.db(gw.ledger.governor.add_fact, tx_id, payload.key, payload.value))


# --- alerts, audit --------------------------------------------------------------------------------


@router.get("/alerts", summary="Alerts, newest first")
async def alerts(gw: GW, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
    return JSONResponse([a.to_json() for a in await gw.db(gw.ledger.admin.alerts, limit=limit)])


@router.get("/audit", summary="Changes to agents, rules and service keys, newest first")
async def audit(
    gw: GW,
    entity: Annotated[str | None, Query(max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    return JSONResponse([e.to_json() for e in await gw.db(gw.ledger.admin.audit, entity=entity, limit=limit)])


# --- service keys ---------------------------------------------------------------------------------


@router.get("/service-keys", response_model=list[ServiceKeyOut], summary="Every service key")
async def service_keys(gw: GW) -> JSONResponse:
    return JSONResponse([k.to_json() for k in await gw.db(gw.ledger.admin.service_keys)])


@router.post(
    "/service-keys",
    response_model=ServiceKeyOut,
    status_code=201,
    summary="Issue a service key (shown once): with X-Pixelgov-Agent it speaks for any agent",
)
async def create_service_key(payload: ServiceKeyIn, gw: GW) -> JSONResponse:
    return JSONResponse((await gw.db(gw.ledger.admin.create_service_key, payload.name)).to_json(), status_code=201)


@router.delete("/service-keys/{name}", response_model=ServiceKeyOut, summary="Revoke a service key")
async def revoke_service_key(name: Annotated[str, Path(min_length=1, max_length=200)], gw: GW) -> JSONResponse:
    return JSONResponse((await gw.db(gw.ledger.admin.revoke_service_key, name)).to_json())


# --- analytics (the reports module: the same functions as `pixelgov report`) -------------------

Since = Annotated[datetime | None, Query(description="inclusive; UTC when no zone is given")]
Until = Annotated[datetime | None, Query(description="exclusive; UTC when no zone is given")]
Filter = Annotated[str | None, Query(max_length=200)]


@router.get("/analytics/summary", summary="Spend, counts and denials, with the change against the previous period")
async def analytics_summary(
    gw: GW,
    since: Since = None,
    until: Until = None,
    period: Annotated[str | None, Query(max_length=10, description="day, week, month or YYYY-MM")] = None,
    agent: Filter = None,
    model: Filter = None,
) -> JSONResponse:
    summary = await gw.db(
        gw.ledger.reports.summary, since=_utc(since), until=_utc(until), period=period, agent=agent, model=model
    )
    return JSONResponse(summary.to_json())


@router.get("/analytics/chart", summary="Usage, spend and denials per day, week or month")
async def analytics_chart(
    gw: GW,
    by: Annotated[Literal["day", "week", "month"], Query()] = "day",
    since: Since = None,
    until: Until = None,
    agent: Filter = None,
    model: Filter = None,
) -> JSONResponse:
    chart = await gw.db(gw.ledger.reports.chart, by, since=_utc(since), until=_utc(until), agent=agent, model=model)
    return JSONResponse(chart.to_json())


@router.get("/analytics/leaderboards", summary="Top agents and models by spend, rules by denials")
async def analytics_leaderboards(
    gw: GW, top: Annotated[int, Query(ge=1, le=1000)] = 10, since: Since = None, until: Until = None
) -> JSONResponse:
    doc: dict[str, Any] = {}
    for by in ("agent", "model", "rule"):
        board = await gw.db(gw.ledger.reports.leaderboard, by, top=top, since=_utc(since), until=_utc(until))
        doc.update(board.to_json())
    doc.pop("by", None)
    return JSONResponse(doc)
