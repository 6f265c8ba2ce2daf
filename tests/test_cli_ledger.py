"""The ledger's command line: check, authorize, tx …, agents, rules, alerts, audit; output
formats, exit codes (SPEC §5), the JSON error shape, and bad input refused without a write.

Commands run through `CliRunner` against the `db_url` database (SQLite and PostgreSQL).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from conftest import scratch_engine
from sqlalchemy import select

from ledger import RuleSpec, TxStatus
from ledger.store import db
from ledger.store.models import Base
from pixelgov.cli import _COMMANDS, cli
from pricing import quote

DEV = quote("fal-ai/flux/dev", {})
TX_KEYS = {
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
}
RULE_KEYS = {
    "id",
    "name",
    "type",
    "limit",
    "period",
    "window",
    "models",
    "agent",
    "model",
    "operation",
    "action",
    "enabled",
}


def invoke(url: str | None, *args: str, env: dict[str, str] | None = None) -> Result:
    prefix = ["--db", url] if url else []
    return CliRunner().invoke(cli, [*prefix, *args], env=env)


@pytest.fixture
def run(db_url: str):  # type: ignore[no-untyped-def]
    return lambda *args, **kw: invoke(db_url, *args, **kw)


def as_json(result: Result) -> Any:
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def one_error_line(result: Result) -> str:
    """A failure without --format json: exactly one line on stderr, nothing on stdout, no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Every row of every ledger table."""
    with scratch_engine(url) as engine, engine.connect() as conn:
        return {
            t.name: sorted((tuple(r) for r in conn.execute(select(t))), key=repr) for t in Base.metadata.sorted_tables
        }


def rule(admin, **fields):  # type: ignore[no-untyped-def]
    return admin.create_rule(RuleSpec(**fields, given=set(fields)))


@pytest.fixture
def ledger_state(gov, admin) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """An agent, a rule and transactions in every state a command can meet."""
    admin.create_agent("bot")
    rule(admin, name="existing", type="request-cap", limit="1")
    ids = {
        state: gov.authorize("bot", DEV, {"state": state}).transaction.id
        for state in ("completed", "voided", "failed", "unknown", "expired")
    }
    gov.settle(ids["completed"], DEV.amount)
    gov.void(ids["voided"])
    gov.fail(ids["failed"], "upstream 500")
    gov.mark_unknown(ids["unknown"], "timeout")
    gov.clock.advance(1)
    ids["pending"] = gov.authorize("bot", DEV, {"state": "pending"}).transaction.id
    assert gov.expire(older_than=0.5) == [ids["expired"]]  # the 1 s old hold, not the new one
    rule(admin, name="no-pro", type="model-allowlist", models=["fal-ai/flux/*"])
    ids["denied"] = gov.authorize("bot", quote("fal-ai/flux-pro", {}), {}).transaction.id
    return ids


def test_the_ledger_fixture_covers_every_state(gov, ledger_state) -> None:
    assert {state: gov.transaction(i).status for state, i in ledger_state.items()} == {
        s: TxStatus(s) for s in ledger_state
    }


# --- check ------------------------------------------------------------------------------------


def test_check_prints_the_quote_and_the_decision_and_writes_nothing(run, db_url) -> None:
    before = snapshot(db_url)
    doc = as_json(ok(run("check", "fal-ai/flux/dev", "--agent", "bot", "--format", "json")))
    assert doc["allowed"] is True and doc["denials"] == [] and doc["alerts"] == []
    assert doc["quote"]["amount"] == "0.01185" and doc["quote"]["price"] == "$0.012"
    assert {
        "endpoint",
        "operation",
        "images",
        "width",
        "height",
        "megapixels_per_image",
        "billable_megapixels",
        "rate_per_megapixel",
        "amount",
        "price",
        "currency",
        "price_book",
    } <= set(doc["quote"])
    assert snapshot(db_url) == before  # not even the agent is created


def test_check_of_a_denied_request_exits_3_and_names_every_failing_rule(run, admin, db_url) -> None:
    rule(admin, name="cap", type="request-cap", limit="0.01")
    rule(admin, name="schnell-only", type="model-allowlist", models=["fal-ai/flux/schnell"])
    rule(admin, name="roomy", type="spend-limit", limit="5", period="day")
    result = run("check", "fal-ai/flux/dev", "--agent", "bot", "--format", "json")
    assert result.exit_code == 3
    doc = as_json(result)
    assert doc["allowed"] is False
    assert [(d["rule"], d["type"]) for d in doc["denials"]] == [
        ("cap", "request-cap"),
        ("schnell-only", "model-allowlist"),
    ]
    assert all(d["reason"] for d in doc["denials"])
    table = run("check", "fal-ai/flux/dev", "--agent", "bot")
    assert table.exit_code == 3
    assert table.stdout.startswith("denied: fal-ai/flux/dev for agent bot")
    assert "cap (request-cap, deny): DENIED" in table.stdout
    assert "roomy (spend-limit, deny): ok" in table.stdout


def test_check_uses_the_request_options(run) -> None:
    doc = as_json(
        ok(
            run(
                "check",
                "fal-ai/flux/dev",
                "--agent",
                "bot",
                "--image-size",
                "square_hd",
                "--num-images",
                "4",
                "--format",
                "json",
            )
        )
    )
    assert doc["quote"]["amount"] == "0.063"


# --- authorize --------------------------------------------------------------------------------


def test_authorize_prints_a_pending_transaction(run, db_url) -> None:
    doc = as_json(ok(run("authorize", "fal-ai/flux/dev", "--agent", "bot", "--prompt", "a fox", "--format", "json")))
    assert TX_KEYS <= set(doc)
    assert (doc["status"], doc["agent"], doc["estimated_cost"], doc["actual_cost"]) == (
        "pending",
        "bot",
        "0.01185",
        None,
    )
    assert isinstance(doc["estimated_cost"], str)
    assert len(snapshot(db_url)["transactions"]) == 1


def test_authorize_table_output_lists_the_fields(run) -> None:
    out = ok(run("authorize", "fal-ai/flux/dev", "--agent", "bot")).stdout
    assert "status" in out and "pending" in out and "0.01185" in out


def test_a_denied_authorization_exits_3_with_the_json_error_shape(run, admin) -> None:
    rule(admin, name="cap", type="request-cap", limit="0.01")
    rule(admin, name="flux-schnell-only", type="model-allowlist", models=["fal-ai/flux/schnell"])
    result = run("authorize", "fal-ai/flux/dev", "--agent", "bot", "--format", "json")
    assert result.exit_code == 3
    assert result.stderr == ""
    error = as_json(result)["error"]
    assert error["code"] == "denied"
    assert "cap" in error["message"] and "flux-schnell-only" in error["message"]
    assert [d["rule"] for d in error["denials"]] == ["cap", "flux-schnell-only"]
    assert error["transaction"]["status"] == "denied"


def test_a_denied_authorization_without_json_is_one_line_naming_every_rule(run, admin) -> None:
    rule(admin, name="cap", type="request-cap", limit="0.01")
    rule(admin, name="flux-schnell-only", type="model-allowlist", models=["fal-ai/flux/schnell"])
    result = run("authorize", "fal-ai/flux/dev", "--agent", "bot")
    assert result.exit_code == 3
    line = one_error_line(result)
    assert line.startswith("error: denied for agent 'bot': cap (") and "flux-schnell-only (" in line


def test_a_request_denied_only_by_rate_limits_is_rate_limited(run, admin) -> None:
    rule(admin, name="rate", type="rate-limit", limit="1", period="day")
    ok(run("authorize", "fal-ai/flux/dev", "--agent", "bot"))
    result = run("authorize", "fal-ai/flux/dev", "--agent", "bot", "--format", "json")
    assert result.exit_code == 3
    assert as_json(result)["error"]["code"] == "rate_limited"


def test_a_paused_agent_is_denied_with_exit_3(run) -> None:
    ok(run("agents", "create", "bot"))
    ok(run("agents", "update", "bot", "--status", "paused"))
    assert run("check", "fal-ai/flux/dev", "--agent", "bot").exit_code == 3
    result = run("authorize", "fal-ai/flux/dev", "--agent", "bot")
    assert result.exit_code == 3
    assert "paused" in one_error_line(result)
    ok(run("agents", "update", "bot", "--status", "active"))
    ok(run("authorize", "fal-ai/flux/dev", "--agent", "bot"))


def test_an_alert_rule_allows_the_request_and_prints_the_alert_to_stderr(run, admin) -> None:
    rule(admin, name="watch", type="request-cap", limit="0.01", action="alert")
    result = ok(run("authorize", "fal-ai/flux/dev", "--agent", "bot", "--format", "json"))
    assert as_json(result)["status"] == "pending"
    assert result.stderr.startswith("alert: watch: ")
    alerts = as_json(ok(run("alerts", "list", "--format", "json")))
    assert [(a["rule"], a["kind"], a["agent"]) for a in alerts] == [("watch", "rule", "bot")]


def test_a_retry_with_the_same_idempotency_key_returns_the_same_transaction(run, db_url) -> None:
    first = as_json(
        ok(run("authorize", "fal-ai/flux/dev", "--agent", "bot", "--idempotency-key", "job-1", "--format", "json"))
    )
    again = as_json(
        ok(run("authorize", "fal-ai/flux/dev", "--agent", "bot", "--idempotency-key", "job-1", "--format", "json"))
    )
    assert again["id"] == first["id"] and again["idempotency_key"] == "job-1"
    before = snapshot(db_url)
    changed = run(
        "authorize",
        "fal-ai/flux/dev",
        "--agent",
        "bot",
        "--idempotency-key",
        "job-1",
        "--image-size",
        "square_hd",
        "--format",
        "json",
    )
    assert changed.exit_code == 2
    assert as_json(changed)["error"]["code"] == "invalid_request"
    assert snapshot(db_url) == before


def test_an_unknown_endpoint_is_model_not_found_with_exit_2(run, db_url) -> None:
    before = snapshot(db_url)
    result = run("authorize", "fal-ai/nope", "--agent", "bot", "--format", "json")
    assert result.exit_code == 2
    assert as_json(result)["error"]["code"] == "model_not_found"
    assert snapshot(db_url) == before


def test_auto_create_disabled_refuses_an_unknown_agent_with_exit_2(run, db_url) -> None:
    before = snapshot(db_url)
    result = run("authorize", "fal-ai/flux/dev", "--agent", "stranger", env={"PIXELGOV_AUTO_CREATE_AGENTS": "false"})
    assert result.exit_code == 2
    assert "unknown agent 'stranger'" in one_error_line(result)
    assert snapshot(db_url) == before


# --- tx ---------------------------------------------------------------------------------------


def test_tx_list_prints_json_csv_and_a_table(run, gov) -> None:
    a = gov.authorize("alice", DEV, {}).transaction
    b = gov.authorize("bob", DEV, {}).transaction
    gov.void(b.id)
    rows = as_json(ok(run("tx", "list", "--format", "json")))
    assert [r["id"] for r in rows] == [b.id, a.id]
    assert all(TX_KEYS <= set(r) for r in rows)
    assert rows[1]["estimated_cost"] == "0.01185"
    parsed = list(csv.reader(io.StringIO(ok(run("tx", "list", "--format", "csv")).stdout)))
    assert parsed[0] == ["id", "agent", "endpoint", "status", "estimated_cost", "actual_cost", "created_at"]
    assert parsed[1][:6] == [str(b.id), "bob", "fal-ai/flux/dev", "voided", "0.01185", ""]
    table = ok(run("tx", "list")).stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "AGENT", "ENDPOINT", "STATUS"]
    assert len(table) == 3
    assert [r["id"] for r in as_json(ok(run("tx", "list", "--agent", "alice", "--format", "json")))] == [a.id]
    assert [r["id"] for r in as_json(ok(run("tx", "list", "--status", "voided", "--format", "json")))] == [b.id]
    assert as_json(ok(run("tx", "list", "--until", "2000-01-01", "--format", "json"))) == []


def test_an_empty_tx_list_says_none(run) -> None:
    assert ok(run("tx", "list")).stdout.splitlines()[-1] == "(none)"
    assert as_json(ok(run("tx", "list", "--format", "json"))) == []


def test_tx_show_includes_cost_lines_and_facts(run, gov) -> None:
    tx = gov.authorize("bot", DEV, {"prompt": "fox"}).transaction
    gov.settle(tx.id, DEV.amount, facts={"latency_ms": 900})
    doc = as_json(ok(run("tx", "show", str(tx.id), "--format", "json")))
    assert TX_KEYS <= set(doc)
    assert [(c["kind"], c["amount"]) for c in doc["cost_lines"]] == [("estimate", "0.01185"), ("actual", "0.01185")]
    assert [(f["key"], f["value"]) for f in doc["facts"]] == [("latency_ms", "900")]
    assert doc["request"] == {"prompt": "fox"}
    table = ok(run("tx", "show", str(tx.id))).stdout
    assert "cost lines:" in table and "facts:" in table


def test_tx_complete_with_an_actual_cost(run, gov) -> None:
    tx = gov.authorize("bot", DEV, {}).transaction
    doc = as_json(ok(run("tx", "complete", str(tx.id), "--actual", "0.01", "--format", "json")))
    assert (doc["status"], doc["actual_cost"]) == ("completed", "0.01")
    assert gov.transaction(tx.id, detail=True).detail.facts[0].value == "given"


def test_tx_complete_without_an_actual_takes_the_estimate(run, gov) -> None:
    tx = gov.authorize("bot", DEV, {}).transaction
    doc = as_json(ok(run("tx", "complete", str(tx.id), "--format", "json")))
    assert doc["actual_cost"] == "0.01185"
    facts = {f.key: f.value for f in gov.transaction(tx.id, detail=True).detail.facts}
    assert facts == {"actual_source": "estimate (no actual given)"}


def test_tx_complete_prices_a_response_from_its_image_sizes(run, gov, tmp_path: Path) -> None:
    tx = gov.authorize("bot", DEV, {}).transaction
    response = tmp_path / "fal.json"
    response.write_text(json.dumps({"images": [{"url": "https://x/1.jpg", "width": 1024, "height": 1024}], "seed": 7}))
    doc = as_json(ok(run("tx", "complete", str(tx.id), "--response", str(response), "--format", "json")))
    assert doc["actual_cost"] == "0.01575"  # 1.05 MP × 0.015, not the 0.79 MP estimate
    facts = {f.key: f.value for f in gov.transaction(tx.id, detail=True).detail.facts}
    assert facts["output_sizes"] == "1024x1024"
    assert facts["actual_source"] == "response sizes"
    assert facts["variance"] == "0.0039"


def test_tx_complete_with_a_response_lacking_sizes_takes_the_estimate_and_says_so(run, gov, tmp_path) -> None:
    tx = gov.authorize("bot", DEV, {}).transaction
    response = tmp_path / "fal.json"
    response.write_text(json.dumps({"images": [{"url": "https://x/1.jpg"}]}))
    doc = as_json(ok(run("tx", "complete", str(tx.id), "--response", str(response), "--format", "json")))
    assert doc["actual_cost"] == "0.01185"
    facts = {f.key: f.value for f in gov.transaction(tx.id, detail=True).detail.facts}
    assert facts["actual_source"] == "estimate (the response has no image sizes)"


def test_tx_complete_prices_an_upscale_response(run, tmp_path) -> None:
    tx = as_json(
        ok(
            run(
                "authorize",
                "fal-ai/topaz/upscale/image",
                "--agent",
                "bot",
                "--input-size",
                "1024x768",
                "--format",
                "json",
            )
        )
    )
    assert tx["estimated_cost"] == "0.0945"
    response = tmp_path / "fal.json"
    response.write_text(json.dumps({"image": {"url": "https://x/u.png", "width": 4096, "height": 3072}}))
    doc = as_json(ok(run("tx", "complete", str(tx["id"]), "--response", str(response), "--format", "json")))
    assert doc["actual_cost"] == "0.3777"  # 12.582912 → 12.59 MP × 0.03: the ×4 came back, not the ×2


def test_tx_void_releases_with_a_reason(run, gov) -> None:
    tx = gov.authorize("bot", DEV, {}).transaction
    doc = as_json(ok(run("tx", "void", str(tx.id), "--reason", "never sent", "--format", "json")))
    assert (doc["status"], doc["outcome"]) == ("voided", "never sent")


def test_tx_expire_releases_holds_older_than_the_ttl_or_older_than(run, gov, clock) -> None:
    clock.set(datetime.now(UTC) - timedelta(hours=2))
    old = gov.authorize("bot", DEV, {"n": 1}).transaction
    clock.set(datetime.now(UTC) - timedelta(minutes=5))
    young = gov.authorize("bot", DEV, {"n": 2}).transaction
    assert as_json(ok(run("tx", "expire", "--format", "json"))) == {"expired": [old.id]}
    assert gov.transaction(young.id).status == TxStatus.pending
    assert ok(run("tx", "expire", "--older-than", "60")).stdout == f"expired 1 hold(s): {young.id}\n"
    assert ok(run("tx", "expire")).stdout == "expired 0 hold(s)\n"


def test_tx_expire_follows_the_hold_ttl_from_the_environment(run, gov, clock) -> None:
    clock.set(datetime.now(UTC) - timedelta(minutes=5))
    tx = gov.authorize("bot", DEV, {}).transaction
    assert as_json(ok(run("tx", "expire", "--format", "json"))) == {"expired": []}
    assert as_json(ok(run("tx", "expire", "--format", "json", env={"PIXELGOV_HOLD_TTL": "60"}))) == {"expired": [tx.id]}


def test_tx_add_cost_adds_an_adjustment_including_a_negative_one(run, gov) -> None:
    tx = gov.authorize("bot", DEV, {}).transaction
    gov.settle(tx.id, DEV.amount)
    ok(run("tx", "add-cost", str(tx.id), "0.002", "--note", "surcharge"))
    ok(run("tx", "add-cost", str(tx.id), "-0.005", "--note", "FAL credit", "--format", "json"))
    doc = as_json(ok(run("tx", "show", str(tx.id), "--format", "json")))
    assert [(c["kind"], c["amount"], c["note"]) for c in doc["cost_lines"][2:]] == [
        ("adjustment", "0.002", "surcharge"),
        ("adjustment", "-0.005", "FAL credit"),
    ]


def test_tx_add_fact_attaches_a_note(run, gov) -> None:
    tx = gov.authorize("bot", DEV, {}).transaction
    ok(run("tx", "add-fact", str(tx.id), "reviewer=alice=admin", "--format", "json"))
    doc = as_json(ok(run("tx", "show", str(tx.id), "--format", "json")))
    assert [(f["key"], f["value"]) for f in doc["facts"]] == [("reviewer", "alice=admin")]


# --- agents, rules, alerts, audit -------------------------------------------------------------


def test_agents_create_shows_the_api_key_once(run, db_url) -> None:
    created = as_json(ok(run("agents", "create", "bot", "--description", "images", "--format", "json")))
    key = created["api_key"]
    assert key.startswith("pgv_")
    assert all(key not in repr(rows) for rows in snapshot(db_url).values())
    shown = as_json(ok(run("agents", "show", "bot", "--format", "json")))
    assert "api_key" not in shown and shown["has_api_key"] is True
    table = ok(run("agents", "create", "bot2"))
    assert "api_key" in table.stdout and "not shown again" in table.stderr
    rotated = as_json(ok(run("agents", "rotate-key", "bot", "--format", "json")))
    assert rotated["api_key"] != key


def test_agents_list_in_every_format(run) -> None:
    ok(run("agents", "create", "zed"))
    ok(run("agents", "create", "amy"))
    assert [a["name"] for a in as_json(ok(run("agents", "list", "--format", "json")))] == ["amy", "zed"]
    parsed = list(csv.DictReader(io.StringIO(ok(run("agents", "list", "--format", "csv")).stdout)))
    assert [(r["name"], r["status"], r["has_api_key"]) for r in parsed] == [
        ("amy", "active", "yes"),
        ("zed", "active", "yes"),
    ]
    assert ok(run("agents", "list")).stdout.splitlines()[0].split()[:3] == ["ID", "NAME", "STATUS"]


def test_rules_create_list_show_update_delete(run) -> None:
    ok(run("agents", "create", "bot"))
    created = as_json(
        ok(
            run(
                "rules",
                "create",
                "--name",
                "bot-daily",
                "--type",
                "spend-limit",
                "--limit",
                "5",
                "--period",
                "day",
                "--agent",
                "bot",
                "--alert-at",
                "80",
                "--format",
                "json",
            )
        )
    )
    assert RULE_KEYS <= set(created)
    assert (created["limit"], created["period"], created["agent"], created["alert_at"]) == ("5", "day", "bot", 80)
    as_json(
        ok(
            run(
                "rules",
                "create",
                "--name",
                "burst",
                "--type",
                "rate-limit",
                "--limit",
                "60",
                "--window",
                "1h",
                "--format",
                "json",
            )
        )
    )
    as_json(
        ok(
            run(
                "rules",
                "create",
                "--name",
                "flux-only",
                "--type",
                "model-allowlist",
                "--models",
                "fal-ai/flux/*,fal-ai/flux-pro",
                "--format",
                "json",
            )
        )
    )
    listed = as_json(ok(run("rules", "list", "--format", "json")))
    assert [(r["name"], r["limit"]) for r in listed] == [("bot-daily", "5"), ("burst", 60), ("flux-only", None)]
    assert listed[2]["models"] == ["fal-ai/flux/*", "fal-ai/flux-pro"]
    rows = list(csv.DictReader(io.StringIO(ok(run("rules", "list", "--format", "csv")).stdout)))
    assert rows[2]["models"] == "fal-ai/flux/*,fal-ai/flux-pro"
    assert as_json(ok(run("rules", "show", str(created["id"]), "--format", "json"))) == created
    updated = as_json(ok(run("rules", "update", "bot-daily", "--limit", "10", "--disable", "--format", "json")))
    assert (updated["limit"], updated["enabled"]) == ("10", False)
    deleted = as_json(ok(run("rules", "delete", "burst", "--format", "json")))
    assert deleted["deleted"]["name"] == "burst"
    assert ok(run("rules", "delete", "flux-only")).stdout == f"deleted rule flux-only (id {listed[2]['id']})\n"
    audit = as_json(ok(run("audit", "--entity", "rule", "--format", "json")))
    assert [(e["name"], e["action"]) for e in audit] == [
        ("flux-only", "delete"),
        ("burst", "delete"),
        ("bot-daily", "update"),
        ("flux-only", "create"),
        ("burst", "create"),
        ("bot-daily", "create"),
    ]


def test_rules_created_on_the_command_line_govern_requests(run) -> None:
    ok(run("agents", "create", "bot"))
    ok(
        run(
            "rules",
            "create",
            "--name",
            "dev-budget",
            "--type",
            "spend-limit",
            "--limit",
            "0.0237",
            "--period",
            "total",
            "--agent",
            "bot",
            "--model",
            "fal-ai/flux/dev*",
            "--operation",
            "generate",
            "--alert-at",
            "50",
        )
    )
    first = ok(run("authorize", "fal-ai/flux/dev", "--agent", "bot"))
    assert first.stderr.startswith("alert: dev-budget: ")  # 0.01185 of 0.0237 reaches 50 %
    ok(run("authorize", "fal-ai/flux/dev", "--agent", "bot"))
    assert run("authorize", "fal-ai/flux/dev", "--agent", "bot").exit_code == 3
    ok(run("authorize", "fal-ai/flux/schnell", "--agent", "bot"))  # another model
    ok(run("authorize", "fal-ai/flux/dev/image-to-image", "--agent", "bot"))  # another operation
    ok(run("authorize", "fal-ai/flux/dev", "--agent", "other"))  # another agent
    assert [a["kind"] for a in as_json(ok(run("alerts", "list", "--format", "json")))] == ["threshold"]


def test_tx_complete_settles_an_unknown_outcome(run, gov) -> None:
    tx = gov.authorize("bot", DEV, {}).transaction
    gov.mark_unknown(tx.id, "timeout")
    doc = as_json(ok(run("tx", "complete", str(tx.id), "--actual", "0.012", "--format", "json")))
    assert (doc["status"], doc["actual_cost"]) == ("completed", "0.012")


def test_tx_void_releases_an_unknown_outcome(run, gov) -> None:
    tx = gov.authorize("bot", DEV, {}).transaction
    gov.mark_unknown(tx.id, "timeout")
    assert as_json(ok(run("tx", "void", str(tx.id), "--format", "json")))["status"] == "voided"


def test_audit_lists_agent_and_rule_changes(run) -> None:
    ok(run("agents", "create", "bot"))
    ok(run("agents", "update", "bot", "--status", "paused"))
    rows = list(csv.DictReader(io.StringIO(ok(run("audit", "--format", "csv")).stdout)))
    assert [(r["entity"], r["name"], r["action"]) for r in rows] == [
        ("agent", "bot", "update"),
        ("agent", "bot", "create"),
    ]


def test_alerts_list_in_every_format(run, admin) -> None:
    rule(admin, name="watch", type="request-cap", limit="0.01", action="alert")
    ok(run("authorize", "fal-ai/flux/dev", "--agent", "bot"))
    assert len(as_json(ok(run("alerts", "list", "--format", "json")))) == 1
    parsed = list(csv.DictReader(io.StringIO(ok(run("alerts", "list", "--format", "csv")).stdout)))
    assert [(r["rule"], r["agent"]) for r in parsed] == [("watch", "bot")]
    assert "watch" in ok(run("alerts", "list")).stdout


# --- bad input: exit 2, one line, nothing written ---------------------------------------------

BAD_INPUTS = [
    # rule definitions
    "rules create --name r --type spend-limit --limit 0 --period day",
    "rules create --name r --type spend-limit --limit -1 --period day",
    "rules create --name r --type spend-limit --limit 0.0000000001 --period day",
    "rules create --name r --type spend-limit --limit 1.0000000001 --period day",
    "rules create --name r --type spend-limit --limit 1e40 --period day",
    "rules create --name r --type spend-limit --limit 10000000000 --period day",
    "rules create --name r --type spend-limit --limit five --period day",
    "rules create --name r --type request-cap --limit 0",
    "rules create --name r --type rate-limit --limit 0 --period day",
    "rules create --name r --type rate-limit --limit -3 --period day",
    "rules create --name r --type rate-limit --limit 2.5 --period day",
    "rules create --name r --type rate-limit --limit 99999999999 --period day",
    "rules create --name r --type budget --limit 1",
    "rules create --name r --limit 1",
    "rules create --type request-cap --limit 1",
    "rules create --name r --type spend-limit --limit 1 --period fortnight",
    "rules create --name r --type rate-limit --limit 5 --period week",
    "rules create --name r --type rate-limit --limit 5",
    "rules create --name r --type spend-limit --limit 1 --window 5x",
    "rules create --name r --type spend-limit --limit 1 --window 30s",
    "rules create --name r --type rate-limit --limit 5 --window 400d",
    "rules create --name r --type spend-limit --limit 1 --period day --window 24h",
    "rules create --name r --type request-cap --limit 1 --period day",
    "rules create --name r --type request-cap --limit 1 --window 1h",
    "rules create --name r --type request-cap --limit 1 --alert-at 50",
    "rules create --name r --type rate-limit --limit 5 --period day --models fal-ai/*",
    "rules create --name r --type model-allowlist --models fal-ai/* --limit 5",
    "rules create --name r --type model-allowlist --models fal-ai/* --period day",
    "rules create --name r --type model-allowlist",
    "rules create --name r --type spend-limit --limit 1 --alert-at 0",
    "rules create --name r --type spend-limit --limit 1 --alert-at 101",
    "rules create --name r --type request-cap --limit 1 --action block",
    "rules create --name r --type request-cap --limit 1 --operation paint",
    "rules create --name r --type request-cap --limit 1 --agent ghost",
    "rules create --name existing --type request-cap --limit 2",
    "rules create --name {long} --type request-cap --limit 1",
    "rules create --name r --type request-cap --limit 1 --model {long}",
    "rules update existing --limit 0",
    "rules update existing --limit 0.0000000001",
    "rules update existing --period day",
    "rules update existing --type rate-limit",
    "rules update existing --agent ghost",
    "rules update no-pro --limit 5",
    "rules update no-pro --name existing",
    "rules update ghost --limit 1",
    "rules update 999 --limit 1",
    "rules show ghost",
    "rules delete ghost",
    # agents
    "agents create bot",
    "agents create bad!name",
    "agents show ghost",
    "agents update ghost --status paused",
    "agents update bot",
    "agents rotate-key ghost",
    # transactions
    "tx show 999",
    "tx show 99999999999999999999",
    "tx complete 999",
    "tx void 999",
    "tx add-cost 999 0.01",
    "tx add-fact 999 k=v",
    "tx complete {completed}",
    "tx complete {voided}",
    "tx complete {failed}",
    "tx complete {expired}",
    "tx complete {denied}",
    "tx void {completed}",
    "tx void {voided}",
    "tx void {expired}",
    "tx void {denied}",
    "tx complete {pending} --actual 0.0000000001",
    "tx complete {pending} --actual -0.01",
    "tx complete {pending} --actual lots",
    "tx complete {pending} --actual 1e40",
    "tx complete {pending} --actual 10000000000",
    "tx complete {pending} --actual 0.01 --response {response}",
    "tx complete {pending} --response {missing}",
    "tx complete {pending} --response {not_json}",
    "tx complete {pending} --response {array}",
    "tx add-cost {pending} 0.01",
    "tx add-cost {completed} 0.0000000001",
    "tx add-cost {completed} 10000000000",
    "tx add-cost {completed} nothing",
    "tx add-fact {pending} no-equals-sign",
    "tx add-fact {pending} =value",
    "tx list --status lost",
    "tx list --agent ghost",
    "tx list --since yesterday",
    "tx list --since 0m",
    # requests
    "authorize fal-ai/nope --agent bot",
    "authorize fal-ai/flux/dev --agent bad!name",
    "authorize fal-ai/flux/dev --agent bot --idempotency-key {long}",
    "authorize fal-ai/flux/dev --agent bot --num-images 9",
    "authorize fal-ai/flux/dev --agent bot --image-size 99999x99999",
    "check fal-ai/flux/dev --agent bot --params {not_json}",
]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Placeholders of BAD_INPUTS: response files, and a text longer than any name column."""
    paths = {
        "response": tmp_path / "ok.json",
        "not_json": tmp_path / "bad.json",
        "array": tmp_path / "list.json",
        "missing": tmp_path / "missing.json",
    }
    paths["response"].write_text('{"images": []}')
    paths["not_json"].write_text("{nope")
    paths["array"].write_text("[1, 2]")
    return {**{k: str(v) for k, v in paths.items()}, "long": "x" * 250}


