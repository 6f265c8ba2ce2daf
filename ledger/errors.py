"""Errors of the ledger layer, and the one table mapping every error code to an exit code
and an HTTP status. No heavy imports: the pricing-only CLI path uses it too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pricing.errors import ImageTooLarge, InvalidRequest, ModelNotFound, PixelgovError, PriceBookError

if TYPE_CHECKING:
    from .records import Denial, Transaction

__all__ = [
    "EXIT_CODES",
    "HTTP_STATUS",
    "CannotWrite",
    "Conflict",
    "DatabaseUnavailable",
    "Denied",
    "Forbidden",
    "ImageTooLarge",
    "InProgress",
    "InvalidRequest",
    "ModelNotFound",
    "NotFound",
    "PixelgovError",
    "PriceBookError",
    "RateLimited",
    "SchemaBehind",
    "SettledByGateway",
    "UpstreamError",
    "denial_error",
    "exit_code",
]


class NotFound(PixelgovError):
    """An unknown agent, rule or transaction."""

    code = "not_found"


class Conflict(InvalidRequest):
    """A state transition that is not allowed (completing a voided transaction, a duplicate name)."""

    code = "invalid_request"


class Forbidden(PixelgovError):
    """A credential that is known but may not do this: a pre-authorization already used, expired,
    cancelled, denied, or for another request (HTTP 403)."""

    code = "forbidden"


class SettledByGateway(PixelgovError):
    """A transaction the gateway forwarded: the gateway settles it from the upstream's answer, and
    no caller may complete, void or re-cost it (HTTP 409)."""

    code = "conflict"


class CannotWrite(PixelgovError):
    """An output file (a report, a chart, a download) that cannot be written: exit 1, the ledger as it was."""

    code = "cannot_write"


class InProgress(PixelgovError):
    """An idempotent retry while the first attempt with the same key is still in flight."""

    code = "conflict"


class Denied(PixelgovError):
    """A spending rule (or a paused agent) refused the request: `denials` names every failing rule."""

    code = "denied"

    def __init__(
        self, message: str, *, denials: Sequence[Denial], transaction: Transaction | None = None, **details: Any
    ) -> None:
        super().__init__(message, denials=list(denials), transaction=transaction, **details)
        self.denials = tuple(denials)
        self.transaction = transaction


class RateLimited(Denied):
    """Denied by rate-limit rules only."""

    code = "rate_limited"


class UpstreamError(PixelgovError):
    """The upstream refused or failed; the transaction is `failed` (or `unknown`)."""

    code = "upstream_error"


class DatabaseUnavailable(PixelgovError):
    """The database cannot be reached or stayed locked past the bounded wait."""

    code = "database_unavailable"


class SchemaBehind(PixelgovError):
    """The database's schema is older than this pixelgov."""

    code = "schema_behind"


EXIT_CODES = {
    "invalid_request": 2,
    "model_not_found": 2,
    "image_too_large": 2,
    "not_found": 2,
    "forbidden": 2,
    "denied": 3,
    "rate_limited": 3,
    "upstream_error": 1,
    "conflict": 1,
    "database_unavailable": 1,
    "schema_behind": 1,
    "body_too_large": 2,
    "upstream_timeout": 1,
    "cancelled": 2,
    "queue_full": 1,
    "cannot_write": 1,
    "cannot_start": 1,
}
HTTP_STATUS = {
    "invalid_request": 400,
    "model_not_found": 404,
    "image_too_large": 413,
    "not_found": 404,
    "denied": 402,
    "rate_limited": 429,
    "upstream_error": 502,
    "database_unavailable": 503,
    "schema_behind": 503,
    "unauthorized": 401,
    "forbidden": 403,
    "conflict": 409,
    # The gateway's own: a body over its size limit, an upstream that never answered (the
    # transaction is `unknown`), the result of a queued request that was cancelled, a submit to a
    # worker whose queue is full.
    "body_too_large": 413,
    "upstream_timeout": 504,
    "cancelled": 400,
    "queue_full": 429,
}


def denial_error(tx: Transaction | None, denials: Sequence[Denial], agent: str) -> Denied:
    """The error for a denied request, naming every failing rule (rate-limited if only rate limits failed)."""
    names = ", ".join(f"{d.rule or d.type} ({d.reason})" for d in denials)
    cls = RateLimited if denials and all(d.type == "rate-limit" for d in denials) else Denied
    return cls(f"denied for agent {agent!r}: {names}", denials=denials, transaction=tx)


def exit_code(error: PixelgovError) -> int:
    return EXIT_CODES.get(error.code, 1)
