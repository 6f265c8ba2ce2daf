"""The one way to reach the database: engines, transactions, schema version, error translation.

SQLite runs in WAL mode and every write transaction takes the write lock up front
(`BEGIN IMMEDIATE`), so a read-then-write can never fail with SQLITE_BUSY_SNAPSHOT;
waits for the lock are bounded by the configured timeout (`Settings.db_timeout`). PostgreSQL runs at READ
COMMITTED with bounded connect and lock timeouts.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, text

from ..errors import DatabaseUnavailable, InvalidRequest, PixelgovError, SchemaBehind
from ..settings import DEFAULT_DB_TIMEOUT

#: The newest migration; `tests/test_migrations.py` checks it equals Alembic's head.
SCHEMA_HEAD = "0007_forwarder"
READONLY = "pixelgov_readonly"


def _create_private(path: Path) -> None:
    """Create `path`'s missing directories (0700) and the empty database file (0600) if absent;
    existing files and directories are left as their owner set them."""
    try:
        missing = [p for p in reversed(path.parents) if not p.exists()]
        for directory in missing:
            directory.mkdir(mode=0o700)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        if path.is_dir():
            raise DatabaseUnavailable(f"database unavailable: {path} is a directory") from None
    except OSError as err:
        raise DatabaseUnavailable(f"database unavailable: cannot create {path} ({err.strerror or err})") from None


def default_url() -> str:
    """The default ledger: a SQLite file in the user data directory."""
    from platformdirs import user_data_dir

    return f"sqlite:///{Path(user_data_dir('pixelgov', appauthor=False)) / 'pixelgov.db'}"


SUPPORTED = "sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"


def check_url(url: str) -> str:
    """`url` if pixelgov can use it (SQLite, or PostgreSQL through psycopg 3); InvalidRequest otherwise."""
    from sqlalchemy.engine import make_url

    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest(f"database: an empty URL; give {SUPPORTED}", field="database")
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise InvalidRequest(f"database: {url!r} is not a database URL; give {SUPPORTED}", field="database") from None
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg"):
        raise InvalidRequest(f"database: {parsed.drivername!r} is not supported; give {SUPPORTED}", field="database")
    if parsed.drivername.startswith("sqlite") and not parsed.database:
        raise InvalidRequest(f"database: {url!r} names no file; give {SUPPORTED}", field="database")
    return url


def make_engine(url: str, *, timeout: float = DEFAULT_DB_TIMEOUT) -> Engine:
    """A new engine for `url`: SQLite in WAL mode with BEGIN IMMEDIATE writes, or PostgreSQL with
    bounded connect and lock timeouts. Waits for a busy database are bounded by `timeout` seconds.
    The caller owns it (`Ledger` keeps one and disposes it on close).

    A SQLite file (and its directory) that pixelgov creates is private to the user: the directory
    0700, the file 0600, and SQLite gives its WAL and shared-memory files the file's permissions.
    Raises InvalidRequest for an unsupported URL, DatabaseUnavailable when the file cannot be made."""
    check_url(url)
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:" and not path.startswith("file:"):
            _create_private(Path(path))
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
            url,
            pool_pre_ping=False,
            pool_size=5,
            max_overflow=10,
            connect_args={"connect_timeout": max(1, int(timeout)), "options": f"-c lock_timeout={int(timeout * 1000)}"},
        )
    return create_engine(url)


def dialect_insert(dialect_name: str) -> Any:
    """The dialect's own `insert` (SQLite or PostgreSQL): the one with `on_conflict_do_nothing` /
    `on_conflict_do_update`, which both databases support."""
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


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


def current_revision(engine: Engine) -> str | None:
    """The database's Alembic revision (None: no pixelgov schema). A read: it never waits for
    SQLite's write lock."""
    try:
        with reading(engine) as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except exc.OperationalError as error:
        if "no such table" in str(error.orig) or "does not exist" in str(error.orig):
            return None
        raise
    except exc.ProgrammingError:  # PostgreSQL: relation "alembic_version" does not exist
        return None


def check_schema(engine: Engine, *, migrate: bool = False) -> None:
    """Make sure the database is at this pixelgov's schema: migrate it when `migrate` (the default
    SQLite file is created and migrated on first use); otherwise SchemaBehind names the revisions."""
    revision = current_revision(engine)
    if revision == SCHEMA_HEAD:
        return
    if migrate:
        upgrade_engine(engine)
        return
    where = engine.url.render_as_string(hide_password=True)
    state = f"is at revision {revision}" if revision else "has no pixelgov schema"
    raise SchemaBehind(
        f"the database {where} {state}; it needs a schema upgrade to {SCHEMA_HEAD}",
        revision=revision,
        head=SCHEMA_HEAD,
        reason="upgrade",
    )


def migrations_dir() -> Path:
    """The Alembic script directory (the `migrations` package). Found by its import spec, not
    imported: the migrations read the store's models, so the store must not import them."""
    spec = importlib.util.find_spec("migrations")
    assert spec is not None and spec.submodule_search_locations, "the migrations package is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    """Apply migrations to `engine`'s database up to `revision` (InvalidRequest for an unknown one)."""
    from alembic import command

    url = engine.url.render_as_string(hide_password=False)
    _alembic(command.upgrade, alembic_config(url), revision)
    if engine.dialect.name == "sqlite":
        # Alembic's own engine leaves a new file in rollback-journal mode; switching to WAL needs an
        # exclusive lock, so do it now rather than on the first (possibly contended) use.
        with engine.connect():
            pass


def upgrade(url: str, revision: str = "head", *, timeout: float = DEFAULT_DB_TIMEOUT) -> None:
    """Apply migrations to the database at `url` up to `revision`."""
    engine = make_engine(url, timeout=timeout)  # creates the SQLite file's directory
    try:
        upgrade_engine(engine, revision)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    """Revert migrations down to `revision` (`base` removes every table)."""
    from alembic import command

    _alembic(command.downgrade, alembic_config(url), revision)


def _alembic(step: Any, config: Any, revision: str) -> None:
    from alembic.util import CommandError

    if not revision or not revision.strip():
        raise InvalidRequest("revision: an empty revision; give one such as head", field="revision")
    from alembic.script.revision import RevisionError

    try:
        step(config, revision)
    except (CommandError, RevisionError) as err:
        raise InvalidRequest(f"revision: {err}", field="revision") from None
    except AssertionError:  # Alembic asserts on relative revisions past either end (e.g. head+1)
        raise InvalidRequest(f"revision: {revision!r} is beyond the migrations there are", field="revision") from None


def translate_db_error(error: BaseException, *, timeout: float | None = None) -> PixelgovError | None:
    """A driver error as one clear line (exit 1), or None if it is not a database problem.
    `timeout`: the bounded wait that was configured, named in a "busy" message."""
    if isinstance(error, exc.OperationalError):
        msg = str(error.orig) if error.orig is not None else str(error)
        first = msg.strip().splitlines()[0] if msg.strip() else type(error).__name__
        if "locked" in first or "lock timeout" in first:
            waited = f" (waited up to {timeout:g}s)" if timeout is not None else ""
            return DatabaseUnavailable(f"database is busy: {first}{waited}")
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