def test_every_bad_input_exits_2_with_one_line_and_writes_nothing(db_url, ledger_state, files) -> None:
    # One ledger for all the commands (each one checked against a snapshot of every table): a fixture
    # per command would make this the slowest test of the suite. Every failing command is reported.
    failures = []
    for command in BAD_INPUTS:
        args = [a.format(**ledger_state, **files) for a in command.split()]
        before = snapshot(db_url)
        result = invoke(db_url, *args)
        try:
            assert result.exit_code == 2, f"exit {result.exit_code}"
            one_error_line(result)
            assert snapshot(db_url) == before, "the ledger changed"
        except AssertionError as error:
            failures.append(f"{command}: {error} | {result.output.strip()[:300]}")
    assert failures == []


JSON_ERRORS = [
    ("rules create --name r --type spend-limit --limit 0 --period day", "invalid_request"),
    ("rules show ghost", "not_found"),
    ("agents create bot", "invalid_request"),
    ("tx void {completed}", "invalid_request"),
    ("tx show 999", "not_found"),
    ("tx complete {pending} --actual 0.0000000001", "invalid_request"),
    ("tx add-fact {pending} no-equals-sign", "invalid_request"),
    ("authorize fal-ai/nope --agent bot", "model_not_found"),
    ("authorize fal-ai/flux/dev --agent bot --image-size 99999x99999", "image_too_large"),
]


