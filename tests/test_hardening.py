"""Reliability hardening (issue 8): no input, fault or hostile upstream can crash a command,
strand a hold, lose a paid answer or leave the ledger world-readable.

Each test names the defect it guards against; each failed before its fix.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import scratch_engine
from sqlalchemy import func, select

from ledger import Ledger, Settings, TxStatus
from ledger.errors import InProgress, InvalidRequest
from ledger.forward.runner import run_governed
from ledger.forward.upstream import Upstream, UpstreamConfig
from ledger.store.models import Base, alerts, cost_lines, rule_counters, transactions
from ledger.store.spend import counted
from pixelgov.cli import cli

sys.path.insert(0, str(Path(__file__).parent))

DEV = "fal-ai/flux/dev"
FAL_KEY = "fal-hardening-key-7d1e"
BODY = {"prompt": "a red fox"}
ESTIMATE = Decimal("0.01185")


def invoke(db_url: str, *args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, ["--db", db_url, *args], env=env)


def row_counts(db_url: str) -> dict[str, int]:
    with scratch_engine(db_url) as engine, engine.connect() as conn:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in Base.metadata.sorted_tables
        }


def one_error_line(result: Result) -> str:
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@contextmanager
def opened(db_url: str) -> Iterator[Ledger]:
    with Ledger(db_url, settings=Settings(hold_ttl=900, auto_create_agents=True)) as ledger:
        yield ledger


def counters_match_the_ledger(db_url: str) -> None:
    """Every rule's counters equal what the ledger's rows count (the one definition of spend)."""
    with scratch_engine(db_url) as engine, engine.connect() as conn:
        rows = conn.execute(
            select(transactions.c.id, transactions.c.status, transactions.c.estimated_cost, transactions.c.actual_cost)
        ).all()
        adjustments = dict(
            conn.execute(
                select(cost_lines.c.transaction_id, func.sum(cost_lines.c.amount))
                .where(cost_lines.c.kind == "adjustment")
                .group_by(cost_lines.c.transaction_id)
            ).all()
        )
        expected_spent = sum(
            (
                counted(r.status, r.estimated_cost, r.actual_cost, adjustments.get(r.id) or Decimal(0)).spent
                for r in rows
            ),
            Decimal(0),
        )
        expected_held = sum((counted(r.status, r.estimated_cost).held for r in rows), Decimal(0))
        got = conn.execute(select(func.sum(rule_counters.c.spent), func.sum(rule_counters.c.held))).one()
    assert (got[0] or 0, got[1] or 0) == (expected_spent, expected_held)


@pytest.fixture
def budgeted(db_url: str) -> str:
    """A daily budget for every agent, so the counters have something to count."""
    assert (
        invoke(
            db_url, "rules", "create", "--name", "daily", "--type", "spend-limit", "--limit", "10", "--period", "day"
        ).exit_code
        == 0
    )
    return db_url


# --- defect 4: nothing strands a hold -------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--upstream-url", "http://[::1"],
        ["--upstream-url", "http://"],
        ["--upstream-url", "ftp://example.test"],
        ["--params", '{"extra": NaN}'],
        ["--params", '{"extra": Infinity}'],
        ["--guidance", "inf"],
        ["--timeout", "nan"],
        ["--timeout", "1e308"],
    ],
)
def test_a_run_that_cannot_be_sent_is_refused_before_any_hold(sqlite_url, fake_fal, args: list[str]) -> None:
    result = invoke(
        sqlite_url,
        "run",
        DEV,
        "--agent",
        "bot",
        "--prompt",
        "a fox",
        *args,
        env={"FAL_KEY": FAL_KEY, "PIXELGOV_UPSTREAM_URL": fake_fal.url},
    )
    assert result.exit_code == 2, result.output
    assert one_error_line(result).startswith("error: ")
    assert not any(row_counts(sqlite_url).values())
    assert fake_fal.requests == []


class _Boom(Exception):
    pass


class _FailingUpstream(Upstream):
    """An upstream client that raises inside `call`, before or after really sending."""

    def __init__(self, config: UpstreamConfig, *, after_send: bool, exc: BaseException) -> None:
        super().__init__(config)
        self.after_send, self.exc = after_send, exc

    def call(self, endpoint: str, body: Any, fal_key: str) -> Any:
        if self.after_send:
            super().call(endpoint, body, fal_key)
        raise self.exc


@pytest.mark.parametrize("exc", [_Boom("bug"), KeyboardInterrupt()], ids=["exception", "interrupt"])
@pytest.mark.parametrize("step", ["after_authorize", "before_send", "after_send", "settle", "pricing"])
def test_an_exception_at_any_step_of_a_run_ends_its_transaction(
    budgeted, fake_fal, step: str, exc: BaseException, monkeypatch
) -> None:
    db_url = budgeted
    with opened(db_url) as ledger:
        gov = ledger.governor
        config = UpstreamConfig(url=fake_fal.url, timeout=5)
        upstream: Upstream = Upstream(config)
        hook = None
        if step == "after_authorize":

            def hook(_auth: Any) -> None:
                raise exc
        elif step in ("before_send", "after_send"):
            upstream = _FailingUpstream(config, after_send=step == "after_send", exc=exc)
        elif step == "settle":
            real = gov.settle
            calls = {"n": 0}

            def settle(*a: Any, **kw: Any) -> Any:
                calls["n"] += 1
                if calls["n"] == 1:
                    raise exc
                return real(*a, **kw)

            monkeypatch.setattr(gov, "settle", settle)
        elif step == "pricing":
            monkeypatch.setattr("ledger.policy.settlement.actual_cost", lambda *_a, **_k: (_ for _ in ()).throw(exc))
        quote = ledger.quote(DEV, BODY)
        # A bug while pricing a paid answer is an anomaly (settled at the estimate); an interrupt is not.
        absorbed = step == "pricing" and not isinstance(exc, KeyboardInterrupt)
        with _no_raise() if absorbed else pytest.raises(type(exc)):
            run_governed(gov, upstream, agent="bot", quote=quote, body=BODY, fal_key=FAL_KEY, after_authorize=hook)
        upstream.close()
        [tx] = gov.transactions()
        expected = {
            "after_authorize": TxStatus.failed,
            "before_send": TxStatus.unknown,
            "after_send": TxStatus.unknown,
            "settle": TxStatus.unknown,
            "pricing": TxStatus.completed if absorbed else TxStatus.unknown,
        }[step]
        assert tx.status == expected, (step, tx)
        if expected == TxStatus.unknown:
            assert "interrupted" in (tx.outcome or "")
        if absorbed:  # a paid answer that cannot be priced: settled at the estimate, flagged
            assert tx.actual_cost == ESTIMATE
            assert gov.transaction(tx.id, detail=True).detail.fact("anomaly")  # type: ignore[union-attr]
    counters_match_the_ledger(db_url)


@contextmanager
def _no_raise() -> Iterator[None]:
    yield


# --- defect 5: an absurd answer is recorded, never dropped ----------------------------------


def test_an_absurd_upstream_answer_is_settled_at_the_estimate_flagged_and_alerted(budgeted, fake_fal) -> None:
    db_url = budgeted
    fake_fal.set_mode("wrong_size", width=10**9, height=10**9)
    result = invoke(
        db_url,
        "run",
        DEV,
        "--agent",
        "bot",
        "--prompt",
        "a fox",
        "--format",
        "json",
        env={"FAL_KEY": FAL_KEY, "PIXELGOV_UPSTREAM_URL": fake_fal.url},
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["transaction"]["status"] == "completed"
    assert doc["transaction"]["actual_cost"] == str(ESTIMATE)
    with opened(db_url) as ledger:
        detail = ledger.governor.transaction(doc["transaction"]["id"], detail=True).detail
        assert detail is not None
        assert "beyond the price book's largest side" in (detail.fact("anomaly") or "")
        assert detail.fact("reported_sizes") == "1000000000x1000000000"
        [alert] = ledger.admin.alerts()
        assert alert.kind == "anomaly" and alert.transaction_id == doc["transaction"]["id"]
    counters_match_the_ledger(db_url)


# --- minor: an idempotent retry in flight is a conflict -------------------------------------


def test_an_idempotent_retry_while_the_first_is_in_flight_is_a_conflict(sqlite_url, fake_fal) -> None:
    assert (
        invoke(
            sqlite_url, "authorize", DEV, "--agent", "bot", "--prompt", "a fox", "--idempotency-key", "job-1"
        ).exit_code
        == 0
    )
    result = invoke(
        sqlite_url,
        "run",
        DEV,
        "--agent",
        "bot",
        "--prompt",
        "a fox",
        "--idempotency-key",
        "job-1",
        "--format",
        "json",
        env={"FAL_KEY": FAL_KEY, "PIXELGOV_UPSTREAM_URL": fake_fal.url},
    )
    assert result.exit_code == 1
    error = json.loads(result.output)["error"]
    assert error["code"] == "conflict" and "in progress" in error["message"]
    assert fake_fal.requests == []
    with opened(sqlite_url) as ledger, pytest.raises(InProgress):
        with Upstream(UpstreamConfig(url=fake_fal.url)) as upstream:
            run_governed(
                ledger.governor,
                upstream,
                agent="bot",
                quote=ledger.quote(DEV, BODY),
                body={"prompt": "a fox"},
                fal_key=FAL_KEY,
                idempotency_key="job-1",
            )


# --- defect 3: a busy SQLite database --------------------------------------------------------


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another process's view: a connection holding SQLite's write lock."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_reads_proceed_and_a_write_waits_once_while_sqlite_is_locked(sqlite_url) -> None:
    assert invoke(sqlite_url, "authorize", DEV, "--agent", "bot", "--prompt", "x").exit_code == 0
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    env = {"PIXELGOV_DB_TIMEOUT": "0.5"}
    with write_locked(path):
        listed = invoke(sqlite_url, "tx", "list", "--format", "json", env=env)
        assert listed.exit_code == 0, listed.output
        assert len(json.loads(listed.output)) == 1
        assert invoke(sqlite_url, "check", DEV, "--agent", "bot", env=env).exit_code == 0
        started = time.perf_counter()
        busy = invoke(sqlite_url, "authorize", DEV, "--agent", "bot", "--prompt", "x", "--format", "json", env=env)
        waited = time.perf_counter() - started
    assert busy.exit_code == 1
    error = json.loads(busy.output)["error"]
    assert error["code"] == "database_unavailable" and "busy" in error["message"]
    assert waited < 0.5 * 2, f"waited {waited:.2f}s: the timeout was paid more than once"
    assert row_counts(sqlite_url)["transactions"] == 1


# --- defect 7: the ledger is private -----------------------------------------------------------


def test_the_default_ledger_is_private_to_its_user(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    old = os.umask(0o022)
    try:
        assert CliRunner().invoke(cli, ["authorize", DEV, "--agent", "bot", "--prompt", "x"]).exit_code == 0
    finally:
        os.umask(old)
    directory = tmp_path / "data" / "pixelgov"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = sorted(directory.iterdir())
    assert {f.name for f in files} >= {"pixelgov.db"}
    with sqlite3.connect(directory / "pixelgov.db") as conn:  # WAL and SHM exist while a connection is open
        conn.execute("SELECT 1 FROM agents").fetchall()
        for f in directory.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f"{f.name} is {oct(f.stat().st_mode)}"


# --- minor classes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "var, value",
    [
        ("PIXELGOV_HOLD_TTL", "nan"),
        ("PIXELGOV_HOLD_TTL", "inf"),
        ("PIXELGOV_HOLD_TTL", "-1"),
        ("PIXELGOV_DB_TIMEOUT", "abc"),
        ("PIXELGOV_DB_TIMEOUT", "inf"),
        ("PIXELGOV_UPSTREAM_TIMEOUT", "1e400"),
        ("PIXELGOV_AUTO_CREATE_AGENTS", "maybe"),
    ],
)
def test_absurd_numbers_in_the_environment_are_one_clear_error(sqlite_url, var: str, value: str) -> None:
    result = invoke(sqlite_url, "tx", "list", env={var: value})
    assert result.exit_code == 2
    assert var in one_error_line(result)
    with pytest.raises(InvalidRequest) as caught:
        Settings.from_env({var: value})
    assert caught.value.field == var


def test_expiring_with_an_absurd_age_is_bounded(sqlite_url) -> None:
    assert invoke(sqlite_url, "authorize", DEV, "--agent", "bot", "--prompt", "x").exit_code == 0
    assert invoke(sqlite_url, "tx", "expire", "--older-than", "9" * 18).exit_code == 0
    for bad in ("inf", "nan", "1e300", "\u0661"):  # no exponent, no other digits: not a number here
        result = invoke(sqlite_url, "tx", "expire", "--older-than", bad)
        assert result.exit_code == 2, result.output
    assert row_counts(sqlite_url)["transactions"] == 1


def test_arguments_that_are_not_utf8_are_refused(sqlite_url) -> None:
    bad = b"bot\xff".decode("utf-8", "surrogateescape")
    for args in (["price", bad], ["check", DEV, "--agent", bad], ["agents", "create", bad]):
        result = invoke(sqlite_url, *args)
        assert result.exit_code == 2, result.output
        assert "UTF-8" in one_error_line(result)
    assert not any(row_counts(sqlite_url).values())


@pytest.mark.parametrize("name", ["bot\n", "bot\r", " bot", "", "a" * 201, "bot\x00"])
def test_check_and_authorize_refuse_the_same_bad_agent_names(sqlite_url, name: str) -> None:
    for command in ("check", "authorize"):
        result = invoke(sqlite_url, command, DEV, "--agent", name, "--prompt", "x")
        assert result.exit_code == 2, (command, result.output)
    assert not any(row_counts(sqlite_url).values())


@pytest.mark.parametrize(
    "url, code",
    [
        ("mysql://root@localhost/x", 2),
        ("postgresql+psycopg2://u@h/d", 2),
        ("", 2),
        ("not a url", 2),
        ("sqlite:////dev/null/under/a/file.db", 1),
    ],
)
def test_unsupported_database_urls_are_one_clear_error(url: str, code: int) -> None:
    result = CliRunner().invoke(cli, ["--db", url, "tx", "list"])
    assert result.exit_code == code, result.output
    assert one_error_line(result).startswith("error: ")


def test_a_bogus_migration_revision_is_bad_input(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["--db", f"sqlite:///{tmp_path / 'x.db'}", "db", "upgrade", "nonsense"])
    assert result.exit_code == 2
    assert "nonsense" in one_error_line(result)


def test_a_rate_of_thirty_digits_is_estimated_at_or_above_its_exact_value(tmp_path, monkeypatch) -> None:
    from pricing import load_book, quote
    from pricing.money import from_nano, to_nano

    book = json.loads((Path(__file__).parent.parent / "pricing" / "default_book.json").read_text())
    book["version"] = "thirty-digits"
    book["endpoints"]["fal-ai/flux/dev"]["rate_per_megapixel"] = "0.015000000000000000000000000001"
    path = tmp_path / "book.json"
    path.write_text(json.dumps(book))
    q = quote(DEV, {}, book=load_book(path))
    assert q.amount == Decimal("0.01185000000000000000000000000079")  # 0.79 × the rate, every digit kept
    stored = from_nano(to_nano(q.amount))
    assert stored >= q.amount and stored - q.amount < Decimal("0.000000001")


def test_secret_like_fields_are_never_stored_at_any_depth(sqlite_url) -> None:
    body = {
        "prompt": "x",
        "auth": "a1",
        "passwd": "p1",
        "cookie": "c1",
        "headers": {"X-Anything": "h1"},
        "nested": {"session_id": "s1", "signature": "g1", "ok": "kept"},
    }
    assert invoke(sqlite_url, "authorize", DEV, "--agent", "bot", "--params", json.dumps(body)).exit_code == 0
    with scratch_engine(sqlite_url) as engine, engine.connect() as conn:
        stored = json.loads(conn.execute(select(transactions.c.request_json)).scalar_one())
    assert stored == {"prompt": "x", "nested": {"ok": "kept"}}


def test_an_anomaly_alert_names_its_transaction(budgeted, fake_fal) -> None:
    fake_fal.set_mode("wrong_size", width=20000, height=20000)
    with opened(budgeted) as ledger, Upstream(UpstreamConfig(url=fake_fal.url)) as upstream:
        outcome = run_governed(
            ledger.governor, upstream, agent="bot", quote=ledger.quote(DEV, BODY), body=BODY, fal_key=FAL_KEY
        )
    with scratch_engine(budgeted) as engine, engine.connect() as conn:
        rows = conn.execute(select(alerts.c.kind, alerts.c.transaction_id)).all()
    assert rows == [("anomaly", outcome.transaction.id)]


def test_a_failed_upstream_never_raises_past_the_cli(sqlite_url, fake_fal) -> None:
    fake_fal.set_mode("status", status=500)
    result = invoke(
        sqlite_url,
        "run",
        DEV,
        "--agent",
        "bot",
        "--prompt",
        "x",
        env={"FAL_KEY": FAL_KEY, "PIXELGOV_UPSTREAM_URL": fake_fal.url},
    )
    assert result.exit_code == 1
    assert "HTTP 500" in one_error_line(result)
    with opened(sqlite_url) as ledger:
        [tx] = ledger.governor.transactions()
        assert tx.status == TxStatus.failed
