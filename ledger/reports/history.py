"""Browsing the ledger: transactions newest first, filtered, one keyset page at a time.

A page is read by `(created_at, id)` descending from a cursor (the last row of the previous
page), never by OFFSET and never with a COUNT over the table, so page 1 and page 20,000 of a
ledger of millions cost the same: each is one index range scan that stops after `limit + 1`
rows (the indexes on `created_at`, `(agent_id, created_at)` and `(status, created_at)`).

`History(engine).page(...)` serves the dashboard's Transactions and Denials pages;
`History.each(...)` streams every matching transaction (for a CSV), in the same order, in
keyset batches of short read transactions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, or_, select

from pricing import PriceBook, default_book

from ..errors import InvalidRequest
from ..records import Transaction
from ..store.db import reading
from ..store.hotpath import TX_FIELDS
from ..store.models import agents, transactions
from ..store.queries import transaction_record
from .filters import Filter, check_filter, transaction_terms

DEFAULT_PAGE = 50
MAX_PAGE = 500
#: Rows per read transaction when streaming every match.
BATCH = 2000
MAX_ID = 2**63 - 1  #: transaction ids are BIGINT
_CURSOR = re.compile(r"^([0-9]{1,17})\.([0-9]{1,19})$")

#: The columns a `Transaction` record is built from (never the stored request or result bodies).
_COLUMNS = tuple(name for name in TX_FIELDS if name != "agent_id")


@dataclass(frozen=True, slots=True)
class TransactionFilter:
    """Which transactions: each field None means any. `since` inclusive, `until` exclusive (UTC);
    `model` is the price book's model name (an endpoint or alias given is resolved to it)."""

    agent: str | None = None
    model: str | None = None
    operation: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    agent_id: int | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        from ..clock import iso

        return {
            "agent": self.agent,
            "model": self.model,
            "operation": self.operation,
            "status": self.status,
            "since": iso(self.since),
            "until": iso(self.until),
        }


@dataclass(frozen=True, slots=True)
class TransactionPage:
    """One page of transactions, newest first; `next_cursor` reads the page after it (None: last page)."""

    filter: TransactionFilter
    transactions: tuple[Transaction, ...]
    next_cursor: str | None
    cursor: str | None  #: the cursor this page was read from (None: the first page)

    def to_json(self) -> dict[str, Any]:
        return {
            "filter": self.filter.to_json(),
            "transactions": [t.to_json() for t in self.transactions],
            "next_cursor": self.next_cursor,
        }


def encode_cursor(created_at: datetime, tx_id: int) -> str:
    """The position just after a transaction: microseconds since the epoch (UTC) and its id."""
    delta = created_at.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return f"{micros}.{tx_id}"


def decode_cursor(text: str) -> tuple[datetime, int]:
    """(created_at, id) of a cursor; InvalidRequest if it is not one `encode_cursor` made."""
    match = _CURSOR.match(text or "")
    if not match:
        raise InvalidRequest(f"cursor: {text[:40]!r} is not a page cursor", field="cursor")
    try:
        when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(match.group(1)))
    except OverflowError:
        raise InvalidRequest("cursor: out of range", field="cursor") from None
    tx_id = int(match.group(2))
    if tx_id > MAX_ID:
        raise InvalidRequest("cursor: out of range", field="cursor")
    return when, tx_id


class History:
    """Transactions of one ledger database, filtered and paged by keyset (see the module docstring).

    `book` names models (an alias or image-to-image endpoint resolves to its model), as the reports do."""

    def __init__(self, engine: Engine, *, book: PriceBook | None = None) -> None:
        self.engine = engine
        self.book = book or default_book()

    def check(
        self,
        *,
        agent: str | None = None,
        model: str | None = None,
        operation: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> TransactionFilter:
        """The filter, validated: InvalidRequest (a malformed agent name, an unknown status or
        operation, until not after since, a date outside the calendar) or NotFound (an agent or
        a model the ledger does not know), each naming its field."""
        with reading(self.engine) as conn:
            return self._check(conn, agent, model, operation, status, since, until)

    def page(
        self,
        where: TransactionFilter | None = None,
        *,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE,
    ) -> TransactionPage:
        """The `limit` newest transactions matching `where` after `cursor` (None: from the newest).
        `where` should come from `check` (it is validated again here)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit: must be between 1 and {MAX_PAGE} (got {limit})", field="limit")
        after = decode_cursor(cursor) if cursor else None
        where = where or TransactionFilter()
        with reading(self.engine) as conn:
            f = self._revalidate(conn, where)
            rows = self._rows(conn, f, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if rows else None
        next_cursor = encode_cursor(last.created_at, last.id) if more and last is not None else None
        return TransactionPage(f, tuple(rows), next_cursor, cursor)

    def each(self, where: TransactionFilter | None = None, *, batch: int = BATCH) -> Iterator[Transaction]:
        """Every transaction matching `where`, newest first, read in keyset batches (one short read
        transaction each: a long export never holds a snapshot or a connection for its whole length)."""
        where = where or TransactionFilter()
        with reading(self.engine) as conn:
            f = self._revalidate(conn, where)
        after: tuple[datetime, int] | None = None
        while True:
            with reading(self.engine) as conn:
                rows = self._rows(conn, f, after, batch)
            yield from rows
            if len(rows) < batch:
                return
            after = (rows[-1].created_at, rows[-1].id)

    # --- internals -------------------------------------------------------------------------------

    def _revalidate(self, conn: Connection, f: TransactionFilter) -> TransactionFilter:
        return self._check(conn, f.agent, f.model, f.operation, f.status, f.since, f.until)

    def _check(
        self,
        conn: Connection,
        agent: str | None,
        model: str | None,
        operation: str | None,
        status: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> TransactionFilter:
        f = check_filter(conn, self.book, since, until, agent, model, operation, status)
        return TransactionFilter(agent, f.model, operation, status, f.since, f.until, f.agent_id)

    def _rows(
        self, conn: Connection, f: TransactionFilter, after: tuple[datetime, int] | None, limit: int
    ) -> list[Transaction]:
        t = transactions.c
        where = transaction_terms(Filter(f.since, f.until, f.agent_id, f.model, f.operation, f.status))
        if after is not None:
            at, tx_id = after
            # (created_at, id) < (at, tx_id), written so an index on created_at bounds the scan.
            where.append(and_(t.created_at <= at, or_(t.created_at < at, t.id < tx_id)))
        query = (
            select(*(t[name] for name in _COLUMNS), agents.c.name.label("agent_name"))
            .join(agents, agents.c.id == t.agent_id)
            .where(*where)
            .order_by(t.created_at.desc(), t.id.desc())
            .limit(limit)
        )
        return [transaction_record(row, row.agent_name) for row in conn.execute(query)]