def test_bad_input_with_json_prints_the_error_shape_on_stdout(db_url, ledger_state) -> None:
    before = snapshot(db_url)
    for command, code in JSON_ERRORS:
        result = invoke(db_url, *[a.format(**ledger_state) for a in command.split()], "--format", "json")
        assert (result.exit_code, result.stderr) == (2, ""), command
        doc = json.loads(result.stdout)
        assert set(doc) == {"error"}, command
        assert doc["error"]["code"] == code, command
        assert isinstance(doc["error"]["message"], str) and doc["error"]["message"], command
    assert snapshot(db_url) == before


@pytest.mark.parametrize(
    "command", ["tx show abc", "authorize fal-ai/flux/dev", "tx list --format xml", "tx show abc --format json"]
)
def test_a_usage_mistake_is_reported_like_any_bad_input(sqlite_url, command: str) -> None:
    result = invoke(sqlite_url, *command.split())
    assert result.exit_code == 2
    if command.endswith("json"):
        assert json.loads(result.stdout)["error"]["code"] == "invalid_request"
    else:
        one_error_line(result)


def test_a_field_error_names_the_field(db_url, ledger_state) -> None:
    result = invoke(
        db_url,
        "rules",
        "create",
        "--name",
        "r",
        "--type",
        "rate-limit",
        "--limit",
        "5",
        "--period",
        "week",
        "--format",
        "json",
    )
    error = json.loads(result.stdout)["error"]
    assert (error["code"], error["field"]) == ("invalid_request", "period")


