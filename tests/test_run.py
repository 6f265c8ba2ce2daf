"""`pixelgov run` and `run_governed` (SPEC §4–6): authorize → forward → settle against a real
fake-FAL HTTP server and real databases (a migrated SQLite file and PostgreSQL).

What is promised: a success settles from the response's real image sizes and records its
facts; every upstream fault resolves the hold exactly once (4xx/5xx and unreachable →
`failed`, hold released; no answer after sending → `unknown`, estimate still counted);
an idempotent retry never reaches the upstream twice; a process killed mid-request leaves
one pending hold that `tx expire` (or the hold TTL, lazily) releases; bad input is refused
(exit 2) before anything is authorized or sent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
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
from PIL import Image
from sqlalchemy import func, select

from ledger import Ledger, RuleSpec, Settings, Transaction, TxStatus
from ledger.errors import Denied, InvalidRequest, UpstreamError
from ledger.forward.runner import RunOutcome, run_governed
from ledger.forward.upstream import Upstream, UpstreamConfig
from ledger.store.models import Base, rule_counters, transactions
from pixelgov.cli import cli

sys.path.insert(0, str(Path(__file__).parent))

DEV = "fal-ai/flux/dev"
UPSCALE = "fal-ai/topaz/upscale/image"
FAL_KEY = "fal-test-key-3f2a9c"
ESTIMATE = Decimal("0.01185")  # flux-dev landscape_4_3: 0.79 MP × 0.015
FAKE_SCRIPT = Path(__file__).with_name("fake_fal.py")
PIXELGOV = Path(sys.executable).with_name("pixelgov")
FAULT_STATUSES = [400, 404, 413, 422, 429, 500, 503]


# --- helpers ---------------------------------------------------------------------------------


def run_cli(
    db_url: str, upstream: str | None, *args: str, key: str | None = FAL_KEY, env: dict[str, str | None] | None = None
) -> Result:
    """`pixelgov --db URL run ARGS` in process, with the upstream and FAL key in the environment."""
    environ = {"PIXELGOV_UPSTREAM_URL": upstream, "FAL_KEY": key, **(env or {})}
    return CliRunner().invoke(cli, ["--db", db_url, "run", *args], env=environ)


def invoke(db_url: str, *args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, ["--db", db_url, *args], env=env)


@contextmanager
def opened(db_url: str, clock: Any = None) -> Iterator[Ledger]:
    """A Ledger of the test's own on the database (hold TTL 900, agents created on first use)."""
    with Ledger(db_url, clock=clock, settings=Settings(hold_ttl=900, auto_create_agents=True)) as ledger:
        yield ledger


def row_counts(db_url: str) -> dict[str, int]:
    with scratch_engine(db_url) as engine, engine.connect() as conn:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in Base.metadata.sorted_tables
        }


def nothing_written(db_url: str) -> bool:
    return not any(row_counts(db_url).values())


def counters(db_url: str) -> tuple[Decimal, Decimal]:
    """(held, spent) summed over every rule counter."""
    with scratch_engine(db_url) as engine, engine.connect() as conn:
        rows = conn.execute(select(rule_counters.c.held, rule_counters.c.spent)).all()
    return sum((r.held for r in rows), Decimal(0)), sum((r.spent for r in rows), Decimal(0))


def statuses(db_url: str) -> list[TxStatus]:
    with scratch_engine(db_url) as engine, engine.connect() as conn:
        return [TxStatus(r[0]) for r in conn.execute(select(transactions.c.status).order_by(transactions.c.id))]


def add_budget(db_url: str, limit: str = "1", name: str = "budget") -> None:
    """A `deny` spend-limit over all time: its counters show every hold and every spend."""
    with opened(db_url) as ledger:
        ledger.admin.create_rule(
            RuleSpec(
                name=name, type="spend-limit", limit=limit, period="total", given={"name", "type", "limit", "period"}
            )
        )


def show(db_url: str, tx_id: int) -> Transaction:
    with opened(db_url) as ledger:
        tx = ledger.governor.transaction(tx_id, detail=True)
    assert tx.detail is not None
    return tx


