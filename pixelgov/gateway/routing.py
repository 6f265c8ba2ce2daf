"""The route class every gateway router uses: JSON bodies parsed by pixelgov's one bounded
reader (`pricing.jsondoc.parse_json`: size and depth bounded, NaN/Infinity refused, UTF-8
only) instead of `json.loads`, so no body can exhaust the recursion limit or smuggle a
non-finite number into a request."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from pricing.jsondoc import parse_json

from .schemas import ErrorBody

#: Every error a route may answer, in FAL's error shape (documented for OpenAPI and schemathesis).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "invalid request"),
        (401, "missing or unknown key"),
        (402, "denied by a spending rule or a paused agent"),
        (404, "unknown endpoint, agent, rule, transaction or request"),
        (409, "conflict (idempotency key in flight, stale rule version)"),
        (413, "image or body too large"),
        (429, "rate-limited (Retry-After)"),
        (502, "upstream failure"),
        (503, "database unavailable"),
        (504, "no answer from the upstream"),
    )
}


class BoundedRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            limit = self.app.state.gateway.config.max_body_bytes
            self._json = parse_json(body, source="the request body", field="body", max_bytes=limit)
        return self._json


class GatewayRoute(APIRoute):
    """An APIRoute whose request parses JSON with the bounded reader, and whose OpenAPI entry
    documents the gateway's error answers (and not FastAPI's 422: invalid input is 400)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        responses: dict[int | str, dict[str, Any]] = dict(ERROR_RESPONSES)
        responses.update(kwargs.pop("responses", None) or {})
        super().__init__(path, endpoint, responses=responses, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            return await original(BoundedRequest(request.scope, request.receive))

        return handler
