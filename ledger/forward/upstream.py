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

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from pricing.jsondoc import parse_json

from ..errors import InvalidRequest
from ..settings import DEFAULT_UPSTREAM_TIMEOUT, DEFAULT_UPSTREAM_URL, MAX_UPSTREAM_TIMEOUT, Settings, parse_seconds

DEFAULT_URL = DEFAULT_UPSTREAM_URL
DEFAULT_TIMEOUT = DEFAULT_UPSTREAM_TIMEOUT
CONNECT_TIMEOUT = 10.0
CONNECT_RETRIES = 3
BACKOFF = 0.25
MAX_ANSWER_BYTES = 256 * 1024 * 1024  #: an answer may carry images inline as data: URIs


@dataclass(frozen=True)
class UpstreamConfig:
    url: str = DEFAULT_URL
    timeout: float = DEFAULT_TIMEOUT  #: seconds to wait for the answer once sent
    connect_timeout: float = CONNECT_TIMEOUT
    retries: int = CONNECT_RETRIES  #: only for failures before sending
    backoff: float = BACKOFF

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        url: str | None = None,
        timeout: float | str | None = None,
    ) -> UpstreamConfig:
        """The config from settings, `url`/`timeout` (options given for one run) winning.
        InvalidRequest for a URL that cannot be sent to or a timeout that is not a bounded number."""
        url = url or settings.upstream_url
        check_upstream_url(url)
        seconds = (
            settings.upstream_timeout
            if timeout is None
            else parse_seconds(timeout, "timeout", maximum=MAX_UPSTREAM_TIMEOUT)
        )
        return cls(url=url.rstrip("/"), timeout=seconds, connect_timeout=min(CONNECT_TIMEOUT, seconds))


def check_upstream_url(url: str) -> str:
    """`url` if requests can be sent to it (http(s), a host, a valid port); InvalidRequest otherwise —
    before anything is authorized, so a bad URL never leaves an `unknown` outcome behind."""
    shown = scrub(url, "") if isinstance(url, str) else url
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidRequest(f"upstream: {shown!r} is not an http(s) URL", field="upstream")
    try:
        parsed = httpx.URL(url)
        parsed.port  # noqa: B018 - raises for an invalid port
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise InvalidRequest(
            f"upstream: {shown!r} is not a valid URL ({scrub(str(exc), '')})", field="upstream"
        ) from None
    if not parsed.host:
        raise InvalidRequest(f"upstream: {shown!r} has no host", field="upstream")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise InvalidRequest(f"upstream: {shown!r} has no valid port", field="upstream")
    return url


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


def check_fal_key(key: str) -> str:
    """The key, if it can be sent as an HTTP header; else InvalidRequest (never quoting the key).

    Checked before anything is authorized: an unsendable key would otherwise fail inside
    the HTTP library, whose error messages quote the header value."""
    if not key or not all("!" <= ch <= "~" for ch in key):
        raise InvalidRequest(
            "FAL_KEY: the key must be printable ASCII without spaces or line breaks "
            "(it is sent in the Authorization header)",
            field="FAL_KEY",
        )
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


