"""The gateway's service layer: governed runs, queued runs, identities — no HTTP here.

One `Gateway` per worker process: it owns the worker's `Ledger`, its shared
`AsyncUpstream` (one httpx.AsyncClient, bounded pool) and a bounded pool of threads for
the ledger's short database transactions. Every money step is the library's
(`ledger.forward.runner`: `run_governed_async`, and for the queue its building blocks `begin`,
`conclude`, `conclude_failure`, `interrupted`), so the gateway and `pixelgov run` keep the
ledger right in the same ways.

Queue semantics (FAL's queue API): a submit authorizes (the hold) and answers at once; the
worker then forwards the request in a background task and settles it. Status polls only
read. A cancel releases the hold (`voided`) if this worker has not sent the request yet
(it waits for an upstream connection); a request already sent cannot be recalled and is
settled at its real cost (the cancel answers 400 with its status). A worker that stops
lets its queued runs finish for `shutdown_grace` seconds, then ends them as the runner
does for any interrupted run (`failed` if not sent, `unknown` if sent).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import time
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
from ledger.errors import Denied, InProgress, InvalidRequest, NotFound, RateLimited, UpstreamError
from ledger.forward.runner import RunOutcome, begin, conclude, conclude_failure, interrupted, run_governed_async
from ledger.forward.upstream import AsyncUpstream, UpstreamConfig, UpstreamFailure
from ledger.policy.access import SERVICE_KEY_PREFIX
from ledger.policy.agents import hash_api_key
from ledger.records import Decision, Transaction, TxStatus
from ledger.validation import validate_agent_name
from pricing import Quote, upstream_body

from .config import GatewayConfig
from .errors import Cancelled, QueueFull, Unauthorized
from .metrics import Metrics

log = logging.getLogger("pixelgov.gateway")
T = TypeVar("T")

#: Threads that read upscale inputs' sizes from their hosts (bounded in bytes and seconds each).
PROBE_THREADS = 8
#: Known keys remembered per worker (then the cache starts over: a bound, not an LRU).
_KEY_CACHE_SIZE = 10_000
#: An `image_url` the gateway may read or forward: never a path on the server's disk.
_IMAGE_SCHEMES = ("http", "https")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request speaks for: an agent by its own key, or by a service (or admin) key that
    names the agent in `X-Pixelgov-Agent`."""

    agent: str | None  #: None: a service or admin key without an agent header
    kind: str  #: "agent" | "service" | "admin"
    key_name: str | None = None  #: the service key's name

    def may_see(self, tx: Transaction) -> bool:
        """An agent sees its own transactions only; a service or admin key speaks for any agent."""
        return self.kind != "agent" or tx.agent == self.agent

    def require_agent(self) -> str:
        if self.agent is None:
            raise InvalidRequest(
                "X-Pixelgov-Agent: a service key must name the agent it speaks for (header X-Pixelgov-Agent: NAME)",
                field="X-Pixelgov-Agent",
            )
        return self.agent


@dataclass
class Queued:
    """A queued run this worker holds: not sent yet while it waits for an upstream slot."""

    tx_id: int
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