#: (command, env, code, field, the hint the CLI appends on stderr): the library's message names no flag or
#: command; the one stderr line is that message plus the hint in parentheses; the JSON error has no hint.
HINTED_ERRORS = [
    ("rules create --name r --type spend-limit --period day", None, "invalid_request", "limit", "(--limit)"),
    (
        "rules create --name r --type rate-limit --limit 5 --period week",
        None,
        "invalid_request",
        "period",
        "(--period)",
    ),
    (
        "rules create --name r --type spend-limit --limit 1 --period day --window 24h",
        None,
        "invalid_request",
        "period",
        "(--period)",
    ),
    ("rules create --name r --type model-allowlist", None, "invalid_request", "models", "(--models)"),
    (
        "rules create --name r --type request-cap --limit 1 --alert-at 50",
        None,
        "invalid_request",
        "alert_at",
        "(--alert-at)",
    ),
    ("tx complete {pending} --actual 0.01 --response {response}", None, "invalid_request", "actual", "(--actual)"),
    ("check fal-ai/flux/dev --agent bot --params {not_json}", None, "invalid_request", "params", "(--params)"),
    (
        "authorize fal-ai/topaz/upscale/image --agent bot",
        None,
        "invalid_request",
        "input_size",
        "(give --input-size WxH)",
    ),
    ("authorize fal-ai/nope --agent bot", None, "model_not_found", None, "(see `pixelgov models`)"),
    (
        "rules create --name r --type request-cap --limit 1 --agent ghost",
        None,
        "not_found",
        None,
        "(create it with `pixelgov agents create ghost`)",
    ),
    (
        "authorize fal-ai/flux/dev --agent stranger",
        {"PIXELGOV_AUTO_CREATE_AGENTS": "false"},
        "not_found",
        None,
        "(create it with `pixelgov agents create stranger`)",
    ),
]


