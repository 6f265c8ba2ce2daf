"""A gateway worker's resources and its synchronous governed path: the ledger, the shared upstream
client, the bounded thread pool for the ledger's short transactions, quoting, checks and runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar, cast
from urllib.parse import urlparse

import anyio
import httpx

from ledger.core import Ledger
from ledger.errors import Denied, Forbidden, InvalidRequest, NotFound, RateLimited, UpstreamError
from ledger.forward.runner import RunOutcome, run_governed_async
from ledger.forward.upstream import AsyncUpstream, UpstreamConfig, UpstreamFailure
from ledger.policy.preauthorize import check_preauthorization_id
from ledger.records import Decision, PreAuthState, Transaction, TxStatus
from pricing import Quote

from .config import GatewayConfig
from .errors import Unauthorized
from .metrics import Metrics

log = logging.getLogger("pixelgov.gateway")


T = TypeVar("T")


#: Threads that read upscale inputs' sizes from their hosts (bounded in bytes and seconds each).
PROBE_THREADS = 8


#: An `image_url` the gateway may read or forward: never a path on the server's disk.
_IMAGE_SCHEMES = ("http", "https")


@dataclass
class Queued:
    """A queued run this worker holds: not sent yet while it waits for an upstream slot."""

    tx_id: int
    agent: str
    sent: bool = False
    cancelled: bool = False
    #: Whether it takes one of the worker's `PIXELGOV_MAX_QUEUED` places (until it ends or is cancelled).
    counted: bool = True
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def check_image_url(body: Mapping[str, Any]) -> None:
    """The gateway reads and forwards only http(s) and data: images: an agent must not make the
    server read its own files (the library also accepts local paths, for the CLI)."""
    url = body.get("image_url")
    if url is None:
        return
    if not isinstance(url, str):
        raise InvalidRequest("image_url: must be a string (an http(s) URL or a data: URI)", field="image_url")
    if url.startswith("data:"):
        return
    if urlparse(url).scheme.lower() not in _IMAGE_SCHEMES:
        raise InvalidRequest("image_url: must be an http(s) URL or a data: URI", field="image_url")


def new_request_id() -> str:
    return str(uuid.uuid4())


class Worker:
    """A worker's gateway resources: the ledger, the upstream, the thread pool, the metrics; and the
    governed synchronous run."""

    def __init__(
        self,
        ledger: Ledger,
        config: GatewayConfig,
        *,
        upstream: UpstreamConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.ledger = ledger
        self.config = config
        self.upstream_config = upstream or UpstreamConfig.from_settings(ledger.settings)
        self._transport = transport
        self.metrics = Metrics(self._ledger_figures)
        self.upstream: MeasuredUpstream | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._probe_limiter: anyio.CapacityLimiter | None = None
        self._slots: asyncio.Semaphore | None = None
        self._queued: dict[str, Queued] = {}
        self._places = 0  #: queued runs held (and submits being authorized): at most `max_queued`
        self._agent_places: dict[str, int] = {}  #: the same per agent: at most `max_queued_per_agent`
        self._tasks: set[asyncio.Task[None]] = set()
        self._keys: dict[str, tuple[tuple[str, str, int], float]] = {}
        self.started_at = datetime.now(UTC)

    async def start(self) -> None:
        limits = httpx.Limits(
            max_connections=self.config.upstream_connections,
            max_keepalive_connections=min(self.config.upstream_connections, 100),
        )
        self.upstream = MeasuredUpstream(
            AsyncUpstream(self.upstream_config, transport=self._transport, limits=limits), self.metrics
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(self.db_threads(), thread_name_prefix="pixelgov-db")
        if self.ledger.engine.dialect.name == "sqlite":
            self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pixelgov-sqlite-writer")
        self._probe_limiter = anyio.CapacityLimiter(PROBE_THREADS)
        self._slots = asyncio.Semaphore(self.config.upstream_connections)

    async def stop(self) -> None:
        """Let queued runs finish for `shutdown_grace` seconds, then interrupt the rest (their
        transactions end `failed` or `unknown`), then close the upstream client."""
        tasks = list(self._tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=max(5.0, self.ledger.settings.db_timeout))
        if self.upstream is not None:
            await self.upstream.aclose()
        for pool in (self._executor, self._writer):
            if pool is not None:
                pool.shutdown(wait=False)

    def db_threads(self) -> int:
        """`db_threads`, but no more than the engine's connection pool keeps open: a thread beyond
        it borrows an overflow connection, which the pool closes when it is returned, so every
        such call would open a new database connection (on PostgreSQL a new server process:
        milliseconds, and the p99 of the whole gateway)."""
        size = getattr(self.ledger.engine.pool, "size", None)
        kept = size() if callable(size) else None
        if isinstance(kept, int) and kept > 0:
            return min(self.config.db_threads, kept)
        return self.config.db_threads

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a ledger call (a short database transaction) in the bounded thread pool."""
        assert self._executor is not None, "the gateway is not started"
        return await _hop(self._executor, partial(fn, *args, **kwargs))

    async def in_thread(self, fn: Callable[[], T]) -> T:
        """`run_governed_async`'s `in_thread` (a run's write transactions: authorize, settle, fail):
        the bounded pool; on SQLite, the worker's one writer thread.

        SQLite takes one write transaction at a time: threads of one worker that all start one
        (BEGIN IMMEDIATE) mostly wait in SQLite's busy handler, which sleeps in steps of 1–100 ms
        and burns CPU and GIL turns; in one thread they queue in order instead (at saturation
        ~15% more requests per second and ~0.6 ms less CPU per request). Workers (processes) still
        share the file's lock as before, and reads keep the pool."""
        pool = self._writer or self._executor
        assert pool is not None, "the gateway is not started"
        return await _hop(pool, fn)

    async def quote(self, endpoint: str, body: Mapping[str, Any], *, forwarded: bool = False) -> Quote:
        """The exact quote; an upscale whose input size must be read from its image is read in a
        thread (bounded in bytes and seconds), anything else is priced on the event loop.
        `forwarded`: the gateway will send this request with the server's key, so an upscale is
        priced from its image's measured size, whatever `input_size` claims."""
        check_image_url(body)
        entry = self.ledger.book.endpoint(endpoint)  # ModelNotFound before anything else
        if entry.operation == "upscale" and (forwarded or body.get("input_size") is None):
            # Its own threads: a slow image host (up to the probe's bound) never holds a database slot.
            # `remote`: an agent's URL may not point the server at its own network (or files).
            return await anyio.to_thread.run_sync(
                partial(self.ledger.quote, endpoint, body, remote=True, measure=forwarded),
                limiter=self._probe_limiter,
            )
        return self.ledger.quote(endpoint, body, remote=True)

    async def check(self, agent: str, endpoint: str, body: Mapping[str, Any]) -> Decision:
        quote = await self.quote(endpoint, body)
        return await self.db(self.ledger.governor.check, agent, quote)

    def require_fal_key(self) -> str:
        if not self.config.fal_key:
            raise UpstreamError(
                "the gateway has no upstream key (the server's FAL_KEY is not set): nothing was authorized or sent",
                reason="not_configured",
            )
        return self.config.fal_key

    async def run(
        self,
        agent: str,
        endpoint: str,
        body: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        preauthorization: str | None = None,
    ) -> RunOutcome:
        """Authorize, forward and settle (`run_governed_async`). Raises what it raises.
        `preauthorization`: the run uses that pre-authorization (Forbidden if it may not)."""
        fal_key = self.require_fal_key()
        quote = await self.quote(endpoint, body, forwarded=True)
        try:
            outcome = await run_governed_async(
                self.ledger.governor,
                cast(AsyncUpstream, self.upstream),
                agent=agent,
                quote=quote,
                body=body,
                fal_key=fal_key,
                idempotency_key=idempotency_key,
                in_thread=self.in_thread,
                preauthorization=preauthorization,
            )
        except Denied as exc:
            await self._denied(exc)
            raise
        except UpstreamError as exc:
            tx = exc.details.get("transaction")
            if tx is not None:
                self.metrics.observe_transaction(tx)
            raise
        if not outcome.replayed:
            self.metrics.observe_decision("allowed", quote.amount)
            self.metrics.observe_transaction(outcome.transaction)
        return outcome

    async def run_preauthorized(self, pre_id: str, endpoint: str, body: Mapping[str, Any]) -> RunOutcome:
        """The seed SDK's service call: a run whose only credential is a pre-authorization's id
        (`X-Sapiom-Transaction-Id`). Unauthorized for an id that is not one; Forbidden for one that
        may not run this (used, expired, cancelled, denied, another endpoint) — checked here before
        pricing, and again, atomically with the hold, by the governor."""
        try:
            check_preauthorization_id(pre_id)
            pre = await self.db(self.ledger.governor.preauthorization, pre_id)
        except (InvalidRequest, NotFound):
            raise Unauthorized(
                "unknown X-Sapiom-Transaction-Id: authorize first (POST /sapiom/v1/transactions)"
            ) from None
        state = pre.state(self.ledger.clock())
        if state != PreAuthState.authorized:
            why = {
                PreAuthState.denied: f"transaction {pre_id} was denied: {pre.decline_reason}",
                PreAuthState.used: f"transaction {pre_id} was already used (one request per authorization)",
                PreAuthState.cancelled: f"transaction {pre_id} was completed unused or expired: authorize again",
            }[state]
            raise Forbidden(why, id=pre_id)
        if pre.endpoint != endpoint:
            raise Forbidden(f"transaction {pre_id} authorizes {pre.endpoint!r}, not {endpoint!r}", id=pre_id)
        return await self.run(pre.agent, endpoint, body, preauthorization=pre_id)

    async def authorize(
        self, agent: str, endpoint: str, body: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[Transaction, bool]:
        """A hold for a caller that forwards by itself: (transaction, replayed). Raises Denied."""
        from ledger.errors import denial_error

        quote = await self.quote(endpoint, body)
        auth = await self.db(self.ledger.governor.authorize, agent, quote, body, idempotency_key=idempotency_key)
        if not auth.allowed:
            error = denial_error(auth.transaction, auth.transaction.denials, agent)
            await self._denied(error)
            raise error
        if not auth.replayed:
            self.metrics.observe_decision("allowed", quote.amount)
        return auth.transaction, auth.replayed

    async def _denied(self, error: Denied) -> None:
        outcome = "rate_limited" if isinstance(error, RateLimited) else "denied"
        self.metrics.observe_decision(outcome)
        if isinstance(error, RateLimited):
            error.details["retry_after"] = await self.retry_after(error)

    async def retry_after(self, error: Denied) -> int:
        """Seconds until the failing rate limits may allow a request: the end of the current
        period, or of the current bucket of a rolling window (at least 1)."""
        from ledger.policy.periods import granularity, period_start

        try:
            rules = {r.name: r for r in await self.db(self.ledger.admin.rules)}
        except Exception:  # noqa: BLE001 - a hint only
            return 1
        now = self.ledger.clock()
        wait = 1
        for denial in error.denials:
            rule = rules.get(denial.rule or "")
            if rule is None:
                continue
            if rule.window:
                from ledger.policy.periods import parse_window

                g = granularity(parse_window(rule.window))
                seconds = g - int(now.timestamp()) % g
            elif rule.period:
                start = period_start(rule.period, now)
                length = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}.get(
                    rule.period, timedelta(days=1)
                )
                seconds = int((start + length - now).total_seconds()) + 1
            else:
                continue
            wait = max(wait, seconds)
        return wait

    def _ledger_figures(self) -> dict[str, Decimal]:
        from sqlalchemy import func, select

        from ledger.store.db import reading
        from ledger.store.models import transactions

        t = transactions.c
        with reading(self.ledger.engine) as conn:
            rows = conn.execute(
                select(t.status, func.sum(t.estimated_cost))
                .where(t.status.in_((TxStatus.pending, TxStatus.unknown)))
                .group_by(t.status)
            ).all()
        found = {TxStatus(r[0]).value: r[1] for r in rows}
        return {"held": found.get("pending") or Decimal(0), "unknown": found.get("unknown") or Decimal(0)}