class Gateway:
    """A worker's gateway: the ledger, the upstream, the thread pool, the queue, the metrics."""

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
        self._tasks: set[asyncio.Task[None]] = set()
        self._keys: dict[str, tuple[tuple[str, str], float]] = {}
        self.started_at = datetime.now(UTC)

    # --- lifecycle ------------------------------------------------------------------------------

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

    # --- threads --------------------------------------------------------------------------------

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

    # --- identity -------------------------------------------------------------------------------

    def is_admin_token(self, token: str) -> bool:
        expected = self.config.admin_token
        return expected is not None and hmac.compare_digest(token.encode(), expected.encode())

    async def identify(self, key: str, agent_header: str | None) -> Identity:
        """The identity of an API key (an agent's, a service key, or the admin token); 401 otherwise.

        A known key is remembered for `key_cache_seconds` (by its hash), saving a database read per
        request: a rotated or revoked key may keep working that long on a worker that saw it."""
        if self.is_admin_token(key):
            return Identity(self._agent_name(agent_header), "admin")
        digest = hash_api_key(key)
        cached = self._keys.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] >= now:
            found: tuple[str, str] | None = cached[0]
        else:
            found = await self._lookup(key)
            if found is None:
                self._keys.pop(digest, None)
                raise Unauthorized("unknown API key")
            if self.config.key_cache_seconds > 0:
                if len(self._keys) >= _KEY_CACHE_SIZE:
                    self._keys.clear()
                self._keys[digest] = (found, now + self.config.key_cache_seconds)
        assert found is not None
        kind, name = found
        if kind == "service":
            return Identity(self._agent_name(agent_header), "service", name)
        if agent_header is not None and agent_header != name:
            raise Unauthorized(f"X-Pixelgov-Agent: this key belongs to agent {name!r}, not {agent_header!r}")
        return Identity(name, "agent")

    async def _lookup(self, key: str) -> tuple[str, str] | None:
        if key.startswith(SERVICE_KEY_PREFIX):
            service = await self.db(self.ledger.admin.service_key_by_secret, key)
            return ("service", service.name) if service is not None else None
        agent = await self.db(self.ledger.admin.agent_by_api_key, key)
        return ("agent", agent.name) if agent is not None else None

    @staticmethod
    def _agent_name(header: str | None) -> str | None:
        if header is None:
            return None
        validate_agent_name(header)
        return header

    # --- pricing and decisions ------------------------------------------------------------------

    async def quote(self, endpoint: str, body: Mapping[str, Any]) -> Quote:
        """The exact quote; an upscale whose input size must be read from its image is read in a
        thread (bounded in bytes and seconds), anything else is priced on the event loop."""
        check_image_url(body)
        entry = self.ledger.book.endpoint(endpoint)  # ModelNotFound before anything else
        if entry.operation == "upscale" and body.get("input_size") is None:
            # Its own threads: a slow image host (up to the probe's bound) never holds a database slot.
            # `remote`: an agent's URL may not point the server at its own network (or files).
            return await anyio.to_thread.run_sync(
                partial(self.ledger.quote, endpoint, body, remote=True), limiter=self._probe_limiter
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

    # --- governed runs --------------------------------------------------------------------------

    async def run(
        self, agent: str, endpoint: str, body: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> RunOutcome:
        """Authorize, forward and settle (`run_governed_async`). Raises what it raises."""
        fal_key = self.require_fal_key()
        quote = await self.quote(endpoint, body)
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

    # --- the queue ------------------------------------------------------------------------------

    async def submit(
        self, agent: str, endpoint: str, body: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[str, Transaction]:
        """Authorize a queued run and start forwarding it in the background: (request id, the
        pending transaction). An idempotent retry answers the first submit's request id."""
        fal_key = self.require_fal_key()
        quote = await self.quote(endpoint, body)
        gov = self.ledger.governor
        if self._places >= self.config.max_queued and not (
            idempotency_key is not None and await self.db(gov.used_idempotency_key, agent, idempotency_key)
        ):  # (a retry of a submit already made is answered below: it takes no new place)
            raise QueueFull(
                f"this gateway worker already keeps {self._places} queued requests "
                f"(PIXELGOV_MAX_QUEUED); retry later: nothing was authorized",
                retry_after=1,
            )
        # The place is taken before the first await, so a burst of submits cannot all pass the check.
        self._places += 1
        entry: Queued | None = None
        try:
            try:
                started = await self.db(
                    begin, gov, agent=agent, quote=quote, body=body, fal_key=fal_key, idempotency_key=idempotency_key
                )
            except InProgress as exc:  # the same key still in flight: the same request
                tx = exc.details["transaction"]
                return await self.db(gov.name_request, tx.id, new_request_id()), tx
            except Denied as exc:
                await self._denied(exc)
                raise
            if isinstance(started, RunOutcome):  # an idempotent retry of a finished run
                tx = started.transaction
                return await self.db(gov.name_request, tx.id, new_request_id()), tx
            tx = started.transaction
            self.metrics.observe_decision("allowed", quote.amount)
            try:
                request_id = await self.db(gov.name_request, tx.id, new_request_id())
            except BaseException as exc:
                await asyncio.shield(self.in_thread(partial(interrupted, gov, tx.id, "before sending", exc)))
                raise
            entry = Queued(tx.id)  # the place is the entry's from here
            self._queued[request_id] = entry
            task = asyncio.create_task(self._forward(request_id, entry, quote, body, fal_key))
            entry.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _task: self._free_place(entry))
            return request_id, tx
        finally:
            if entry is None:
                self._places -= 1

    def _free_place(self, entry: Queued | None) -> None:
        """A queued run ended or was cancelled: its place in `PIXELGOV_MAX_QUEUED` is free (once)."""
        if entry is not None and entry.counted:
            entry.counted = False
            self._places -= 1

    async def _forward(
        self, request_id: str, entry: Queued, quote: Quote, body: Mapping[str, Any], fal_key: str
    ) -> None:
        """Send a queued run and settle it: the second half of `run_governed_async`, from the same
        building blocks (what each failure means for money is decided there, not here)."""
        gov = self.ledger.governor
        assert self._slots is not None and self.upstream is not None
        stage = "before sending"
        try:
            async with self._slots:
                if entry.cancelled:
                    return  # voided by the cancel
                entry.sent = True
                stage = "while sending"
                try:
                    answer = await self.upstream.call(quote.endpoint, upstream_body(body), fal_key)
                except UpstreamFailure as failure:
                    await self.in_thread(partial(conclude_failure, gov, entry.tx_id, quote, failure))
                stage = "after the answer"
                outcome = await self.in_thread(partial(conclude, gov, entry.tx_id, quote, answer))
                self.metrics.observe_transaction(outcome.transaction)
        except UpstreamError as exc:
            tx = exc.details.get("transaction")
            if tx is not None:
                self.metrics.observe_transaction(tx)
        except BaseException as exc:  # a shutdown or a bug: the transaction still ends
            await asyncio.shield(self.in_thread(partial(interrupted, gov, entry.tx_id, stage, exc)))
            if not isinstance(exc, Exception):
                raise
            log.error("queued run %s ended by %s", request_id, type(exc).__name__)
        finally:
            self._queued.pop(request_id, None)

    async def queued(self, identity: Identity, request_id: str, *, detail: bool = False) -> Transaction:
        """The transaction of a queue request id (a read); NotFound for another agent's."""
        if not 1 <= len(request_id) <= 64:
            raise NotFound(f"no request {request_id!r}", request_id=request_id)
        tx = await self.db(self.ledger.governor.queued_transaction, request_id, detail=detail)
        if not identity.may_see(tx):
            raise NotFound(f"no request {request_id!r}", request_id=request_id)
        return tx

    def queue_position(self, request_id: str) -> int | None:
        """This worker's queue position of a request not sent yet (0 = next), else None."""
        entry = self._queued.get(request_id)
        if entry is None or entry.sent:
            return None
        waiting = [rid for rid, e in self._queued.items() if not e.sent]
        return waiting.index(request_id)

    async def cancel(self, identity: Identity, request_id: str) -> Transaction:
        """Release a queued run that was not sent yet (voided). Raises Cancelled-free errors:
        InvalidRequest (already sent or finished, with its status)."""
        tx = await self.queued(identity, request_id)
        entry = self._queued.get(request_id)
        if entry is not None and not entry.sent and not entry.cancelled:
            entry.cancelled = True  # before any await: the forwarding task sees it
            self._free_place(entry)  # its task may wait for an upstream slot a while yet: it holds no place
            return await self.db(self.ledger.governor.void, tx.id, "cancelled before it was sent (queue cancel)")
        if tx.status == TxStatus.pending:
            raise InvalidRequest(
                f"request {request_id} was already sent upstream and cannot be recalled; it will "
                "be settled at its real cost",
                field="request_id",
                status="IN_PROGRESS",
            )
        raise InvalidRequest(
            f"request {request_id} has already finished ({tx.status.value})",
            field="request_id",
            status="ALREADY_COMPLETED",
        )

    async def result(self, identity: Identity, request_id: str) -> tuple[Transaction, Any]:
        """A finished queued run's transaction and the upstream's JSON; its error otherwise."""
        tx = await self.queued(identity, request_id, detail=True)
        if tx.status == TxStatus.completed:
            return tx, tx.detail.result if tx.detail else None
        raise queue_error(tx, request_id)

    # --- ledger figures -------------------------------------------------------------------------

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


def queue_error(tx: Transaction, request_id: str) -> Exception:
    """The error a queued run's result answers when it did not complete."""
    if tx.status == TxStatus.pending:
        return InvalidRequest(
            f"request {request_id} is still in progress", field="request_id", status="IN_PROGRESS", transaction=tx
        )
    if tx.status in (TxStatus.voided, TxStatus.expired):
        return Cancelled(
            f"request {request_id} was {'cancelled' if tx.status == TxStatus.voided else 'expired'} "
            "before it was sent: nothing spent",
            transaction=tx,
        )
    if tx.status == TxStatus.unknown:
        return UpstreamError(
            f"request {request_id}: {tx.outcome or 'no answer from the upstream'}; its estimate "
            "stays counted until it is settled or voided",
            reason="unknown",
            transaction=tx,
        )
    return UpstreamError(
        f"request {request_id} failed: {tx.outcome or tx.status.value}; nothing spent",
        upstream_status=tx.upstream_status,
        transaction=tx,
    )


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