def facts_of(tx: Transaction) -> dict[str, str]:
    assert tx.detail is not None
    return {f.key: f.value for f in tx.detail.facts}


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def json_of(result: Result) -> dict[str, Any]:
    return json.loads(result.stdout)


def governed(
    ledger: Ledger,
    upstream_url: str,
    body: dict[str, Any],
    *,
    agent: str = "bot",
    key: str = FAL_KEY,
    idempotency_key: str | None = None,
    **config: Any,
) -> RunOutcome:
    """`run_governed` for one request through a fresh client to `upstream_url`."""
    with Upstream(UpstreamConfig(url=upstream_url, **{"timeout": 10, **config})) as upstream:
        return run_governed(
            ledger.governor,
            upstream,
            agent=agent,
            quote=ledger.quote(DEV, body),
            body=body,
            fal_key=key,
            idempotency_key=idempotency_key,
        )


# --- success ---------------------------------------------------------------------------------


def test_run_settles_at_the_response_sizes_and_prints_the_upstream_json_unchanged(db_url, fake_fal):
    add_budget(db_url)
    result = run_cli(
        db_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "a red fox", "--seed", "42", "--format", "json"
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    doc = json_of(result)
    assert {"transaction", "result", "replayed"} <= set(doc)
    assert doc["replayed"] is False
    url = doc["result"]["images"][0]["url"]
    assert url.startswith(f"{fake_fal.url}/files/")
    assert doc["result"] == {  # the fake's JSON, key for key
        "images": [{"url": url, "width": 1024, "height": 768, "content_type": "image/png"}],
        "timings": {"inference": 0.01},
        "seed": 42,
        "has_nsfw_concepts": [False],
        "prompt": "a red fox",
    }
    wire = doc["transaction"]  # the wire shape: amounts as strings
    assert wire["status"] == "completed"
    assert wire["estimated_cost"] == wire["actual_cost"] == "0.01185"
    assert {
        "id",
        "agent",
        "endpoint",
        "operation",
        "status",
        "estimated_cost",
        "actual_cost",
        "created_at",
        "completed_at",
        "idempotency_key",
        "denial",
    } <= set(wire)
    assert fake_fal.count(DEV) == 1
    sent = fake_fal.requests[0]
    assert sent.headers["authorization"] == f"Key {FAL_KEY}"
    assert sent.body == {"prompt": "a red fox", "seed": 42}
    stored = show(db_url, wire["id"])
    assert stored.status == TxStatus.completed
    assert stored.estimated_cost == stored.actual_cost == ESTIMATE
    assert {k: v for k, v in stored.to_json().items() if k in wire} == wire  # printed = stored
    facts = facts_of(stored)
    assert facts["upstream_status"] == "200"
    assert float(facts["latency_ms"]) > 0
    assert facts["x-fal-billable-units"] == "0.79"
    assert facts["output_sizes"] == "1024x768"
    assert stored.detail is not None and stored.detail.result == doc["result"]
    assert stored.upstream_request_id and len(stored.upstream_request_id) == 36  # the fake's x-fal-request-id
    assert stored.upstream_status == 200
    assert counters(db_url) == (Decimal(0), ESTIMATE)


def test_run_governed_settles_in_process(ledger, db_url, fake_fal):
    add_budget(db_url)
    body = {"prompt": "a fox", "image_size": "square_hd", "num_images": 2}
    outcome = governed(ledger, fake_fal.url, body)
    assert outcome.replayed is False
    tx = outcome.transaction
    assert isinstance(tx, Transaction)
    assert tx.status == TxStatus.completed
    assert tx.actual_cost == Decimal("0.0315")  # 2 × 1.05 MP × 0.015
    assert tx.estimated_cost == Decimal("0.0315")
    assert outcome.to_json()["transaction"]["actual_cost"] == "0.0315"
    assert [(i["width"], i["height"]) for i in outcome.result["images"]] == [(1024, 1024)] * 2
    assert facts_of(show(db_url, tx.id))["output_sizes"] == "1024x1024,1024x1024"
    assert counters(db_url) == (Decimal(0), Decimal("0.0315"))


def test_actual_cost_follows_the_sizes_that_came_back_not_the_estimate(db_url, fake_fal):
    add_budget(db_url)
    fake_fal.set_mode("wrong_size", width=1280, height=720)
    result = run_cli(db_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox", "--format", "json")
    assert result.exit_code == 0, result.output
    tx = show(db_url, json_of(result)["transaction"]["id"])
    assert tx.estimated_cost == ESTIMATE
    assert tx.actual_cost == Decimal("0.01395")  # 1280×720 = 0.9216 → 0.93 MP × 0.015
    assert tx.detail is not None
    assert [(c.kind, c.amount) for c in tx.detail.cost_lines] == [
        ("estimate", ESTIMATE),
        ("actual", Decimal("0.01395")),
    ]
    facts = facts_of(tx)
    assert facts["output_sizes"] == "1280x720"
    assert facts["variance"] == "0.0021"
    assert facts["x-fal-billable-units"] == "0.93"
    assert counters(db_url) == (Decimal(0), Decimal("0.01395"))


def test_a_response_without_sizes_settles_at_the_estimate_and_says_so(db_url, fake_fal):
    fake_fal.set_mode("no_size")
    result = run_cli(db_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json_of(result)
    assert "width" not in doc["result"]["images"][0]
    tx = show(db_url, doc["transaction"]["id"])
    assert tx.actual_cost == tx.estimated_cost == ESTIMATE
    facts = facts_of(tx)
    assert "estimate" in facts["actual_source"] and "no image sizes" in facts["actual_source"]
    assert "output_sizes" not in facts


def test_table_output_names_the_transaction_and_its_images(sqlite_url, fake_fal):
    result = run_cli(sqlite_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox")
    assert result.exit_code == 0, result.output
    first, image = result.stdout.splitlines()[:2]
    assert first == "completed: transaction 1, estimated 0.01185, actual 0.01185"
    assert image.startswith(f"  image 0: {fake_fal.url}/files/")


def test_out_writes_real_images_named_by_transaction(db_url, fake_fal, tmp_path):
    out = tmp_path / "images" / "new"  # created on demand
    result = run_cli(
        db_url,
        fake_fal.url,
        DEV,
        "--agent",
        "bot",
        "--prompt",
        "fox",
        "--image-size",
        "640x480",
        "--num-images",
        "2",
        "--out",
        str(out),
        "--format",
        "json",
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    tx_id = json_of(result)["transaction"]["id"]
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"tx{tx_id}-0.png", f"tx{tx_id}-1.png"]
    for name in names:
        with Image.open(out / name) as im:
            assert im.format == "PNG"
            assert im.size == (640, 480)
    assert f"saved {out / names[0]}" in result.stderr


# --- dry run and denial ----------------------------------------------------------------------


def test_dry_run_sends_nothing_writes_nothing_and_needs_no_key(db_url, fake_fal):
    result = run_cli(
        db_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox", "--dry-run", "--format", "json", key=None
    )
    assert result.exit_code == 0, result.output
    doc = json_of(result)
    assert doc["allowed"] is True
    assert doc["quote"]["amount"] == "0.01185"
    assert fake_fal.count() == 0
    assert nothing_written(db_url)


def test_dry_run_that_would_be_denied_exits_3_without_writing(db_url, fake_fal):
    add_budget(db_url, limit="0.01")
    before = row_counts(db_url)
    result = run_cli(db_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox", "--dry-run")
    assert result.exit_code == 3
    assert "denied" in result.stdout and "budget" in result.stdout
    assert fake_fal.count() == 0
    assert row_counts(db_url) == before


def test_denied_run_sends_nothing_records_the_denial_and_exits_3(db_url, fake_fal):
    add_budget(db_url, limit="0.01")
    result = run_cli(db_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox", "--format", "json")
    assert result.exit_code == 3
    error = json_of(result)["error"]
    assert error["code"] == "denied"
    assert error["denials"][0]["rule"] == "budget"
    assert error["transaction"]["status"] == "denied"
    assert fake_fal.count() == 0
    assert statuses(db_url) == [TxStatus.denied]
    tx = show(db_url, 1)
    assert tx.denial is not None and tx.denial["rule"] == "budget"
    assert [d.rule for d in tx.denials] == ["budget"]
    assert tx.detail is not None and tx.detail.cost_lines == ()
    assert counters(db_url) == (Decimal(0), Decimal(0))


def test_denied_run_in_table_format_is_one_line_on_stderr(sqlite_url, fake_fal):
    add_budget(sqlite_url, limit="0.01")
    result = run_cli(sqlite_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox")
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr.startswith("error: denied for agent 'bot': budget")
    assert len(result.stderr.strip().splitlines()) == 1


# --- upstream faults -------------------------------------------------------------------------


@pytest.mark.parametrize("status", FAULT_STATUSES)
def test_upstream_error_status_fails_the_transaction_and_releases_the_hold(sqlite_url, fake_fal, status):
    add_budget(sqlite_url)
    fake_fal.set_mode("status", status=status, detail=f"fal refuses with {status}")
    result = run_cli(sqlite_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox")
    assert result.exit_code == 1
    detail = "prompt: fal refuses with 422" if status == 422 else f"fal refuses with {status}"
    assert f"upstream answered HTTP {status}: {detail}" in result.stderr
    assert "failed, nothing spent" in result.stderr
    assert fake_fal.count() == 1  # an answered error is never retried
    assert statuses(sqlite_url) == [TxStatus.failed]
    tx = show(sqlite_url, 1)
    assert tx.upstream_status == status
    assert tx.actual_cost is None
    assert facts_of(tx)["upstream_status"] == str(status)
    assert counters(sqlite_url) == (Decimal(0), Decimal(0))


def test_upstream_error_in_json_is_an_upstream_error_document_and_the_hold_is_released(db_url, fake_fal):
    add_budget(db_url)
    fake_fal.set_mode("status", status=503)
    result = run_cli(db_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox", "--format", "json")
    assert result.exit_code == 1
    error = json_of(result)["error"]
    assert error["code"] == "upstream_error"
    assert error["upstream_status"] == 503
    assert "Service temporarily unavailable" in error["message"]
    assert error["transaction"]["status"] == "failed"
    assert error["transaction"]["estimated_cost"] == "0.01185"
    assert fake_fal.count() == 1
    assert statuses(db_url) == [TxStatus.failed]
    assert counters(db_url) == (Decimal(0), Decimal(0))


def test_timeout_after_sending_leaves_the_estimate_counted_as_unknown(db_url, fake_fal):
    add_budget(db_url)
    fake_fal.set_mode("slow", delay=5)
    started = time.monotonic()
    result = run_cli(db_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox", "--timeout", "0.3")
    assert time.monotonic() - started < 4
    assert result.exit_code == 1
    assert "no answer" in result.stderr and "0.3s" in result.stderr
    assert "is unknown" in result.stderr and "pixelgov tx complete 1" in result.stderr
    assert fake_fal.count() == 1
    assert statuses(db_url) == [TxStatus.unknown]
    assert counters(db_url) == (Decimal(0), ESTIMATE)


@pytest.mark.parametrize("mode", ["drop", "malformed"])
def test_no_usable_answer_leaves_the_transaction_unknown(db_url, fake_fal, mode):
    add_budget(db_url)
    fake_fal.set_mode(mode)
    result = run_cli(db_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox", "--format", "json")
    assert result.exit_code == 1
    error = json_of(result)["error"]
    assert error["code"] == "upstream_error"
    assert error["transaction"]["status"] == "unknown"
    assert fake_fal.count() == 1  # sent once, never retried: a retry could double-charge
    assert statuses(db_url) == [TxStatus.unknown]
    assert counters(db_url) == (Decimal(0), ESTIMATE)


def test_unknown_transaction_can_be_settled_later_without_double_counting(sqlite_url, fake_fal):
    add_budget(sqlite_url)
    fake_fal.set_mode("drop")
    assert run_cli(sqlite_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox").exit_code == 1
    settled = invoke(sqlite_url, "tx", "complete", "1", "--actual", "0.02", "--format", "json")
    assert settled.exit_code == 0, settled.output
    assert json_of(settled)["actual_cost"] == "0.02"
    assert show(sqlite_url, 1).actual_cost == Decimal("0.02")
    assert counters(sqlite_url) == (Decimal(0), Decimal("0.02"))


def test_unreachable_upstream_fails_after_bounded_connect_retries(sqlite_url):
    add_budget(sqlite_url)
    started = time.monotonic()
    result = run_cli(sqlite_url, f"http://127.0.0.1:{closed_port()}", DEV, "--agent", "bot", "--prompt", "fox")
    elapsed = time.monotonic() - started
    assert result.exit_code == 1
    assert "unreachable after 4 attempt(s)" in result.stderr  # the first try + 3 retries
    assert 0.25 + 0.5 + 1.0 <= elapsed < 10  # the backoff really happened, and is bounded
    assert statuses(sqlite_url) == [TxStatus.failed]
    assert counters(sqlite_url) == (Decimal(0), Decimal(0))
    assert facts_of(show(sqlite_url, 1))["upstream_outcome"] == "unreachable"


def test_run_governed_unreachable_releases_the_hold(ledger, db_url):
    add_budget(db_url)
    with pytest.raises(UpstreamError) as raised:
        governed(ledger, f"http://127.0.0.1:{closed_port()}", {"prompt": "fox"}, timeout=5, retries=2, backoff=0.01)
    assert "after 3 attempt(s)" in raised.value.message
    tx = raised.value.details["transaction"]
    assert isinstance(tx, Transaction) and tx.status == TxStatus.failed
    assert raised.value.to_json()["error"]["transaction"]["status"] == "failed"
    assert ledger.governor.transaction(tx.id).status == TxStatus.failed
    assert counters(db_url) == (Decimal(0), Decimal(0))


# --- idempotency -----------------------------------------------------------------------------


def test_a_retried_idempotency_key_is_sent_once_and_replays_the_same_result(db_url, fake_fal):
    add_budget(db_url)
    args = (DEV, "--agent", "bot", "--prompt", "fox", "--idempotency-key", "job-42", "--format", "json")
    first = run_cli(db_url, fake_fal.url, *args)
    second = run_cli(db_url, fake_fal.url, *args)
    assert first.exit_code == second.exit_code == 0, (first.output, second.output)
    a, b = json_of(first), json_of(second)
    assert fake_fal.count() == 1
    assert b["transaction"]["id"] == a["transaction"]["id"]
    assert b["result"] == a["result"]
    assert a["replayed"] is False and b["replayed"] is True
    assert statuses(db_url) == [TxStatus.completed]
    assert counters(db_url) == (Decimal(0), ESTIMATE)


def test_a_retried_idempotency_key_replays_through_run_governed(ledger, fake_fal):
    outcomes = [governed(ledger, fake_fal.url, {"prompt": "fox"}, idempotency_key="k1") for _ in range(3)]
    assert fake_fal.count() == 1
    assert {o.transaction.id for o in outcomes} == {1}
    assert {o.transaction.status for o in outcomes} == {TxStatus.completed}
    assert outcomes[1].result == outcomes[2].result == outcomes[0].result
    assert [o.replayed for o in outcomes] == [False, True, True]


def test_a_retried_key_of_a_failed_run_replays_the_failure_without_sending(db_url, fake_fal):
    fake_fal.set_mode("status", status=503, once=True)
    args = (DEV, "--agent", "bot", "--prompt", "fox", "--idempotency-key", "job-7", "--format", "json")
    first = run_cli(db_url, fake_fal.url, *args)
    second = run_cli(db_url, fake_fal.url, *args)
    assert first.exit_code == second.exit_code == 1
    error = json_of(second)["error"]
    assert error["code"] == "upstream_error"
    assert error["transaction"]["id"] == json_of(first)["error"]["transaction"]["id"]
    assert error["transaction"]["status"] == "failed"
    assert "HTTP 503" in error["message"]
    assert fake_fal.count() == 1
    assert statuses(db_url) == [TxStatus.failed]


def test_a_retried_key_of_a_run_still_in_flight_is_not_sent_again(db_url, fake_fal):
    held = invoke(db_url, "authorize", DEV, "--agent", "bot", "--prompt", "fox", "--idempotency-key", "job-9")
    assert held.exit_code == 0, held.output
    args = (DEV, "--agent", "bot", "--prompt", "fox", "--idempotency-key", "job-9")
    result = run_cli(db_url, fake_fal.url, *args)
    assert result.exit_code == 1
    assert "transaction 1" in result.stderr and "in progress" in result.stderr
    as_json = run_cli(db_url, fake_fal.url, *args, "--format", "json")
    assert as_json.exit_code == 1
    error = json_of(as_json)["error"]
    assert error["code"] == "conflict"  # its own code (HTTP 409), not an upstream error
    assert fake_fal.count() == 0
    assert statuses(db_url) == [TxStatus.pending]


def test_a_key_reused_for_a_different_request_is_refused_without_sending(sqlite_url, fake_fal):
    assert (
        run_cli(sqlite_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox", "--idempotency-key", "k").exit_code
        == 0
    )
    other = run_cli(sqlite_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "a cat", "--idempotency-key", "k")
    assert other.exit_code == 2
    assert "already used for a different request" in other.stderr
    assert fake_fal.count() == 1


# --- a process killed between authorize and settle ------------------------------------------


@pytest.fixture(scope="module")
def slow_fake() -> Iterator[str]:
    """A standalone fake (its own process) whose answers take 30 s."""
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_SCRIPT), "--mode", "slow", "--delay", "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("FAKE_FAL_URL="), line
        yield line.split("=", 1)[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def kill_mid_run(db_url: str, upstream: str) -> int:
    """Start `pixelgov run` as a process, SIGKILL it once its transaction is pending; return the id."""
    env = {**os.environ, "FAL_KEY": FAL_KEY, "PIXELGOV_UPSTREAM_URL": upstream}
    proc = subprocess.Popen(
        [str(PIXELGOV), "--db", db_url, "run", DEV, "--agent", "bot", "--prompt", "fox"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    try:
        with scratch_engine(db_url) as engine:
            while True:
                with engine.connect() as conn:
                    pending = (
                        conn.execute(select(transactions.c.id).where(transactions.c.status == TxStatus.pending))
                        .scalars()
                        .all()
                    )
                if pending:
                    break
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the run never authorized"
                time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert pending == [1]
    return pending[0]


def test_a_killed_run_loses_no_spend_its_hold_expires_to_unknown_once(db_url, slow_fake, fake_fal):
    """`pixelgov run` killed while FAL holds the request: it may have been served and billed, so
    expiry does not release the hold but counts it (`unknown`) until an admin settles or voids it."""
    add_budget(db_url, limit="0.02")  # room for exactly one estimate
    tx_id = kill_mid_run(db_url, slow_fake)
    assert statuses(db_url) == [TxStatus.pending]
    assert counters(db_url) == (ESTIMATE, Decimal(0))

    expired = invoke(db_url, "tx", "expire", "--older-than", "0", "--format", "json")
    assert expired.exit_code == 0, expired.output
    assert json_of(expired) == {"expired": [tx_id]}
    assert statuses(db_url) == [TxStatus.unknown]
    assert counters(db_url) == (Decimal(0), ESTIMATE)  # still counted: as spent, at its estimate

    again = invoke(db_url, "tx", "expire", "--older-than", "0", "--format", "json")
    assert json_of(again) == {"expired": []}
    assert counters(db_url) == (Decimal(0), ESTIMATE)

    # The budget stays spent: a second run does not fit.
    result = run_cli(db_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox")
    assert result.exit_code == 3, result.output
    # An admin who learns FAL did not serve it voids it, with a reason; then the budget is free.
    assert invoke(db_url, "tx", "void", str(tx_id)).exit_code == 2  # a reason is required
    assert invoke(db_url, "tx", "void", str(tx_id), "--reason", "FAL shows no such request").exit_code == 0
    assert counters(db_url) == (Decimal(0), Decimal(0))
    result = run_cli(db_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox")
    assert result.exit_code == 0, result.output
    assert counters(db_url) == (Decimal(0), ESTIMATE)


def test_a_dead_run_past_its_ttl_stays_counted_for_a_later_run(db_url, slow_fake, fake_fal):
    add_budget(db_url, limit="0.02")
    tx_id = kill_mid_run(db_url, slow_fake)
    time.sleep(0.6)
    result = run_cli(
        db_url,
        fake_fal.url,
        DEV,
        "--agent",
        "bot",
        "--prompt",
        "fox",
        "--format",
        "json",
        env={"PIXELGOV_HOLD_TTL": "0.5"},
    )
    assert result.exit_code == 3, result.output  # the dead run's estimate still fills the budget
    assert show(db_url, tx_id).status == TxStatus.unknown
    assert statuses(db_url) == [TxStatus.unknown, TxStatus.denied]
    assert counters(db_url) == (Decimal(0), ESTIMATE)


def test_a_callers_own_dead_hold_past_its_ttl_is_released_lazily_by_the_governor(sqlite_url, clock):
    add_budget(sqlite_url, limit="0.02")
    body = {"prompt": "fox"}
    with opened(sqlite_url, clock) as ledger:
        gov = ledger.governor
        assert gov.authorize("bot", ledger.quote(DEV, body), body).allowed  # a caller's hold; it never settles
        clock.advance(899)
        assert not gov.authorize("bot", ledger.quote(DEV, body), body).allowed  # still within its TTL
        clock.advance(2)
        later = gov.authorize("bot", ledger.quote(DEV, body), body)
    assert later.allowed
    assert later.transaction.status == TxStatus.pending
    assert statuses(sqlite_url) == [TxStatus.expired, TxStatus.denied, TxStatus.pending]
    assert counters(sqlite_url) == (ESTIMATE, Decimal(0))  # only the live hold


def test_dry_run_predicts_the_run_when_a_dead_hold_is_past_its_ttl(sqlite_url, clock):
    add_budget(sqlite_url, limit="0.02")
    body = {"prompt": "fox"}
    with opened(sqlite_url, clock) as ledger:
        gov = ledger.governor
        quote = ledger.quote(DEV, body)
        assert gov.authorize("bot", quote, body).allowed  # a hold whose process then died
        clock.advance(901)
        predicted = gov.check("bot", quote).allowed
        actual = gov.authorize("bot", quote, body).allowed
    assert actual is True
    assert predicted == actual


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("fal-ai/no-such-model", "--prompt", "fox"), "model_not_found"),
        ((DEV, "--prompt", "fox", "--num-images", "9"), "invalid_request"),
        ((DEV, "--prompt", "fox", "--image-size", "huge"), "invalid_request"),
        ((DEV, "--prompt", "fox", "--params", '{"num_inference_steps": 0}'), "invalid_request"),
        ((DEV, "--prompt", "fox", "--image-size", "20000x20000"), "image_too_large"),
        ((DEV, "--prompt", ""), "invalid_request"),
        ((DEV,), "invalid_request"),  # pricing needs no prompt; running does
        ((UPSCALE, "--input-size", "1024x768"), "invalid_request"),  # no image_url to upscale
    ],
)
def test_bad_input_exits_2_before_anything_is_authorized_or_sent(sqlite_url, fake_fal, args, code):
    result = run_cli(sqlite_url, fake_fal.url, *args, "--agent", "bot", "--format", "json")
    assert result.exit_code == 2, result.output
    assert json_of(result)["error"]["code"] == code
    assert fake_fal.count() == 0
    assert nothing_written(sqlite_url)


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_an_idempotency_key_outside_1_to_200_characters_exits_2_before_authorizing(db_url, fake_fal, key):
    result = run_cli(db_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox", "--idempotency-key", key)
    assert result.exit_code == 2, result.output
    assert "idempotency_key" in result.stderr
    assert fake_fal.count() == 0
    assert nothing_written(db_url)


def test_missing_prompt_is_named_in_one_line(sqlite_url, fake_fal):
    result = run_cli(sqlite_url, fake_fal.url, DEV, "--agent", "bot")
    assert result.exit_code == 2
    assert "prompt" in result.stderr and "Traceback" not in result.output
    assert fake_fal.count() == 0


def test_missing_fal_key_exits_2_naming_it_and_writes_nothing(db_url, fake_fal):
    result = run_cli(db_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox", key=None)
    assert result.exit_code == 2
    assert "FAL_KEY" in result.stderr
    assert fake_fal.count() == 0
    assert nothing_written(db_url)


@pytest.mark.parametrize("bad_key", ["  ", "two words", "line\nbreak", "caf\u00e9"])
def test_an_unsendable_fal_key_exits_2_without_quoting_it(sqlite_url, fake_fal, bad_key):
    result = run_cli(sqlite_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox", key=bad_key)
    assert result.exit_code == 2, result.output
    assert "FAL_KEY" in result.stderr
    if bad_key.strip():
        assert bad_key not in result.output
    assert fake_fal.count() == 0
    assert nothing_written(sqlite_url)


def test_unwritable_out_exits_1_before_sending(db_url, fake_fal, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_cli(db_url, fake_fal.url, DEV, "--agent", "bot", "--prompt", "fox", "--out", str(blocker / "images"))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot write {blocker / 'images'}: ") and "database" not in result.stderr
    assert fake_fal.count() == 0
    assert nothing_written(db_url)


@pytest.mark.parametrize(
    ("option", "env"),
    [
        (("--upstream-url", "ftp://fal.example"), {}),
        (("--upstream-url", "http://"), {}),  # no host: nothing can be sent, so nothing is authorized
        (("--upstream-url", "http://[::1"), {}),
        ((), {"PIXELGOV_UPSTREAM_URL": "fal.run"}),
        ((), {"PIXELGOV_UPSTREAM_TIMEOUT": "soon"}),
        ((), {"PIXELGOV_UPSTREAM_TIMEOUT": "-1"}),
        ((), {"PIXELGOV_UPSTREAM_TIMEOUT": "nan"}),
        (("--timeout", "0"), {}),
        (("--timeout", "nan"), {}),
        (("--timeout", "inf"), {}),  # the wait is always bounded
    ],
)
def test_bad_upstream_configuration_exits_2_before_authorizing(sqlite_url, fake_fal, option, env):
    env = dict(env)
    result = run_cli(
        sqlite_url,
        env.pop("PIXELGOV_UPSTREAM_URL", fake_fal.url),
        DEV,
        "--agent",
        "bot",
        "--prompt",
        "fox",
        *option,
        env=env,
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert fake_fal.count() == 0
    assert nothing_written(sqlite_url)


def test_run_governed_refuses_an_unrunnable_request_before_authorizing(ledger, db_url, fake_fal):
    with pytest.raises(InvalidRequest):
        governed(ledger, fake_fal.url, {})
    with pytest.raises(InvalidRequest) as raised:
        governed(ledger, fake_fal.url, {"prompt": "x"}, key="bad key")
    assert raised.value.field == "FAL_KEY"
    assert fake_fal.count() == 0
    assert nothing_written(db_url)


def test_run_governed_denial_raises_denied_and_sends_nothing(ledger, db_url, fake_fal):
    add_budget(db_url, limit="0.01")
    with pytest.raises(Denied) as raised:
        governed(ledger, fake_fal.url, {"prompt": "x"})
    assert [d.rule for d in raised.value.denials] == ["budget"]
    assert raised.value.transaction is not None and raised.value.transaction.status == TxStatus.denied
    assert fake_fal.count() == 0
    assert statuses(db_url) == [TxStatus.denied]
