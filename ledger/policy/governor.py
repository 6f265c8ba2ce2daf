"""The governor: check, authorize (hold), settle, complete, fail, void, expire, mark unknown.

The orchestration of every money-moving step, used by the CLI and the gateway alike.
Each operation is one short database transaction. Authorization reads the matching
rules, locks the counted ones (PostgreSQL: `SELECT … FOR NO KEY UPDATE` in id order;
SQLite: the write lock that `BEGIN IMMEDIATE` takes), reads their counters, decides,
and writes the transaction, its estimate, its holds and the counter increments before
committing — so the check and the hold are one atomic step and no number of
concurrent processes can overspend a `deny` budget.

Counters (`rule_counters`) make a rule check independent of ledger size; the `holds`
rows record which counters a transaction was counted in, so every later transition
moves exactly those, by the difference `ledger.store.spend` defines between what the
transaction counted before and after.

Lock order, everywhere (PostgreSQL): a transaction's own row (settle, fail, void,
mark unknown, adjust: `SELECT … FOR UPDATE`; expiry: its transactions' rows in id
order), then rule rows in id order, then counter rows (upserted in rule id order),
then the report rollup rows that database triggers write with a transaction or an
adjustment line (migration 0004; AFTER triggers run at the end of their statement,
and a status change locks its old group's row before its new one). Authorization
takes no transaction row lock.

The per-request statements live in `ledger.store.hotpath` (raw SQL on the DBAPI cursor);
the reads in `ledger.store.queries`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import IntegrityError

from ..errors import InvalidRequest, NotFound
from ..records import Transaction
from ..store.db import reading, writing
from ..store.queries import list_transactions, load_transaction
from .authorize import Authorizing
from .preauthorize import PreAuthorizing
from .settlement import Settling


class Governor(Authorizing, Settling, PreAuthorizing):
    """Decides, holds and settles spend for one ledger database.

    Every method is one short database transaction and returns typed records
    (`ledger.records`). Money is `Decimal` USD. Errors: `InvalidRequest` (bad input, nothing
    written), `NotFound` (unknown agent or transaction), `Conflict` (a state change the
    transaction's status does not allow), and database errors as SQLAlchemy raises them
    (`ledger.store.db.translate_db_error` turns those into `DatabaseUnavailable`).
    """

    def transactions(
        self,
        *,
        agent: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[Transaction]:
        """Transactions newest first: `since` inclusive, `until` exclusive (aware datetimes)."""
        with reading(self.engine) as conn:
            return list_transactions(conn, agent=agent, status=status, since=since, until=until, limit=limit)

    def name_request(self, tx_id: int, request_id: str) -> str:
        """Record the queue request id a gateway answered a submit with for transaction `tx_id`;
        a transaction that already has one (an idempotent retry) keeps it. Returns the id in force."""
        from ..store.models import queue_requests
        from ..store.queries import queue_request_id_of

        if not 1 <= len(request_id) <= 64:
            raise InvalidRequest("request_id: 1–64 characters", field="request_id")
        now = self.clock()
        try:
            with writing(self.engine) as conn:
                existing = queue_request_id_of(conn, tx_id)
                if existing is not None:
                    return existing
                conn.execute(
                    queue_requests.insert().values(request_id=request_id, transaction_id=tx_id, created_at=now)
                )
                return request_id
        except IntegrityError:  # a concurrent retry named it first
            with reading(self.engine) as conn:
                existing = queue_request_id_of(conn, tx_id)
            if existing is None:
                raise
            return existing

    def queued_transaction(self, request_id: str, *, detail: bool = False) -> Transaction:
        """The transaction of a gateway queue request id, in one read transaction (no write:
        status polls call this every 0.1 s). NotFound for an unknown id."""
        from ..store.queries import queued_transaction_id

        with reading(self.engine) as conn:
            tx_id = queued_transaction_id(conn, request_id)
            if tx_id is None:
                raise NotFound(f"no request {request_id!r}", request_id=request_id)
            return load_transaction(conn, tx_id, detail=detail)
