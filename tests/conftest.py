"""Shared fixtures: a fresh price book per test, real databases (SQLite files and PostgreSQL),
a controllable clock, and the fake FAL upstream."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pricing import book as book_module

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def running_on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def _fresh_price_book(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test reads PIXELGOV_PRICE_BOOK afresh (the book is cached per process)."""
    monkeypatch.delenv("PIXELGOV_PRICE_BOOK", raising=False)
    book_module.active_book.cache_clear()
    yield
    book_module.active_book.cache_clear()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test touches the user's real data dir, database or FAL key."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("HOME", str(home))
    for var in ("PIXELGOV_DATABASE_URL", "FAL_KEY", "PIXELGOV_UPSTREAM_URL", "PIXELGOV_HOLD_TTL",
                "PIXELGOV_AUTO_CREATE_AGENTS", "PIXELGOV_UPSTREAM_TIMEOUT"):
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
    from ledger import db

    path = tmp_path_factory.mktemp("template") / "template.db"
    url = f"sqlite:///{path}"
    db.upgrade(url)
    db.engine_for(url).dispose()
    db.engine_for.cache_clear()
    return path


@pytest.fixture
def sqlite_url(_sqlite_template: Path, tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "ledger.db"
    shutil.copy(_sqlite_template, path)
    url = f"sqlite:///{path}"
    yield url
    _dispose(url)


def _dispose(url: str) -> None:
    from ledger import db

    db.engine_for(url).dispose()
    db._checked.discard(url)


def postgres_url() -> str:
    return os.environ.get("PIXELGOV_TEST_POSTGRES_URL", PG_DEFAULT)


def _postgres_reachable(url: str) -> str | None:
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


@pytest.fixture(scope="session")
def _pg_migrated() -> str:
    url = postgres_url()
    problem = _postgres_reachable(url)
    if problem:
        message = f"PostgreSQL at {url} is unreachable ({problem})"
        if running_on_ci():
            pytest.fail(message + ": CI requires it", pytrace=False)
        pytest.skip(message + "; set PIXELGOV_TEST_POSTGRES_URL to run the PostgreSQL tests")
    from ledger import db

    reset_postgres(url)
    db.upgrade(url)
    return url


def reset_postgres(url: str) -> None:
    """Drop every pixelgov table (a clean slate for migration tests)."""
    from sqlalchemy import text

    from ledger import db

    engine = db.engine_for(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    db._checked.discard(url)


_TABLES = ("alerts", "facts", "cost_lines", "holds", "rule_counters", "transactions", "spending_rules",
           "audit_log", "agents")


@pytest.fixture
def pg_url(_pg_migrated: str) -> Iterator[str]:
    from sqlalchemy import text

    from ledger import db

    url = _pg_migrated
    if db.current_revision(db.engine_for(url)) != db.SCHEMA_HEAD:  # a migration test left it elsewhere
        reset_postgres(url)
        db.upgrade(url)
    with db.engine_for(url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(_TABLES)} RESTART IDENTITY CASCADE"))
    yield url
    _dispose(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, migrated, empty ledger: once on a SQLite file, once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def engine(db_url: str):  # type: ignore[no-untyped-def]
    from ledger.db import open_ledger

    return open_ledger(db_url)


@pytest.fixture
def gov(engine, clock: FakeClock):  # type: ignore[no-untyped-def]
    from ledger.governor import Governor

    return Governor(engine, clock=clock, hold_ttl=900, auto_create=True)


@pytest.fixture
def admin(engine, clock: FakeClock):  # type: ignore[no-untyped-def]
    from ledger.admin import Admin

    return Admin(engine, clock=clock)


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
