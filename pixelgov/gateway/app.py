"""The ASGI application: `create_app(ledger, config)`.

One app per worker process. Start-up opens the shared upstream client and the thread
pool; shutdown lets queued runs finish (bounded), then closes them. A thin ASGI
middleware in front of the routes enforces the body size limit (413 before anything is
parsed), writes one JSON access-log line per request (no keys, no bodies, no query
strings) and counts the request in the metrics. It also hands the hot route, a governed
`POST /{endpoint}`, to `fal.FastRun` (plain ASGI, the same answers) once the router has sent
that path there.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ledger.core import Ledger
from ledger.forward.upstream import UpstreamConfig

from . import errors
from .config import GatewayConfig
from .errors import BodyTooLarge, error_response
from .fal import FastRun
from .service import Gateway

access_log = logging.getLogger("pixelgov.access")
log = logging.getLogger("pixelgov.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def create_app(
    ledger: Ledger,
    config: GatewayConfig | None = None,
    *,
    upstream: UpstreamConfig | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    fast_path: bool = True,
) -> FastAPI:
    """The gateway for `ledger` (owned by the caller: the app does not close it).

    `upstream` defaults to the ledger's settings (`PIXELGOV_UPSTREAM_URL`, timeout); `transport`
    is for tests that talk to an in-process fake. `fast_path=False` serves `POST /{endpoint}`
    through FastAPI only (`fal.FastRun` answers it the same way, with less CPU)."""
    config = config or GatewayConfig()
    gw = Gateway(ledger, config, upstream=upstream, transport=transport)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    app = FastAPI(
        title="pixelgov gateway",
        version="0.1.0",
        lifespan=lifespan,
        description="Governed FAL requests: priced, checked against spending rules, forwarded with "
        "the server's FAL key and recorded in an exact ledger.",
    )
    app.state.gateway = gw
    errors.install(app)

    from . import admin, dashboard, fal, sapiom, seed, status

    app.include_router(status.router)
    app.include_router(seed.router)
    app.include_router(sapiom.router)
    app.include_router(admin.router)
    app.include_router(dashboard.router)
    app.include_router(fal.queue)
    app.include_router(fal.runs)  # last: POST /{endpoint} takes every other POST path
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(Edge, gateway=gw, fast=fal.FastRun(app) if fast_path else None)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The schema without FastAPI's 422 answers: invalid input is 400 here (in FAL's error shape)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                if isinstance(operation, dict):
                    operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


class Edge:
    """Body size limit, access log and request metrics, as plain ASGI (no per-request task)."""

    def __init__(self, app: ASGIApp, *, gateway: Gateway, fast: FastRun | None = None) -> None:
        self.app = app
        self.gw = gateway
        self.fast = fast

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        limit = self.gw.config.max_body_bytes
        state: dict[str, Any] = {"status": 500, "started": False}
        scope.setdefault("state", {})

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._too_large(scope, send, limit, state)
            self._done(scope, state, started)
            return

        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(_too_large_message(limit), limit=limit)
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
            await send(message)

        try:
            fast = self.fast
            if fast is not None and fast.takes(scope):
                await fast(scope, bounded_receive, tracking_send, self.app)
            else:
                await self.app(scope, bounded_receive, tracking_send)
                if fast is not None:
                    fast.learn(scope)
        except BodyTooLarge:
            if state["started"]:
                raise
            await self._too_large(scope, send, limit, state)
        finally:
            self._done(scope, state, started)

    async def _too_large(self, scope: Scope, send: Send, limit: int, state: dict[str, Any]) -> None:
        response = error_response(BodyTooLarge(_too_large_message(limit), limit=limit))
        response.headers["Connection"] = "close"
        state["status"] = response.status_code

        async def no_body() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, no_body, send)

    def _done(self, scope: Scope, state: dict[str, Any], started: float) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        template = getattr(route, "path", None) or "(unmatched)"
        method = scope.get("method", "")
        status = int(state["status"])
        try:
            self.gw.metrics.requests.labels(route=template, method=method, status=str(status)).inc()
            self.gw.metrics.latency.labels(route=template).observe(elapsed)
        except Exception as exc:  # noqa: BLE001 - metrics never break a request
            log.debug("metrics: %s", type(exc).__name__)
        if self.gw.config.access_log and access_log.isEnabledFor(logging.INFO):
            extra = scope.get("state") or {}
            access_log.info(
                json.dumps(
                    {
                        "ts": round(time.time(), 3),
                        "method": method,
                        "path": scope.get("path", "")[:300],
                        "route": template,
                        "status": status,
                        "ms": round(elapsed * 1000, 2),
                        "agent": extra.get("agent"),
                        "transaction": extra.get("tx"),
                        "client": (scope.get("client") or ("", 0))[0],
                        "worker": os.getpid(),
                    },
                    ensure_ascii=True,
                )
            )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large_message(limit: int) -> str:
    return f"the request body is larger than the gateway's limit of {limit} bytes (PIXELGOV_MAX_BODY_BYTES)"