async def _hop(pool: concurrent.futures.ThreadPoolExecutor, fn: Callable[[], T]) -> T:
    """`fn()` in `pool`, awaited: one executor future resolved by one `call_soon_threadsafe` (about
    half of `anyio.to_thread.run_sync`'s CPU per hop). Like anyio's worker threads, a call once
    submitted always runs to its end: a cancelled caller waits for it (a transaction in flight
    ends as it would have), then the cancellation goes on."""
    loop = asyncio.get_running_loop()
    job = pool.submit(fn)
    done = loop.create_future()
    job.add_done_callback(partial(_wake, loop, done))
    cancelled = None
    while True:
        try:
            await done
            break
        except asyncio.CancelledError as exc:
            cancelled = exc
            if job.done():
                break
            done = loop.create_future()
            job.add_done_callback(partial(_wake, loop, done))
    if cancelled is not None:
        raise cancelled
    return job.result()


def _wake(loop: asyncio.AbstractEventLoop, done: asyncio.Future[None], _job: object) -> None:
    """A pool job ended (in its thread): resolve its waiter on the event loop."""
    try:
        loop.call_soon_threadsafe(_resolve, done)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class MeasuredUpstream:
    """The worker's `AsyncUpstream`, observing every answer's latency in the metrics."""

    def __init__(self, inner: AsyncUpstream, metrics: Metrics) -> None:
        self.inner, self.metrics = inner, metrics

    async def call(self, endpoint: str, body: Mapping[str, Any], fal_key: str) -> Any:
        try:
            answer = await self.inner.call(endpoint, body, fal_key)
        except UpstreamFailure as failure:
            if failure.latency_ms is not None:
                self.metrics.upstream_latency.observe(failure.latency_ms / 1000)
            raise
        self.metrics.upstream_latency.observe(answer.latency_ms / 1000)
        return answer

    async def aclose(self) -> None:
        await self.inner.aclose()
