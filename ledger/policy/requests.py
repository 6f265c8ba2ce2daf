"""What the ledger keeps of a request: its parameters without secrets, the digest that tells an
idempotent retry from another request, and the idempotency key's bounds."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pricing import Quote

from ..errors import InvalidRequest

MAX_KEY_LENGTH = 200  #: the idempotency_key column's width


#: Request fields whose name contains one of these are never stored (at any depth; `headers` whole).
_SECRET_HINTS = (
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "authorization",
    "auth",
    "credential",
    "cookie",
    "session",
    "headers",
    "signature",
)


def validate_idempotency_key(key: str | None) -> str | None:
    """The key, if the ledger can store it (1–200 characters); InvalidRequest otherwise."""
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidRequest(
            f"idempotency_key: 1–{MAX_KEY_LENGTH} characters (got {len(key)})", field="idempotency_key"
        )
    return key


def request_hash(endpoint: str, body: Mapping[str, Any]) -> str:
    """The digest that tells an idempotent retry from a different request with the same key."""
    canonical = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def stored_request(body: Mapping[str, Any], quote: Quote) -> dict[str, Any]:
    """Request parameters as the ledger keeps them: secrets dropped, data: URIs summarized,
    and an upscale's input size (as priced) recorded so the request can be re-priced."""
    kept: dict[str, Any] = without_secrets(body)
    if quote.operation == "upscale":
        kept["input_size"] = f"{quote.input_width}x{quote.input_height}"
    return kept


def without_secrets(value: Any) -> Any:
    """`value` with secret-like keys dropped at every depth and long data: URIs summarized."""
    if isinstance(value, Mapping):
        return {k: without_secrets(v) for k, v in value.items() if not any(h in str(k).lower() for h in _SECRET_HINTS)}
    if isinstance(value, list | tuple):
        return [without_secrets(v) for v in value]
    if isinstance(value, str) and value.startswith("data:") and len(value) > 200:
        return f"{value[: value.find(',') + 1]}…({len(value)} chars)"
    return value


#: Who may forward a transaction's request: pixelgov's gateway, `pixelgov run`, or (None) the caller.
FORWARDERS = ("gateway", "run", None)