def test_the_cli_adds_the_hint_the_library_message_leaves_out(db_url, ledger_state, files) -> None:
    before = snapshot(db_url)
    for command, env, code, field, hint in HINTED_ERRORS:
        args = [a.format(**ledger_state, **files) for a in command.split()]
        as_doc = invoke(db_url, *args, "--format", "json", env=env)
        assert (as_doc.exit_code, as_doc.stderr) == (2, ""), command
        error = json.loads(as_doc.stdout)["error"]
        assert (error["code"], error.get("field")) == (code, field), command
        message = error["message"]
        assert "--" not in message and "`pixelgov" not in message, (command, message)
        line = one_error_line(invoke(db_url, *args, env=env))
        assert line == f"error: {message} {hint}\n", command
    assert snapshot(db_url) == before


def test_every_hinted_flag_is_an_option_of_the_command(db_url, ledger_state, files) -> None:
    # A hint must be something the user can type: a flag the failing command really has.
    wrong = []
    for command in BAD_INPUTS:
        args = [a.format(**ledger_state, **files) for a in command.split()]
        line = invoke(db_url, *args).stderr.strip()
        hint = re.search(r"\(([^()]*)\)$", line)
        flags = re.findall(r"(?<![\w-])--[a-z][a-z-]*", hint.group(1)) if hint else []
        path = tuple(args[:2]) if args[0] in ("rules", "agents", "tx", "alerts", "db") else (args[0],)
        options = {opt for param in resolve(path).params for opt in param.opts}
        wrong += [f"{command}: {line}" for flag in flags if flag not in options]
    assert wrong == []


