"""FAL-compatible routes: an unmodified FAL client governed by pointing it at the gateway.

    POST /{endpoint}                              a governed run: FAL's answer, as FAL gave it
    POST /queue/{endpoint}                        queue submit (also POST /{endpoint} on a `queue.` host)
    GET  /queue/{app}/requests/{id}/status        IN_QUEUE / IN_PROGRESS (202) or COMPLETED (200)
    GET  /queue/{app}/requests/{id}               the result (or the error it ended with)
    PUT  /queue/{app}/requests/{id}/cancel        release a request not sent yet

`fal_client` builds its URLs as `https://{FAL_RUN_HOST}/…` and `https://{FAL_QUEUE_RUN_HOST}/…`,
so `FAL_RUN_HOST=gateway:8443 FAL_QUEUE_RUN_HOST=gateway:8443/queue` points both at the
gateway. Lookups by id drop the endpoint's sub-path (`fal-ai/flux/dev` is polled under
`fal-ai/flux/requests/{id}`): requests are found by id alone (and the agent's key).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse

from ..records import Transaction, TxStatus
from .auth import AgentIdentity, Caller, gateway
from .errors import error_body, transaction_headers
from .routing import GatewayRoute
from .schemas import CancelOut, FalRequest, QueueStatus, QueueSubmitted
from .seed import IdempotencyKey
from .service import Gateway, queue_error

QUEUE_PREFIX = "/queue"
#: FAL app namespaces whose ids have three segments (`workflows/owner/alias`).
_NAMESPACES = ("workflows", "comfy")

GW = Annotated[Gateway, Depends(gateway)]
RequestBody = Annotated[FalRequest, Body(description="the FAL request body, forwarded as given")]
Logs = Annotated[str | None, Query(max_length=10, description="true/false/1/0: include logs (always empty)")]

queue = APIRouter(route_class=GatewayRoute, tags=["FAL queue"])
runs = APIRouter(route_class=GatewayRoute, tags=["FAL-compatible"])


def app_id(endpoint: str) -> str:
    """The app part of an endpoint id, under which FAL's clients poll (`fal-ai/flux/dev` → `fal-ai/flux`)."""
    parts = endpoint.strip("/").split("/")
    keep = 3 if parts and parts[0] in _NAMESPACES else 2
    return "/".join(parts[:keep])


def is_queue_host(request: Request) -> bool:
    return (request.headers.get("host") or "").lower().startswith("queue.")


def request_urls(request: Request, endpoint: str, request_id: str, *, prefix: str) -> dict[str, str]:
    base = f"{str(request.base_url).rstrip('/')}{prefix}/{app_id(endpoint)}/requests/{request_id}"
    return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}


async def _submit(
    request: Request,
    endpoint: str,
    body: dict[str, Any],
    identity: Any,
    gw: Gateway,
    idempotency_key: str | None,
    prefix: str,
) -> JSONResponse:
    request.state.fal = True
    request_id, tx = await gw.submit(identity.require_agent(), endpoint, body, idempotency_key=idempotency_key)
    request.state.tx = tx.id
    doc = {
        "request_id": request_id,
        **request_urls(request, endpoint, request_id, prefix=prefix),
        "status": "IN_QUEUE",
        "queue_position": gw.queue_position(request_id) or 0,
    }
    return JSONResponse(doc, headers=transaction_headers(tx))