class _SecretFilter(logging.Filter):
    """Masks the keys pixelgov sends in the HTTP libraries' own debug logs (which print the response
    headers an echoing upstream could fill with the key)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if any(secret in message for secret in self.secrets):
                for secret in self.secrets:
                    message = message.replace(secret, MASK)
                record.msg, record.args = message, None
        return True


_LOG_FILTER = _SecretFilter()
for _name in ("httpx", "httpcore", "httpcore.http11", "httpcore.http2", "httpcore.connection", "httpcore.proxy"):
    logging.getLogger(_name).addFilter(_LOG_FILTER)


class _Exchange:
    """One governed call's shared logic, whichever client (sync or async) sends it: building the
    request, classifying a failure by what it means for money, reading and scrubbing the answer."""

    def __init__(self, config: UpstreamConfig, endpoint: str, body: Mapping[str, Any], fal_key: str) -> None:
        check_fal_key(fal_key)
        _LOG_FILTER.secrets.add(fal_key)
        self.config, self.key, self.attempt = config, fal_key, 0
        self.url = f"{config.url}/{endpoint}"
        self.where = scrub(config.url, fal_key)  # the upstream as messages name it: no credentials
        self.body = dict(body)
        self.headers = {
            "Authorization": f"Key {fal_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "pixelgov/0.1",
        }

    def build(self, build_request: Callable[..., httpx.Request]) -> httpx.Request:
        """The request, from a client's `build_request` (or `AsyncUpstream.build_request`)."""
        try:
            return build_request("POST", self.url, json=self.body, headers=self.headers)
        except (httpx.HTTPError, httpx.InvalidURL, TypeError, ValueError) as exc:
            raise Unreachable(
                f"the request to {self.where} could not be built, nothing was sent: {_describe(exc, self.key)}"
            ) from None

    def failed(self, exc: Exception, started: float) -> float:
        """Classify a send failure: raise Unreachable/NoAnswer, or return the backoff (seconds) before
        a retry — only when nothing was sent."""
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
            raise Unreachable(
                f"upstream {self.where} cannot be sent to, nothing was sent: {_describe(exc, self.key)}"
            ) from None
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            self.attempt += 1  # nothing was sent: safe to retry
            if self.attempt > self.config.retries:
                raise Unreachable(
                    f"upstream {self.where} unreachable after {self.attempt} attempt(s): {_describe(exc, self.key)}"
                ) from None
            return float(self.config.backoff * 2 ** (self.attempt - 1))
        if isinstance(exc, httpx.TimeoutException):
            raise NoAnswer(
                f"no answer from {self.where} within {self.config.timeout:g}s after the "
                f"request was sent ({type(exc).__name__})",
                latency_ms=_ms(started),
            ) from None
        if isinstance(exc, httpx.TransportError):
            raise NoAnswer(
                f"connection to {self.where} lost after the request was sent: {_describe(exc, self.key)}",
                latency_ms=_ms(started),
            ) from None
        raise exc

    def answer(self, response: httpx.Response, started: float) -> UpstreamResult:
        latency = _ms(started)
        # Everything that came back is scrubbed of the key and of URL credentials before anyone
        # prints, logs or stores it: a hostile or echoing upstream must not leak them.
        text = scrub(response.text, self.key)
        try:  # strict and bounded: NaN/Infinity or absurd nesting make the body malformed
            parsed = scrub(
                parse_json(
                    response.content, source="the upstream answer", field="response", max_bytes=MAX_ANSWER_BYTES
                ),
                self.key,
            )
        except InvalidRequest:
            parsed = None
        if response.status_code >= 400:
            raise Refused(
                f"upstream answered HTTP {response.status_code}: {error_message(parsed, text)}",
                status=response.status_code,
                latency_ms=latency,
            )
        if not isinstance(parsed, dict):
            raise NoAnswer(
                f"upstream answered HTTP {response.status_code} with a body that is not a JSON object",
                status=response.status_code,
                latency_ms=latency,
            )
        headers = {k: scrub(v, self.key) for k, v in response.headers.items() if k.lower().startswith("x-fal-")}
        return UpstreamResult(
            status=response.status_code,
            body=parsed,
            request_id=headers.get("x-fal-request-id"),
            billable_units=headers.get("x-fal-billable-units"),
            latency_ms=latency,
            headers=headers,
        )


def _timeout(config: UpstreamConfig) -> httpx.Timeout:
    return httpx.Timeout(config.timeout, connect=config.connect_timeout)