# --- the database -----------------------------------------------------------------------------


def test_an_unreachable_database_is_exit_1_with_one_clear_line() -> None:
    result = invoke("postgresql+psycopg://postgres@127.0.0.1:1/x", "tx", "list")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "database unavailable" in line and "127.0.0.1" in line


def test_an_unreachable_database_with_json_is_the_error_shape() -> None:
    result = invoke("postgresql+psycopg://postgres@127.0.0.1:1/x", "tx", "list", "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "database_unavailable"


def test_a_locked_sqlite_database_is_exit_1_after_a_bounded_wait(sqlite_url, monkeypatch) -> None:
    monkeypatch.setenv("PIXELGOV_DB_TIMEOUT", "0.5")  # read by every invocation, at the entry point
    ok(invoke(sqlite_url, "agents", "create", "bot"))
    path = sqlite_url.removeprefix("sqlite:///")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        result = invoke(sqlite_url, "authorize", "fal-ai/flux/dev", "--agent", "bot")
        waited = time.monotonic() - started
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "busy" in line and "locked" in line
    assert 0.4 < waited < 5
    ok(invoke(sqlite_url, "authorize", "fal-ai/flux/dev", "--agent", "bot"))  # and works once released


def test_first_use_of_a_freshly_migrated_database_waits_for_a_brief_lock(sqlite_url, monkeypatch) -> None:
    monkeypatch.setenv("PIXELGOV_DB_TIMEOUT", "10")
    from ledger.policy import governor  # noqa: F401 - imported before the lock is taken, so only the wait is timed

    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process writing: it commits a second later
    release = threading.Timer(1.0, lambda: other.execute("ROLLBACK"))
    release.start()
    try:
        result = invoke(sqlite_url, "authorize", "fal-ai/flux/dev", "--agent", "bot")
    finally:
        release.join()
        other.close()
    assert result.exit_code == 0, result.stderr


def test_a_database_behind_head_names_pixelgov_db_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = invoke(url, "tx", "list")
    assert result.exit_code == 1
    assert "pixelgov db upgrade" in one_error_line(result)
    as_doc = invoke(url, "agents", "list", "--format", "json")
    assert as_doc.exit_code == 1
    error = json.loads(as_doc.stdout)["error"]
    assert error["code"] == "schema_behind"
    assert "pixelgov db upgrade" not in error["message"]  # the hint is the CLI's, on stderr only
    with sqlite3.connect(tmp_path / "empty.db") as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == []


def test_the_default_database_is_created_and_migrated_on_first_use(monkeypatch) -> None:
    url = db.default_url()
    path = Path(url.removeprefix("sqlite:///"))
    assert str(path).startswith(str(Path.home())) or "data" in str(path)  # conftest's temporary data dir
    assert not path.exists()
    ok(invoke(None, "agents", "create", "bot"))
    assert path.exists()
    with scratch_engine(url) as engine:
        assert db.current_revision(engine) == db.SCHEMA_HEAD
    assert [a["name"] for a in json.loads(ok(invoke(None, "agents", "list", "--format", "json")).stdout)] == ["bot"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [("PIXELGOV_HOLD_TTL", "nan"), ("PIXELGOV_DB_TIMEOUT", "abc"), ("PIXELGOV_AUTO_CREATE_AGENTS", "maybe")],
)
def test_a_malformed_setting_is_bad_input_naming_the_variable(sqlite_url, variable, value) -> None:
    before = snapshot(sqlite_url)
    env = {variable: value}
    result = invoke(sqlite_url, "authorize", "fal-ai/flux/dev", "--agent", "bot", env=env)
    assert result.exit_code == 2
    assert one_error_line(result).startswith(f"error: {variable}: ")
    as_doc = invoke(sqlite_url, "authorize", "fal-ai/flux/dev", "--agent", "bot", "--format", "json", env=env)
    assert (as_doc.exit_code, as_doc.stderr) == (2, ""), as_doc.output  # --format json: the error is JSON too
    error = json.loads(as_doc.stdout)["error"]
    assert (error["code"], error["field"]) == ("invalid_request", variable)
    assert snapshot(sqlite_url) == before


def test_the_database_url_comes_from_the_environment(sqlite_url) -> None:
    ok(invoke(None, "agents", "create", "via-env", env={"PIXELGOV_DATABASE_URL": sqlite_url}))
    names = [a["name"] for a in json.loads(ok(invoke(sqlite_url, "agents", "list", "--format", "json")).stdout)]
    assert names == ["via-env"]


# --- help -------------------------------------------------------------------------------------


def command_paths() -> list[tuple[str, ...]]:
    """Every command and subcommand of `pixelgov`, the group itself first: walked from the group,
    which loads the lazily imported ones (`_COMMANDS`). A command that cannot be loaded is still
    listed, so that its own test reports it."""
    ctx = click.Context(cli, info_name="pixelgov")
    paths: list[tuple[str, ...]] = [()]

    def walk(group: click.Group, prefix: tuple[str, ...]) -> None:
        for name in group.list_commands(ctx):
            paths.append((*prefix, name))
            try:
                command = group.get_command(ctx, name)
            except Exception:  # reported by test_every_command_loads
                continue
            if isinstance(command, click.Group):
                walk(command, (*prefix, name))

    walk(cli, ())
    return paths


COMMAND_PATHS = command_paths()


def resolve(path: tuple[str, ...]) -> click.Command:
    ctx = click.Context(cli, info_name="pixelgov")
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group), path
        found = command.get_command(ctx, name)
        assert found is not None, f"{' '.join(path)}: no such command"
        command = found
    return command


