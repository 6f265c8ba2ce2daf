"""The gateway's own settings, read once at the server's start-up (beside `ledger.Settings`).

The FAL key is the server's: it is read here, sent upstream in the Authorization
header only, and never logged, stored or shown (`repr` hides it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pricing.errors import InvalidRequest

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
MAX_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_DB_THREADS = 8
DEFAULT_UPSTREAM_CONNECTIONS = 100
DEFAULT_SHUTDOWN_GRACE = 30.0
DEFAULT_KEY_CACHE_SECONDS = 5.0
DEFAULT_MAX_QUEUED = 10_000
DEFAULT_MAX_QUEUED_PER_AGENT = 1_000


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    from pricing.grammar import parse_int

    return parse_int(raw.strip(), name, minimum=low, maximum=high)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """What the gateway reads from its environment besides the ledger's `Settings`.

    - `PIXELGOV_ADMIN_TOKEN`: the admin API's bearer token; without one the admin API answers 503.
    - `FAL_KEY`: the server's FAL key (agents never see it); without one runs answer 502.
    - `PIXELGOV_MAX_BODY_BYTES` (default 1 MiB): a larger request body is refused with 413.
    - `PIXELGOV_DB_THREADS` (default 8): ledger calls run in at most this many threads per worker
      (and no more than the database engine's pool keeps connections: 5).
    - `PIXELGOV_UPSTREAM_CONNECTIONS` (default 100): the upstream connection pool of a worker.
    - `PIXELGOV_SHUTDOWN_GRACE` (default 30 s): how long a stopping worker lets queued runs finish.
    - `PIXELGOV_KEY_CACHE_SECONDS` (default 5): how long a worker remembers a known API key (0: never);
      a rotated or revoked key may keep working that long on a worker that saw it.
    - `PIXELGOV_MAX_QUEUED` (default 10,000): queued runs a worker keeps (waiting or in flight); a
      submit beyond it is refused with 429 and `Retry-After` before anything is authorized.
    - `PIXELGOV_MAX_QUEUED_PER_AGENT` (default 1,000): the same, for one agent's queued runs on a
      worker, so one agent cannot take every place.
    """

    admin_token: str | None = field(default=None, repr=False)
    fal_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    db_threads: int = DEFAULT_DB_THREADS
    upstream_connections: int = DEFAULT_UPSTREAM_CONNECTIONS
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    key_cache_seconds: float = DEFAULT_KEY_CACHE_SECONDS
    max_queued: int = DEFAULT_MAX_QUEUED
    max_queued_per_agent: int = DEFAULT_MAX_QUEUED_PER_AGENT
    access_log: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> GatewayConfig:
        """The config from `environ` (default `os.environ`); `overrides` win when not None.
        InvalidRequest naming the variable for a malformed value."""
        env = os.environ if environ is None else environ
        from ledger.settings import parse_seconds

        grace = env.get("PIXELGOV_SHUTDOWN_GRACE")
        cache = env.get("PIXELGOV_KEY_CACHE_SECONDS")
        values: dict[str, Any] = {
            "admin_token": (env.get("PIXELGOV_ADMIN_TOKEN") or "").strip() or None,
            "fal_key": _fal_key(env.get("FAL_KEY")),
            "max_body_bytes": _int(env, "PIXELGOV_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1024, MAX_MAX_BODY_BYTES),
            "db_threads": _int(env, "PIXELGOV_DB_THREADS", DEFAULT_DB_THREADS, 1, 256),
            "upstream_connections": _int(env, "PIXELGOV_UPSTREAM_CONNECTIONS", DEFAULT_UPSTREAM_CONNECTIONS, 1, 10000),
            "max_queued": _int(env, "PIXELGOV_MAX_QUEUED", DEFAULT_MAX_QUEUED, 1, 1_000_000),
            "max_queued_per_agent": _int(
                env, "PIXELGOV_MAX_QUEUED_PER_AGENT", DEFAULT_MAX_QUEUED_PER_AGENT, 1, 1_000_000
            ),
            "shutdown_grace": parse_seconds(grace, "PIXELGOV_SHUTDOWN_GRACE", maximum=3600, allow_zero=True)
            if grace
            else DEFAULT_SHUTDOWN_GRACE,
            "key_cache_seconds": parse_seconds(cache, "PIXELGOV_KEY_CACHE_SECONDS", maximum=3600, allow_zero=True)
            if cache
            else DEFAULT_KEY_CACHE_SECONDS,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> GatewayConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _fal_key(raw: str | None) -> str | None:
    """The server's FAL key, if it could go into a header: printable ASCII without spaces (a key with
    a newline would inject a header line into every upstream call). The key is never shown."""
    key = (raw or "").strip()
    if not key:
        return None
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key) or len(key) > 1024:
        raise InvalidRequest(
            "FAL_KEY: the key holds control characters, spaces or non-ASCII characters (its value is not shown)",
            field="FAL_KEY",
        )
    return key
