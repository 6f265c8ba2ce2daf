"""Settings, read once at the edge (the CLI's entry point, a server's start-up) and passed down.

Nothing below the edge reads `os.environ`: the library takes a `Settings` (or its
defaults). Every number is parsed with a range, so `nan`, `inf` or `abc` in an
environment variable is a clear error, never an unbounded wait.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pricing.errors import InvalidRequest

DEFAULT_HOLD_TTL = 900.0
DEFAULT_DB_TIMEOUT = 10.0
DEFAULT_UPSTREAM_URL = "https://fal.run"
DEFAULT_UPSTREAM_TIMEOUT = 120.0
#: Upper bounds: a week for a hold, an hour for a database wait or an upstream answer.
MAX_HOLD_TTL = 7 * 86400.0
MAX_DB_TIMEOUT = 3600.0
MAX_UPSTREAM_TIMEOUT = 3600.0
_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")


def parse_seconds(
    raw: str | float | int, name: str, *, minimum: float = 0.0, maximum: float, allow_zero: bool = False
) -> float:
    """A number of seconds within (minimum, maximum] (or [0, maximum] with `allow_zero`);
    InvalidRequest naming `name` otherwise (nan, inf, text, out of range)."""
    try:
        value = float(raw)  # a duration, not money
    except (TypeError, ValueError):
        raise InvalidRequest(f"{name}: {raw!r} is not a number of seconds", field=name) from None
    low_ok = value >= minimum if allow_zero else value > minimum
    if not math.isfinite(value) or not low_ok or value > maximum:
        bound = "at least" if allow_zero else "greater than"
        raise InvalidRequest(
            f"{name}: {raw!r} must be a finite number of seconds, {bound} {minimum:g} and at most {maximum:g}",
            field=name,
        )
    return value


def parse_flag(raw: str, name: str) -> bool:
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidRequest(f"{name}: {raw!r} is not true or false", field=name)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything pixelgov reads from its environment, with the defaults of the contract.

    `database_url` None means the default SQLite file in the user data directory (created
    and migrated on first use). Durations are seconds. The FAL key is not a setting: it is
    read at the edge by the code that sends requests and never kept.
    """

    database_url: str | None = None
    hold_ttl: float = DEFAULT_HOLD_TTL
    db_timeout: float = DEFAULT_DB_TIMEOUT
    upstream_url: str = DEFAULT_UPSTREAM_URL
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    auto_create_agents: bool = True
    price_book_path: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `environ` (default `os.environ`); `overrides` (CLI options) win when not None.

        Raises InvalidRequest naming the variable for a malformed value."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("PIXELGOV_DATABASE_URL"):
            values["database_url"] = env["PIXELGOV_DATABASE_URL"]
        if env.get("PIXELGOV_HOLD_TTL"):
            values["hold_ttl"] = parse_seconds(env["PIXELGOV_HOLD_TTL"], "PIXELGOV_HOLD_TTL", maximum=MAX_HOLD_TTL)
        if env.get("PIXELGOV_DB_TIMEOUT"):
            values["db_timeout"] = parse_seconds(
                env["PIXELGOV_DB_TIMEOUT"], "PIXELGOV_DB_TIMEOUT", maximum=MAX_DB_TIMEOUT
            )
        if env.get("PIXELGOV_UPSTREAM_URL"):
            values["upstream_url"] = env["PIXELGOV_UPSTREAM_URL"]
        if env.get("PIXELGOV_UPSTREAM_TIMEOUT"):
            values["upstream_timeout"] = parse_seconds(
                env["PIXELGOV_UPSTREAM_TIMEOUT"], "PIXELGOV_UPSTREAM_TIMEOUT", maximum=MAX_UPSTREAM_TIMEOUT
            )
        if env.get("PIXELGOV_AUTO_CREATE_AGENTS"):
            values["auto_create_agents"] = parse_flag(env["PIXELGOV_AUTO_CREATE_AGENTS"], "PIXELGOV_AUTO_CREATE_AGENTS")
        if env.get("PIXELGOV_PRICE_BOOK"):
            values["price_book_path"] = env["PIXELGOV_PRICE_BOOK"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("database_url") == "":
            raise InvalidRequest(
                "database: an empty URL (give a URL, or leave it out for the default ledger)", field="database"
            )
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (None values ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