def test_the_walk_finds_every_lazily_loaded_command_and_the_ledger_commands() -> None:
    top = {p[0] for p in COMMAND_PATHS if len(p) == 1}
    assert set(_COMMANDS) <= top
    assert {
        "tx list",
        "tx show",
        "tx complete",
        "tx void",
        "tx expire",
        "tx add-cost",
        "tx add-fact",
        "agents create",
        "agents list",
        "agents show",
        "agents update",
        "agents rotate-key",
        "rules create",
        "rules list",
        "rules show",
        "rules update",
        "rules delete",
        "alerts list",
        "db upgrade",
        "db current",
    } <= {" ".join(p) for p in COMMAND_PATHS}


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_every_command_loads(name: str) -> None:
    command = resolve((name,))
    assert isinstance(command, click.Command) and command.name == name


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "pixelgov")
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    command = resolve(path)
    # The docstring's example: a line that runs this very command (global options such as --db may come first).
    examples = [line.strip() for line in (command.help or "").splitlines() if line.strip().startswith("pixelgov")]
    runs_it = [e for e in examples if _runs(e.split()[1:], path)]
    assert runs_it, f"`pixelgov {' '.join(path)}`: no example line in its docstring ({examples})"
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="pixelgov")
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.startswith(f"Usage: {' '.join(('pixelgov', *path))} ")
    shown = [line.strip() for line in result.stdout.splitlines()]
    assert runs_it[0] in shown  # printed as written (not re-wrapped into the prose)


def _runs(tokens: list[str], path: tuple[str, ...]) -> bool:
    """Whether `pixelgov TOKENS` invokes `path` (after the group's own `--db URL`, if given)."""
    while tokens[:1] == ["--db"]:
        tokens = tokens[2:]
    return tuple(tokens[: len(path)]) == path
