"""Errors as HTTP answers: the one exception handler of the gateway.

Every error is a `PixelgovError` whose `code` picks the status from `ledger.errors.HTTP_STATUS`
(the one table, shared with the CLI's exit codes). The body is FAL's error shape, so
FAL's clients read it, plus pixelgov's own error object:

    {"detail": "...", "error_type": "denied", "error": {"code": "denied", "message": "...", ...}}

Validation errors carry FAL's list form in `detail` (`[{"loc", "msg", "type"}]`) and answer
400 (SPEC §7: 400 invalid), not FastAPI's 422.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ledger.errors import HTTP_STATUS, PixelgovError, UpstreamError

log = logging.getLogger("pixelgov.gateway")

#: Statuses of the upstream's own refusals that FAL-compatible routes pass through as FAL answered
#: them (the request's fault); any other refusal (401/403: the server's key; 5xx) is a 502.
FAL_PASS_THROUGH = frozenset({400, 404, 413, 422, 429})


class Unauthorized(PixelgovError):
    """No key, an unknown key, or an admin route without the admin token."""

    code = "unauthorized"


class BodyTooLarge(PixelgovError):
    """A request body over the gateway's size limit (`PIXELGOV_MAX_BODY_BYTES`)."""

    code = "body_too_large"


class Cancelled(PixelgovError):
    """The result of a queued request that was cancelled before it was sent."""

    code = "cancelled"


class QueueFull(PixelgovError):
    """A queue submit to a worker already keeping `PIXELGOV_MAX_QUEUED` runs: nothing authorized."""

    code = "queue_full"


def http_status(error: PixelgovError, *, fal: bool = False) -> int:
    """The HTTP status of `error` (from `HTTP_STATUS`). An upstream that never answered is 504
    (`upstream_timeout`); on FAL-compatible routes (`fal`) an upstream refusal in
    `FAL_PASS_THROUGH` keeps the upstream's own status, as FAL would have answered it."""
    code = error.code
    if isinstance(error, UpstreamError):
        if error.details.get("reason") == "unknown":
            code = "upstream_timeout"
        upstream = error.details.get("upstream_status")
        if fal and upstream in FAL_PASS_THROUGH:
            return int(upstream)
    return HTTP_STATUS.get(code, 500)


def transaction_headers(tx: Any) -> dict[str, str]:
    """`X-Pixelgov-Transaction`, `X-Pixelgov-Estimated-Cost` and (once settled) `X-Pixelgov-Actual-Cost`."""
    if tx is None:
        return {}
    doc = tx.to_json()
    headers = {"X-Pixelgov-Transaction": str(doc["id"]), "X-Pixelgov-Estimated-Cost": doc["estimated_cost"]}
    if doc.get("actual_cost") is not None:
        headers["X-Pixelgov-Actual-Cost"] = doc["actual_cost"]
    return headers


def error_body(code: str, message: str, detail: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "detail": message if detail is None else detail,
        "error_type": code,
        "error": {"code": code, "message": message, **extra},
    }


def error_response(error: PixelgovError, *, fal: bool = False) -> JSONResponse:
    status = http_status(error, fal=fal)
    doc = error.to_json()
    body = {"detail": error.message, "error_type": error.code, **doc}
    headers = transaction_headers(error.details.get("transaction"))
    retry_after = error.details.get("retry_after")
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    elif status == 429:
        headers["Retry-After"] = "1"
    if status == 401:
        headers["WWW-Authenticate"] = 'Key realm="pixelgov"'
    if status == 503:
        headers["Retry-After"] = "1"
    return JSONResponse(body, status_code=status, headers=headers)


def validation_detail(errors: Any) -> list[dict[str, Any]]:
    """FAL's validation detail: `[{"loc", "msg", "type"}]`, with nothing unserializable."""
    items = []
    for err in list(errors)[:20]:
        if isinstance(err, Mapping):
            items.append(
                {
                    "loc": [str(p) if not isinstance(p, int) else p for p in err.get("loc", ())],
                    "msg": str(err.get("msg", "")),
                    "type": str(err.get("type", "")),
                }
            )
    return items


def install(app: FastAPI) -> None:
    """Register the gateway's exception handlers on `app`."""

    @app.exception_handler(PixelgovError)
    async def _pixelgov(request: Request, exc: PixelgovError) -> JSONResponse:
        return error_response(exc, fal=bool(getattr(request.state, "fal", False)))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = validation_detail(exc.errors())
        first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        field = where or "body"
        return JSONResponse(error_body("invalid_request", message, detail, field=field), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cause = exc.__cause__
        if isinstance(cause, PixelgovError):  # FastAPI wraps errors raised while reading the body
            return error_response(cause, fal=bool(getattr(request.state, "fal", False)))
        code = {404: "not_found", 405: "invalid_request", 401: "unauthorized"}.get(exc.status_code, "invalid_request")
        status = exc.status_code if 400 <= exc.status_code < 500 else 400
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return JSONResponse(error_body(code, message), status_code=status, headers=getattr(exc, "headers", None))

    @app.exception_handler(SQLAlchemyError)
    async def _database(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        from ledger.store.db import translate_db_error

        translated = translate_db_error(exc)
        if translated is None:
            log.error("database error on %s %s: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
            return JSONResponse(
                error_body("database_unavailable", "database error (logged by the gateway)"),
                status_code=503,
                headers={"Retry-After": "1"},
            )
        return error_response(translated)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        from ledger.store.db import translate_db_error

        translated = translate_db_error(exc)
        if translated is not None:
            return error_response(translated)
        # A bug: logged (type and route only: no request data), answered without internals.
        log.error("internal error on %s %s: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal error (logged by the gateway)"), status_code=500)