@queue.post(QUEUE_PREFIX + "/{endpoint:path}", response_model=QueueSubmitted, summary="Queue submit")
async def submit(
    endpoint: str,
    body: RequestBody,
    identity: AgentIdentity,
    gw: GW,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    return await _submit(request, endpoint, body, identity, gw, idempotency_key, QUEUE_PREFIX)


def _status_doc(
    request: Request, gw: Gateway, tx: Transaction, app: str, request_id: str, logs: str | None
) -> tuple[dict[str, Any], int]:
    prefix = QUEUE_PREFIX if request.url.path.startswith(QUEUE_PREFIX + "/") else ""
    base = f"{str(request.base_url).rstrip('/')}{prefix}/{app}/requests/{request_id}"
    doc: dict[str, Any] = {
        "request_id": request_id,
        "response_url": base,
        "status_url": f"{base}/status",
        "cancel_url": f"{base}/cancel",
        "logs": [] if (logs or "").lower() in ("true", "1") else None,
    }
    if tx.status == TxStatus.pending:
        position = gw.queue_position(request_id)
        if position is not None:
            return {**doc, "status": "IN_QUEUE", "queue_position": position}, 202
        return {**doc, "status": "IN_PROGRESS"}, 202
    doc.update(status="COMPLETED", metrics={})
    if tx.status != TxStatus.completed:
        error = queue_error(tx, request_id)
        doc.update(error=str(error), error_type=getattr(error, "code", "error"))
    return doc, 200


async def _status(
    request: Request, app: str, request_id: str, identity: Any, gw: Gateway, logs: str | None
) -> JSONResponse:
    tx = await gw.queued(identity, request_id)
    doc, status = _status_doc(request, gw, tx, app, request_id, logs)
    return JSONResponse(doc, status_code=status, headers=transaction_headers(tx))


async def _result(request: Request, request_id: str, identity: Any, gw: Gateway) -> JSONResponse:
    request.state.fal = True
    tx, result = await gw.result(identity, request_id)
    request.state.tx = tx.id
    return JSONResponse(result, headers=transaction_headers(tx))


async def _cancel(request_id: str, identity: Any, gw: Gateway) -> JSONResponse:
    from ..errors import InvalidRequest

    try:
        tx = await gw.cancel(identity, request_id)
    except InvalidRequest as exc:
        status = exc.details.get("status", "ALREADY_COMPLETED")
        return JSONResponse({"status": status, **error_body("invalid_request", exc.message)}, status_code=400)
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202, headers=transaction_headers(tx))


# Registered with and without the /queue prefix: a client whose queue host is a `queue.` name polls
# without it.
for _prefix in (QUEUE_PREFIX, ""):

    @queue.get(
        _prefix + "/{app:path}/requests/{request_id}/status",
        response_model=QueueStatus,
        responses={202: {"model": QueueStatus, "description": "not finished yet"}},
        summary="Queue status (a read: no database write)",
        name=f"status{_prefix}",
    )
    async def status(
        app: str, request_id: str, identity: Caller, gw: GW, request: Request, logs: Logs = None
    ) -> JSONResponse:
        return await _status(request, app, request_id, identity, gw, logs)

    @queue.get(
        _prefix + "/{app:path}/requests/{request_id}",
        summary="Queue result",
        name=f"result{_prefix}",
        response_model=dict[str, Any],
    )
    async def result(app: str, request_id: str, identity: Caller, gw: GW, request: Request) -> JSONResponse:
        return await _result(request, request_id, identity, gw)

    @queue.put(
        _prefix + "/{app:path}/requests/{request_id}/cancel",
        response_model=CancelOut,
        status_code=202,
        summary="Queue cancel",
        name=f"cancel{_prefix}",
    )
    async def cancel(app: str, request_id: str, identity: Caller, gw: GW) -> JSONResponse:
        return await _cancel(request_id, identity, gw)


@runs.post(
    "/{endpoint:path}",
    response_model=dict[str, Any],
    summary="A governed run (FAL's answer, unchanged); a queue submit on a queue. host",
)
async def run(
    endpoint: str,
    body: RequestBody,
    identity: AgentIdentity,
    gw: GW,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    if is_queue_host(request):
        return await _submit(request, endpoint, body, identity, gw, idempotency_key, "")
    request.state.fal = True
    outcome = await gw.run(identity.require_agent(), endpoint, body, idempotency_key=idempotency_key)
    tx = outcome.transaction
    request.state.tx = tx.id
    response = JSONResponse(outcome.result, status_code=tx.upstream_status or 200, headers=transaction_headers(tx))
    if outcome.replayed:
        response.headers["X-Pixelgov-Replayed"] = "true"
    return response
