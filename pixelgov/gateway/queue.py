"""FAL's queue API on the gateway: submit (authorize and answer at once), forward in the
background, status, result, cancel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import partial
from typing import Any

from ledger.errors import Denied, InProgress, InvalidRequest, NotFound, UpstreamError
from ledger.forward.runner import RunOutcome, begin, conclude, conclude_failure, interrupted
from ledger.forward.upstream import UpstreamFailure
from ledger.records import Transaction, TxStatus
from pricing import Quote, upstream_body

from .errors import Cancelled, QueueFull
from .identity import Identity
from .worker import Queued, Worker, log, new_request_id


class QueuedRuns(Worker):
    """The worker's queued runs."""

    async def submit(
        self, agent: str, endpoint: str, body: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[str, Transaction]:
        """Authorize a queued run and start forwarding it in the background: (request id, the
        pending transaction). An idempotent retry answers the first submit's request id."""
        fal_key = self.require_fal_key()
        quote = await self.quote(endpoint, body, forwarded=True)
        gov = self.ledger.governor
        full = self._places >= self.config.max_queued
        agent_full = self._agent_places.get(agent, 0) >= self.config.max_queued_per_agent
        if (full or agent_full) and not (
            idempotency_key is not None and await self.db(gov.used_idempotency_key, agent, idempotency_key)
        ):  # (a retry of a submit already made is answered below: it takes no new place)
            which = (
                f"{self._places} queued requests (PIXELGOV_MAX_QUEUED)"
                if full
                else f"{self._agent_places[agent]} queued requests of agent {agent!r} (PIXELGOV_MAX_QUEUED_PER_AGENT)"
            )
            raise QueueFull(
                f"this gateway worker already keeps {which}; retry later: nothing was authorized", retry_after=1
            )
        # The place is taken before the first await, so a burst of submits cannot all pass the check.
        self._take_place(agent)
        entry: Queued | None = None
        try:
            try:
                started = await self.db(
                    begin,
                    gov,
                    agent=agent,
                    quote=quote,
                    body=body,
                    fal_key=fal_key,
                    idempotency_key=idempotency_key,
                    forwarder="gateway",
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
            entry = Queued(tx.id, agent)  # the place is the entry's from here
            self._queued[request_id] = entry
            task = asyncio.create_task(self._forward(request_id, entry, quote, body, fal_key))
            entry.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _task: self._free_place(entry))
            return request_id, tx
        finally:
            if entry is None:
                self._give_place(agent)

    def _take_place(self, agent: str) -> None:
        self._places += 1
        self._agent_places[agent] = self._agent_places.get(agent, 0) + 1

    def _give_place(self, agent: str) -> None:
        self._places -= 1
        left = self._agent_places.get(agent, 1) - 1
        if left > 0:
            self._agent_places[agent] = left
        else:
            self._agent_places.pop(agent, None)

    def _free_place(self, entry: Queued | None) -> None:
        """A queued run ended or was cancelled: its places (the worker's, its agent's) are free (once)."""
        if entry is not None and entry.counted:
            entry.counted = False
            self._give_place(entry.agent)

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
        if not identity.owns(tx.agent):
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
