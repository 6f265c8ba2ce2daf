"""The one way to reach the database: engines, transactions, schema version, error translation.

SQLite runs in WAL mode and every write transaction takes the write lock up front
(`BEGIN IMMEDIATE`), so a read-then-write can never fail with SQLITE_BUSY_SNAPSHOT;
waits for the lock are bounded by `PIXELGOV_DB_TIMEOUT`. PostgreSQL runs at READ
COMMITTED with bounded connect and lock timeouts.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, text

from .errors import DatabaseUnavailable, InvalidRequest, PixelgovError, SchemaBehind

#: The newest migration; `tests/test_migrations.py` checks it equals Alembic's head.
SCHEMA_HEAD = "0001_ledger"
READONLY = "pixelgov_readonly"


def db_timeout() -> float:
    return float(os.environ.get("PIXELGOV_DB_TIMEOUT", "10"))


def default_url() -> str:
    from platformdirs import user_data_dir

    return f"sqlite:///{Path(user_data_dir('pixelgov', appauthor=False)) / 'pixelgov.db'}"


def resolve_url(url: str | None) -> str:
    return url or os.environ.get("PIXELGOV_DATABASE_URL") or default_url()


@lru_cache(maxsize=16)
def engine_for(url: str) -> Engine:
    """One engine per URL per process."""
    timeout = db_timeout()
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": timeout, "isolation_level": None})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Straight to the driver: exec_driver_sql costs ~0.1 ms of Python per transaction.
            stmt = "BEGIN" if conn.get_execution_options().get(READONLY) else "BEGIN IMMEDIATE"
            try:
                conn.connection.dbapi_connection.execute(stmt)  # type: ignore[union-attr]
            except sqlite3.Error as err:  # e.g. "database is locked" after the busy timeout
                raise exc.DBAPIError.instance(stmt, (), err, sqlite3.Error, dialect=conn.dialect) from err

        return engine
    if url.startswith("postgresql"):
        url = url.replace("postgresql://", "postgresql+psycopg://", 1) if "+" not in url.split("://")[0] else url
        return create_engine(
            url, pool_pre_ping=False, pool_size=5, max_overflow=10,
            connect_args={"connect_timeout": max(1, int(timeout)),
                          "options": f"-c lock_timeout={int(timeout * 1000)}"},
        )
    return create_engine(url)


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction (SQLite: BEGIN IMMEDIATE)."""
    with engine.begin() as conn:
        yield conn


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction (SQLite: a deferred BEGIN that never takes the write lock)."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{READONLY: True})
        with conn.begin():
            yield conn


