"""The upstream client: one governed call to FAL (or anything that speaks its HTTP API).

`POST {upstream}/{endpoint}` with `Authorization: Key $FAL_KEY`. The key lives only
in that header: it is never stored, logged, printed or put in an error message.
Failures are classified by what they mean for money:

- `Unreachable`: nothing was sent (connection refused, DNS, connect timeout). Safe
  to retry, and retried with backoff; the transaction fails with nothing spent.
- `Refused`: the upstream answered 4xx/5xx. Nothing generated; the transaction fails.
- `NoAnswer`: the request was sent but no usable answer came (read timeout, dropped
  connection, malformed JSON). It may have been served: the transaction is `unknown`
  and its estimate stays counted. Never retried (a retry could double-charge).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import httpx

from .errors import InvalidRequest

DEFAULT_URL = "https://fal.run"
DEFAULT_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0
CONNECT_RETRIES = 3
BACKOFF = 0.25


@dataclass(frozen=True)
class UpstreamConfig:
    url: str = DEFAULT_URL
    timeout: float = DEFAULT_TIMEOUT  #: seconds to wait for the answer once sent
    connect_timeout: float = CONNECT_TIMEOUT
    retries: int = CONNECT_RETRIES  #: only for failures before sending
    backoff: float = BACKOFF

    @classmethod
    def from_env(cls, *, url: str | None = None, timeout: float | None = None) -> "UpstreamConfig":
        url = url or os.environ.get("PIXELGOV_UPSTREAM_URL") or DEFAULT_URL
        if not url.startswith(("http://", "https://")):
            raise InvalidRequest(f"upstream: {url!r} is not an http(s) URL (PIXELGOV_UPSTREAM_URL)", field="upstream")
        if timeout is None:
            raw = os.environ.get("PIXELGOV_UPSTREAM_TIMEOUT")
            try:
                timeout = float(raw) if raw else DEFAULT_TIMEOUT
            except ValueError:
                raise InvalidRequest(f"timeout: PIXELGOV_UPSTREAM_TIMEOUT={raw!r} is not a number of seconds",
                                     field="timeout") from None
        if not math.isfinite(timeout) or timeout <= 0:  # nan and inf too: the wait is always bounded
            raise InvalidRequest("timeout: must be a finite number of seconds greater than zero", field="timeout")
        return cls(url=url.rstrip("/"), timeout=timeout, connect_timeout=min(CONNECT_TIMEOUT, timeout))


@dataclass
class UpstreamResult:
    status: int
    body: Any  #: the upstream's JSON, unchanged
    request_id: str | None
    billable_units: str | None  #: FAL's x-fal-billable-units header, when present
    latency_ms: float
    headers: dict[str, str] = field(default_factory=dict)


class UpstreamFailure(Exception):
    kind = "failure"

    def __init__(self, message: str, *, status: int | None = None, latency_ms: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.latency_ms = latency_ms


class Unreachable(UpstreamFailure):
    kind = "unreachable"


class Refused(UpstreamFailure):
    kind = "refused"


class NoAnswer(UpstreamFailure):
    kind = "no_answer"


def fal_key_from_env() -> str:
    key = os.environ.get("FAL_KEY", "").strip()
    if not key:
        raise InvalidRequest("FAL_KEY is not set: a real run needs your FAL API key in the FAL_KEY environment "
                             "variable (or use --dry-run)", field="FAL_KEY")
    return check_fal_key(key)


def check_fal_key(key: str) -> str:
    """The key, if it can be sent as an HTTP header; else InvalidRequest (never quoting the key).

    Checked before anything is authorized: an unsendable key would otherwise fail inside
    the HTTP library, whose error messages quote the header value."""
    if not key or not all("!" <= ch <= "~" for ch in key):
        raise InvalidRequest("FAL_KEY: the key must be printable ASCII without spaces or line breaks "
                             "(it is sent in the Authorization header)", field="FAL_KEY")
    return key


def error_message(body: Any, text: str) -> str:
    """FAL's error detail as one line: `{"detail": "..."}` or `{"detail": [{"loc", "msg"}]}`."""
    detail = body.get("detail") if isinstance(body, Mapping) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and detail:
        parts = []
        for item in detail[:5]:
            if isinstance(item, Mapping):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
        return "; ".join(parts)
    snippet = " ".join(text.split())[:200]
    return snippet or "no error detail"


class Upstream:
    """A reusable client (one connection pool)."""

    def __init__(self, config: UpstreamConfig | None = None, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config or UpstreamConfig.from_env()
        timeout = httpx.Timeout(self.config.timeout, connect=self.config.connect_timeout)
        self._client = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "Upstream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, endpoint: str, body: Mapping[str, Any], fal_key: str) -> UpstreamResult:
        check_fal_key(fal_key)
        url = f"{self.config.url}/{endpoint}"
        headers = {"Authorization": f"Key {fal_key}", "Content-Type": "application/json",
                   "Accept": "application/json", "User-Agent": "pixelgov/0.1"}
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                response = self._client.post(url, json=dict(body), headers=headers)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Nothing was sent: safe to retry.
                attempt += 1
                if attempt > self.config.retries:
                    raise Unreachable(f"upstream {self.config.url} unreachable after {attempt} attempt(s): "
                                      f"{_describe(exc, fal_key)}") from None
                time.sleep(self.config.backoff * 2 ** (attempt - 1))
            except httpx.TimeoutException as exc:
                raise NoAnswer(f"no answer from {self.config.url} within {self.config.timeout:g}s after the "
                               f"request was sent ({type(exc).__name__})", latency_ms=_ms(started)) from None
            except httpx.TransportError as exc:
                raise NoAnswer(f"connection to {self.config.url} lost after the request was sent: "
                               f"{_describe(exc, fal_key)}", latency_ms=_ms(started)) from None
        latency = _ms(started)
        text = response.text
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        if response.status_code >= 400:
            raise Refused(f"upstream answered HTTP {response.status_code}: {error_message(parsed, text)}",
                          status=response.status_code, latency_ms=latency)
        if not isinstance(parsed, dict):
            raise NoAnswer(f"upstream answered HTTP {response.status_code} with a body that is not a JSON object",
                           status=response.status_code, latency_ms=latency)
        return UpstreamResult(
            status=response.status_code, body=parsed, request_id=response.headers.get("x-fal-request-id"),
            billable_units=response.headers.get("x-fal-billable-units"), latency_ms=latency,
            headers={k: v for k, v in response.headers.items() if k.lower().startswith("x-fal-")},
        )


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _describe(exc: Exception, secret: str) -> str:
    """An exception as one line, the secret (which transport errors may quote) masked."""
    text = str(exc).strip().replace(secret, "***")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
