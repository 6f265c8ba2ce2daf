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

import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from ledger.errors import PixelgovError
from ledger.records import Transaction, TxStatus
from pricing.jsondoc import parse_json

from .auth import AgentIdentity, Caller, _key, gateway
from .errors import error_body, transaction_headers
from .queue import queue_error
from .routing import GatewayRoute
from .schemas import CancelOut, FalRequest, QueueStatus, QueueSubmitted
from .seed import IdempotencyKey
from .service import Gateway

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
    from ledger.errors import InvalidRequest

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


# --- the hot route as plain ASGI --------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Paths the router has sent to `run` (bounded: then it starts over).
_KNOWN_PATHS = 4096


class FastRun:
    """`POST /{endpoint}` (the `run` route above) as plain ASGI, without FastAPI's routing,
    dependency solving and request objects: ~0.6 ms of the ~3 ms of CPU a governed request cost
    the gateway before. The FastAPI route stays the definition (OpenAPI, and every request the fast path
    does not take); this does what FastAPI does for it, in the same order, with the same answers.

    A path is taken here only once the router itself has sent a POST of that exact path to `run`
    (`learn`, called by the Edge middleware after each request), so routing decisions stay the
    router's. Anything unusual goes to FastAPI, with the body already read replayed: a `queue.`
    host, a body that is not a JSON object (or not `application/json`), an `Idempotency-Key` that
    would fail its validation, a root path. Exceptions get the app's own handlers, looked up as
    Starlette's ExceptionMiddleware does; one without a handler propagates (to the 500 handler)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.paths: set[str] = set()
        self.route: Any = None  #: the router's route object for `run` (scope["route"] as it set it)

    def learn(self, scope: Scope) -> None:
        """After the router served a request: remember a POST path it routed to `run`."""
        route = scope.get("route")
        if scope.get("method") != "POST" or getattr(route, "endpoint", None) is not run or scope.get("root_path"):
            return
        if len(self.paths) >= _KNOWN_PATHS:
            self.paths.clear()
        self.route = route
        self.paths.add(scope["path"])

    def takes(self, scope: Scope) -> bool:
        return scope["method"] == "POST" and scope["path"] in self.paths and not scope.get("root_path")

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, next_app: Callable[..., Awaitable[None]]
    ) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.lower(), value)  # the first of repeated headers, as Starlette's
        host = headers.get(b"host", b"").decode("latin-1")
        idempotency = headers.get(b"idempotency-key")
        if host.lower().startswith("queue.") or (idempotency is not None and not 1 <= len(idempotency) <= 200):
            await next_app(scope, receive, send)
            return
        state = scope["state"]
        scope["route"] = self.route
        gw = self.app.state.gateway
        try:
            body = await _read_body(receive)
        except Exception as exc:  # noqa: BLE001 - what FastAPI makes of a body it cannot read
            error = HTTPException(status_code=400, detail="There was an error parsing the body")
            error.__cause__ = exc
            await self._handle(error, scope, receive, send)
            return
        doc: Any = None
        content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if body and content_type == b"application/json":
            try:
                doc = parse_json(body, source="the request body", field="body", max_bytes=gw.config.max_body_bytes)
            except PixelgovError:
                doc = None
        if not isinstance(doc, dict):  # FastAPI's validation (or its body error) answers it
            await next_app(scope, _replay(body, receive), send)
            return
        endpoint = scope["path"][1:]
        try:
            # The `agent` dependency (`caller`, then `require_agent`), then the route itself.
            agent_header = headers.get(b"x-pixelgov-agent")
            authorization = headers.get(b"authorization")
            identity = await gw.identify(
                _key(None if authorization is None else authorization.decode("latin-1")),
                None if agent_header is None else agent_header.decode("latin-1"),
            )
            state["agent"] = identity.agent
            identity.require_agent()
            state["fal"] = True
            outcome = await gw.run(
                identity.require_agent(),
                endpoint,
                doc,
                idempotency_key=None if idempotency is None else idempotency.decode("latin-1"),
            )
            tx = outcome.transaction
            state["tx"] = tx.id
            response = JSONResponse(
                outcome.result, status_code=tx.upstream_status or 200, headers=transaction_headers(tx)
            )
            if outcome.replayed:
                response.headers["X-Pixelgov-Replayed"] = "true"
        except Exception as exc:  # noqa: BLE001 - the app's handlers answer it (or it propagates)
            await self._handle(exc, scope, receive, send)
            return
        await response(scope, receive, send)

    async def _handle(self, exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
        """Starlette's ExceptionMiddleware: the handler registered for the exception's class (or an
        HTTPException's status); none (the 500 handler's business) re-raises."""
        handlers = self.app.exception_handlers
        handler = None
        if isinstance(exc, HTTPException) and exc.status_code != 500:
            handler = handlers.get(exc.status_code)
        if handler is None:
            for cls in type(exc).__mro__:
                if cls is not Exception and cls in handlers:
                    handler = handlers[cls]
                    break
        if handler is None:
            raise exc
        response = handler(Request(scope, receive), exc)
        if inspect.isawaitable(response):  # the gateway's handlers are all async
            response = await response
        await response(scope, receive, send)
        exc.__traceback__ = None


async def _read_body(receive: Receive) -> bytes:
    """Starlette's `Request.body()`."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` once more, then the connection's own messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
