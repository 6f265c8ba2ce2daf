"""Shared fixtures: a fresh price book per test, real databases (SQLite files and PostgreSQL),
a controllable clock, and the fake FAL upstream."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def running_on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test touches the user's real data dir, database or FAL key."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("HOME", str(home))
    for var in (
        "PIXELGOV_DATABASE_URL",
        "FAL_KEY",
        "PIXELGOV_UPSTREAM_URL",
        "PIXELGOV_HOLD_TTL",
        "PIXELGOV_AUTO_CREATE_AGENTS",
        "PIXELGOV_UPSTREAM_TIMEOUT",
        "PIXELGOV_PRICE_BOOK",
        "PIXELGOV_DB_TIMEOUT",
    ):
        monkeypatch.delenv(var, raising=False)


class FakeClock:
    """A clock tests move by hand: never sleep."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 0, **kw: float) -> datetime:
        self.now += timedelta(seconds=seconds, **kw)
        return self.now

    def set(self, when: datetime) -> datetime:
        self.now = when if when.tzinfo else when.replace(tzinfo=UTC)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --- databases -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test gets a copy (migrating per test would be slow)."""
    from ledger.store import db

    path = tmp_path_factory.mktemp("template") / "template.db"
    db.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(_sqlite_template: Path, tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "ledger.db"
    shutil.copy(_sqlite_template, path)
    return f"sqlite:///{path}"


@contextmanager
def scratch_engine(url: str) -> Iterator[Any]:
    """An engine of the tests' own for a few statements, disposed afterwards."""
    from ledger.store import db

    engine = db.make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def postgres_url() -> str:
    """The configured PostgreSQL server. Its database is only the maintenance connection: the tests
    create, migrate and drop databases of their own (`pixelgov_test_<pid>_<random>`) and never write to it."""
    return os.environ.get("PIXELGOV_TEST_POSTGRES_URL", PG_DEFAULT)


PG_TEST_PREFIX = "pixelgov_test_"


def _pg_dsn(url: str, database: str | None = None) -> str:
    """A libpq URI for psycopg (optionally for another database on the same server)."""
    from sqlalchemy.engine import make_url

    u = make_url(url).set(drivername="postgresql")
    return (u.set(database=database) if database else u).render_as_string(hide_password=False)


def _postgres_reachable(url: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(_pg_dsn(url), connect_timeout=3):
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The configured server URL; skips when unreachable, but fails on CI."""
    url = postgres_url()
    problem = _postgres_reachable(url)
    if problem:
        message = f"PostgreSQL at {url} is unreachable ({problem})"
        if running_on_ci():
            pytest.fail(message + ": CI requires it", pytrace=False)
        pytest.skip(message + "; set PIXELGOV_TEST_POSTGRES_URL to run the PostgreSQL tests")
    return url


def create_pg_database(server_url: str) -> str:
    """A new, empty, uniquely named database on the server; its SQLAlchemy URL."""
    import secrets

    import psycopg
    from sqlalchemy.engine import make_url

    name = f"{PG_TEST_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(_pg_dsn(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return (
        make_url(server_url).set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    )


def drop_pg_database(server_url: str, url: str) -> None:
    """Drop a database made by `create_pg_database` (and only such a one)."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = make_url(url).database or ""
    assert name.startswith(PG_TEST_PREFIX) and name != make_url(server_url).database, name
    with psycopg.connect(_pg_dsn(server_url), autocommit=True) as conn:
        force = " WITH (FORCE)" if conn.info.server_version >= 130000 else ""
        if not force:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"{force}')


@contextmanager
def pg_database(server_url: str, *, migrated: bool) -> Iterator[str]:
    """A database of the tests' own for the duration of the block, dropped afterwards (even on failure)."""
    from ledger.store import db

    url = create_pg_database(server_url)
    try:
        if migrated:
            db.upgrade(url)
        yield url
    finally:
        drop_pg_database(server_url, url)


@pytest.fixture(scope="session")
def _pg_migrated(pg_server: str) -> Iterator[str]:
    """This session's own migrated database (subprocesses get its URL through `pg_url`)."""
    with pg_database(pg_server, migrated=True) as url:
        yield url


def reset_postgres(url: str) -> None:
    """Drop every pixelgov table of one of the tests' own databases (never the configured one)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    assert (make_url(url).database or "").startswith(PG_TEST_PREFIX), url
    with scratch_engine(url) as engine, engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))


@pytest.fixture
def pg_url(_pg_migrated: str) -> str:
    """The session's own database, migrated and emptied (TRUNCATE) for this test."""
    from sqlalchemy import text

    from ledger.store import db
    from ledger.store.models import Base

    url = _pg_migrated
    with scratch_engine(url) as engine:
        if db.current_revision(engine) != db.SCHEMA_HEAD:  # a test left it elsewhere
            reset_postgres(url)
            db.upgrade(url)
        with engine.begin() as conn:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)  # every table the models know
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, migrated, empty ledger: once on a SQLite file, once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def ledger(db_url: str, clock: FakeClock) -> Iterator[Any]:
    """A `Ledger` on the fresh database, with the fake clock, a 900 s hold TTL and auto-create."""
    from ledger import Ledger, Settings

    with Ledger(db_url, clock=clock, settings=Settings(hold_ttl=900, auto_create_agents=True)) as opened:
        yield opened


@pytest.fixture
def engine(ledger):  # type: ignore[no-untyped-def]
    return ledger.engine


@pytest.fixture
def gov(ledger):  # type: ignore[no-untyped-def]
    return ledger.governor


@pytest.fixture
def admin(ledger):  # type: ignore[no-untyped-def]
    return ledger.admin


# --- the fake upstream -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def _shared_fake() -> Iterator[object]:
    from fake_fal import FakeFal

    with FakeFal() as server:
        yield server


@pytest.fixture
def fake_fal(_shared_fake) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """The fake FAL upstream: one server per module (starting one is most of a test's time), reset per test."""
    _shared_fake.reset()
    yield _shared_fake
    _shared_fake.reset()