class Driver:
    """Hot-path statements sent straight to the DBAPI cursor of a SQLAlchemy connection.

    The governor's authorize/settle path runs a dozen small statements per request; through
    SQLAlchemy Core each one costs 60–300 µs of Python (cache key, compiled-cache lookup,
    execution context, result processing) — several times what SQLite needs to run it. Here
    the SQL is plain text written once per dialect, parameters are bound as the column types
    would bind them (`money` → nano-USD int, `ts` → the stored timestamp form), and driver
    errors are re-raised as SQLAlchemy's exception classes (IntegrityError, OperationalError…)
    so callers and `translate_db_error` see exactly what they saw before. The transaction stays
    SQLAlchemy's (`writing`/`reading`: BEGIN IMMEDIATE on SQLite, commit, rollback, pooling).
    """

    __slots__ = ("conn", "cur", "pg", "_error")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pg = conn.dialect.name == "postgresql"
        self.cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        self._error = conn.dialect.loaded_dbapi.Error

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        try:
            return self.cur.execute(sql, params)
        except self._error as err:
            raise self._wrap(err, sql, params) from err

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self.cur.executemany(sql, rows)
        except self._error as err:
            raise self._wrap(err, sql, rows) from err

    def one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> tuple[Any, ...] | None:
        self.execute(sql, params)
        return self.cur.fetchone()

    def all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        self.execute(sql, params)
        return self.cur.fetchall()

    @property
    def rowcount(self) -> int:
        return self.cur.rowcount

    @property
    def lastrowid(self) -> int:
        return self.cur.lastrowid

    def ts(self, value: datetime | None) -> Any:
        """A timestamp as `UTCDateTime` stores it: naive UTC (PostgreSQL), or SQLAlchemy's
        SQLite text form, so stored values sort and compare the same whichever path wrote them."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use ledger.clock")
        naive = value.astimezone(UTC).replace(tzinfo=None)
        return naive if self.pg else naive.strftime("%Y-%m-%d %H:%M:%S.%f")

    def _wrap(self, err: Exception, sql: str, params: Any) -> BaseException:
        """The driver's error as SQLAlchemy would raise it; a lost connection is invalidated
        so the pool does not hand it out again."""
        dialect = self.conn.dialect
        dbapi_conn = self.conn.connection.dbapi_connection  # type: ignore[union-attr]
        gone = dialect.is_disconnect(err, dbapi_conn, self.cur)
        if gone:
            self.conn.invalidate(err)
        return exc.DBAPIError.instance(sql, params, err, self._error, connection_invalidated=gone,
                                       dialect=dialect)


def db_datetime(value: Any) -> datetime | None:
    """A stored timestamp (PostgreSQL: naive datetime; SQLite: text) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except exc.DBAPIError:
            return None


def open_ledger(url: str | None = None, *, migrate_default: bool = True) -> Engine:
    """The engine for `url`, its schema checked: the default SQLite file is created and migrated
    on first use; any other database behind head is an error naming `pixelgov db upgrade`."""
    is_default = not url and not os.environ.get("PIXELGOV_DATABASE_URL")
    resolved = resolve_url(url)
    engine = engine_for(resolved)
    if resolved in _checked:
        return engine
    revision = current_revision(engine)
    if revision != SCHEMA_HEAD:
        if is_default and migrate_default:
            upgrade(resolved)
        else:
            where = engine.url.render_as_string(hide_password=True)
            state = f"is at revision {revision}" if revision else "has no pixelgov schema"
            raise SchemaBehind(f"the database {where} {state}; run `pixelgov db upgrade` "
                               f"(needs {SCHEMA_HEAD})")
    _checked.add(resolved)
    return engine


_checked: set[str] = set()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(list(migrations.__path__)[0])))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    engine = engine_for(url)  # creates the SQLite file's directory
    command.upgrade(alembic_config(url), revision)
    _checked.discard(url)
    if engine.dialect.name == "sqlite":
        # Alembic's own engine leaves a new file in rollback-journal mode; switching to WAL needs an
        # exclusive lock, so do it now rather than on the first (possibly contended) use.
        with engine.connect():
            pass


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)
    _checked.discard(url)


def translate_db_error(error: BaseException) -> PixelgovError | None:
    """A driver error as one clear line (exit 1), or None if it is not a database problem."""
    if isinstance(error, exc.OperationalError):
        msg = str(error.orig) if error.orig is not None else str(error)
        first = msg.strip().splitlines()[0] if msg.strip() else type(error).__name__
        if "locked" in first or "lock timeout" in first:
            return DatabaseUnavailable(f"database is busy: {first} (waited up to {db_timeout():g}s)")
        return DatabaseUnavailable(f"database unavailable: {first}")
    if isinstance(error, exc.InterfaceError | exc.ArgumentError | exc.NoSuchModuleError):
        return DatabaseUnavailable(f"database unavailable: {error}")
    if isinstance(error, exc.DataError):
        return InvalidRequest(f"the database refused a value: {_first_line(error)}")
    if isinstance(error, exc.DBAPIError):
        return DatabaseUnavailable(f"database error: {_first_line(error)}")
    return None


def _first_line(error: exc.DBAPIError) -> str:
    text = str(error.orig if error.orig is not None else error).strip()
    return text.splitlines()[0] if text else type(error).__name__
