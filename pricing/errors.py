"""Errors that every layer shares, each with the code the contract promises.

The library raises these; the CLI and the gateway map `code` to an exit code or
an HTTP status in one place each (`pixelgov/cli/common.py`, the gateway).
"""

from __future__ import annotations

from typing import Any


class PixelgovError(Exception):
    """Base of every error pixelgov reports to a user."""

    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = {k: v for k, v in details.items() if v is not None}

    def to_json(self) -> dict[str, Any]:
        """`{"error": {"code", "message", ...details}}`; records among the details as their JSON."""
        return {
            "error": {"code": self.code, "message": self.message, **{k: _as_json(v) for k, v in self.details.items()}}
        }


def _as_json(value: Any) -> Any:
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, list | tuple):
        return [_as_json(v) for v in value]
    return value


class InvalidRequest(PixelgovError):
    """A parameter is missing, out of range or of the wrong type."""

    code = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message, field=field, **details)
        self.field = field


class ModelNotFound(PixelgovError):
    """The price book does not know the endpoint: nothing unpriceable is forwarded."""

    code = "model_not_found"


class ImageTooLarge(InvalidRequest):
    """An output (or an upscale input) beyond the price book's limits."""

    code = "image_too_large"


class PriceBookError(PixelgovError):
    """A user's price book is malformed; the message names the bad field."""

    code = "invalid_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, reason="invalid_price_book", **details)