class Upstream:
    """A reusable synchronous client (one connection pool), for the CLI and scripts."""

    def __init__(self, config: UpstreamConfig | None = None, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config or UpstreamConfig()
        self._client = httpx.Client(timeout=_timeout(self.config), transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, endpoint: str, body: Mapping[str, Any], fal_key: str) -> UpstreamResult:
        """POST the request; the upstream's answer, or Unreachable / Refused / NoAnswer."""
        exchange = _Exchange(self.config, endpoint, body, fal_key)
        request = exchange.build(self._client.build_request)
        while True:
            started = time.perf_counter()
            try:
                response = self._client.send(request)
            except httpx.HTTPError as exc:
                time.sleep(exchange.failed(exc, started))
                continue
            return exchange.answer(response, started)


class AsyncUpstream:
    """The same client for an event loop (the gateway): a slow answer holds no thread.

    `limits` bounds the connection pool shared by every request of the process. A call goes
    straight to the pool's transport with the request `_Exchange` builds (the client's default
    headers, the same JSON bytes and timeouts): the client's per-request layers — URL and cookie
    merging, the cookie jar, auth and redirect loops, event hooks — cost about 0.2 ms of CPU and
    serve nothing here (redirects are not followed, and one agent's request must never carry a
    cookie another's answer set). With an HTTP(S) proxy in the environment the full client sends,
    since it is what applies the proxy."""

    def __init__(
        self,
        config: UpstreamConfig | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        import urllib.request

        self.config = config or UpstreamConfig()
        limits = limits or httpx.Limits(max_connections=100)
        proxied = any(k in urllib.request.getproxies() for k in ("http", "https", "all"))
        if transport is None and not proxied:
            transport = httpx.AsyncHTTPTransport(limits=limits)
        self._client = httpx.AsyncClient(
            timeout=_timeout(self.config), transport=transport, follow_redirects=False, limits=limits
        )
        self._direct = None if proxied else transport
        self._timeout = _timeout(self.config).as_dict()
        self._headers: tuple[str, httpx.Headers] | None = None

    async def aclose(self) -> None:
        await self._client.aclose()

    def build_request(self, method: str, url: str, *, json: Any, headers: dict[str, str]) -> httpx.Request:
        """`httpx.AsyncClient.build_request` for a direct call (`_Exchange.build` calls it); the
        merged headers are kept while the key is the same."""
        cached = self._headers
        if cached is None or cached[0] != headers["Authorization"]:
            merged = httpx.Headers(self._client.headers)
            merged.update(headers)
            self._headers = cached = (headers["Authorization"], merged)
        return httpx.Request(method, url, json=json, headers=cached[1], extensions={"timeout": self._timeout})

    async def call(self, endpoint: str, body: Mapping[str, Any], fal_key: str) -> UpstreamResult:
        """POST the request; the upstream's answer, or Unreachable / Refused / NoAnswer."""
        import asyncio

        exchange = _Exchange(self.config, endpoint, body, fal_key)
        direct = self._direct
        request = exchange.build(self.build_request if direct is not None else self._client.build_request)
        while True:
            started = time.perf_counter()
            try:
                if direct is None:
                    response = await self._client.send(request)
                else:
                    response = await direct.handle_async_request(request)
                    response.request = request
                    try:
                        await response.aread()
                    except BaseException:
                        await response.aclose()
                        raise
            except httpx.HTTPError as exc:
                await asyncio.sleep(exchange.failed(exc, started))
                continue
            return exchange.answer(response, started)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@:]*:[^/\s@]*@")
MASK = "***"


def scrub(value: Any, secret: str) -> Any:
    """`value` (text or JSON) with the secret and `user:password@` in URLs masked, at every depth
    (the only credentials pixelgov sends are the key and, in an upstream URL, its user info)."""
    if isinstance(value, str):
        if secret and secret in value:
            value = value.replace(secret, MASK)
        if "@" in value:
            value = _URL_CREDENTIALS.sub(lambda m: m.group(1) + MASK + "@", value)
        return value
    if isinstance(value, dict):
        return {scrub(k, secret): scrub(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, secret) for v in value]
    return value


def _describe(exc: Exception, secret: str) -> str:
    """An exception as one line, the secret (which transport errors may quote) masked."""
    text = scrub(str(exc).strip(), secret)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
