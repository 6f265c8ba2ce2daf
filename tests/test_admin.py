"""Administration: agents and their API keys, spending rules, the audit log, alerts,
and agents created on first use (or not). Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from support import count, row_counts, snapshot, spec
from support import rule_usage as usage

from ledger import Settings
from ledger.errors import Conflict, InvalidRequest, NotFound
from ledger.policy.admin import Admin
from ledger.policy.governor import Governor
from ledger.records import Agent, AgentStatus, Alert, AuditEntry, RuleAction, RuleType, SpendingRule, TxStatus
from ledger.store.models import agents, audit_log, holds, spending_rules
from ledger.validation import validate_agent_name
from pricing import quote

DEV = quote("fal-ai/flux/dev", {})
EST = Decimal("0.01185")


def rows(engine, table) -> list:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table))]


# --- agents -----------------------------------------------------------------------------------


def test_a_new_agents_api_key_is_shown_once_and_only_its_sha256_is_stored(admin, engine, clock) -> None:
    created = admin.create_agent("marketing-bot", "social images")
    assert isinstance(created, Agent)
    key = created.api_key
    assert key is not None and key.startswith("pgv_") and len(key) > 40
    assert created.status == AgentStatus.active and created.has_api_key is True
    assert created.api_key_prefix == key[:10]
    assert created.description == "social images"
    assert created.created_at == created.updated_at == clock()
    assert created.to_json()["api_key"] == key  # the one time it is shown
    assert key not in repr(created)  # never by accident (logs, tracebacks)
    # Nowhere in the database: not in the agents table, not in the audit log.
    for table in (agents, audit_log):
        for row in rows(engine, table):
            assert all(key not in str(value) for value in row), table.name
    with engine.connect() as conn:
        stored = conn.execute(select(agents.c.api_key_hash).where(agents.c.name == "marketing-bot")).scalar_one()
    assert stored == hashlib.sha256(key.encode()).hexdigest()
    # Shown once: reading the agent back never returns it.
    read = admin.agent("marketing-bot")
    assert read.api_key is None and "api_key" not in read.to_json()
    assert read.has_api_key is True and read.api_key_prefix == key[:10]
    assert all(a.api_key is None and "api_key" not in a.to_json() for a in admin.agents())
    assert admin.agent_by_api_key(key).name == "marketing-bot"
    assert admin.agent_by_api_key(key).api_key is None
    assert admin.agent_by_api_key(key + "x") is None


def test_an_agent_has_the_promised_wire_shape(admin) -> None:
    created = admin.create_agent("bot", "d", with_key=False)
    assert admin.agent("bot").to_json() == {
        "id": created.id,
        "name": "bot",
        "description": "d",
        "status": "active",
        "has_api_key": False,
        "api_key_prefix": None,
        "created_at": "2026-11-25T12:00:00Z",
        "updated_at": "2026-11-25T12:00:00Z",
    }


def test_every_agent_gets_a_different_key(admin) -> None:
    assert admin.create_agent("a").api_key != admin.create_agent("b").api_key


def test_an_agent_can_be_created_without_a_key(admin) -> None:
    created = admin.create_agent("internal", with_key=False)
    assert created.api_key is None and "api_key" not in created.to_json()
    assert created.has_api_key is False and created.api_key_prefix is None


def test_a_duplicate_agent_name_is_refused(admin, engine) -> None:
    admin.create_agent("bot")
    with pytest.raises(Conflict) as error:
        admin.create_agent("bot")
    assert error.value.code == "invalid_request"
    assert error.value.field == "name"
    assert "already exists" in error.value.message
    assert count(engine, agents) == 1
    assert count(engine, audit_log) == 1


@pytest.mark.parametrize(
    "name",
    [
        "",
        " bot",
        "bot name",
        "-bot",
        "bot!",
        "a" * 201,
        "ünïcode",
        "a\nb",
        "bot\n",
        "bot\r\n",
        "\nbot",
        "bot\t",
        "bot\x00",
    ],
)
def test_an_invalid_agent_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        validate_agent_name(name)
    assert error.value.field == "agent"


@pytest.mark.parametrize("name", ["bot", "B0t", "team/bot-1", "bot@corp.example", "ns:bot_2", "a" * 200])
def test_a_valid_agent_name_is_accepted(name: str) -> None:
    validate_agent_name(name)


@pytest.mark.parametrize("name", ["bot name", "bot\n"])
def test_an_agent_with_an_invalid_name_is_not_created(admin, engine, name: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        admin.create_agent(name)
    assert error.value.field == "agent"
    assert count(engine, agents) == 0
    assert count(engine, audit_log) == 0


def test_rotating_a_key_retires_the_old_one(admin, engine) -> None:
    old = admin.create_agent("bot").api_key
    rotated = admin.rotate_key("bot")
    new = rotated.api_key
    assert new is not None and new != old and new.startswith("pgv_")
    assert rotated.api_key_prefix == new[:10]
    assert admin.agent_by_api_key(old) is None
    assert admin.agent_by_api_key(new).name == "bot"
    for row in rows(engine, agents) + rows(engine, audit_log):
        assert all(new not in str(v) and old not in str(v) for v in row)
    assert [e.action for e in admin.audit(entity="agent")] == ["rotate-key", "create"]


def test_pausing_and_resuming_an_agent_is_audited(admin) -> None:
    admin.create_agent("bot")
    paused = admin.update_agent("bot", status="paused")
    assert paused.status == AgentStatus.paused
    resumed = admin.update_agent("bot", status="active", description="back")
    assert (resumed.status, resumed.description) == (AgentStatus.active, "back")
    log = admin.audit(entity="agent")
    assert all(isinstance(e, AuditEntry) for e in log)
    assert [e.action for e in log] == ["update", "update", "create"]
    assert (log[1].before["status"], log[1].after["status"]) == ("active", "paused")
    assert (log[0].before["status"], log[0].after["status"]) == ("paused", "active")


def test_an_agent_status_must_be_active_or_paused(admin, engine) -> None:
    admin.create_agent("bot")
    before = snapshot(engine)
    with pytest.raises(InvalidRequest) as error:
        admin.update_agent("bot", status="deleted")
    assert error.value.field == "status"
    assert admin.agent("bot").status == AgentStatus.active
    assert snapshot(engine) == before


def test_an_unknown_agent_is_not_found(admin, engine) -> None:
    for action in (
        lambda: admin.agent("ghost"),
        lambda: admin.update_agent("ghost", status="paused"),
        lambda: admin.rotate_key("ghost"),
    ):
        with pytest.raises(NotFound) as error:
            action()
        assert error.value.code == "not_found"
        assert "ghost" in error.value.message
    assert count(engine, audit_log) == 0


def test_agents_are_listed_by_name(admin) -> None:
    for name in ("zed", "amy", "kim"):
        admin.create_agent(name)
    assert [a.name for a in admin.agents()] == ["amy", "kim", "zed"]


# --- agents on first use ----------------------------------------------------------------------


def test_an_unknown_agent_is_created_on_first_use_and_audited(gov, admin) -> None:
    assert gov.authorize("newbie", DEV, {}).allowed
    newbie = admin.agent("newbie")
    assert newbie.status == AgentStatus.active and newbie.has_api_key is False
    entry = admin.audit(entity="agent")[0]
    assert (entry.name, entry.action, entry.after["created"]) == ("newbie", "create", "on first use")
    assert entry.entity_id == newbie.id


def test_without_auto_create_an_unknown_agent_is_refused_and_nothing_is_written(engine, clock, admin) -> None:
    strict = Governor(engine, clock=clock, hold_ttl=900, auto_create=False)
    before = snapshot(engine)
    with pytest.raises(NotFound) as error:
        strict.authorize("stranger", DEV, {})
    assert error.value.code == "not_found"
    assert "stranger" in error.value.message
    assert error.value.details["reason"] == "create_first"  # the CLI adds how (agents create)
    with pytest.raises(NotFound) as checked:
        strict.check("stranger", DEV)
    assert checked.value.details["reason"] == "create_first"
    assert snapshot(engine) == before
    assert admin.agents() == []
    assert strict.transactions() == []
    admin.create_agent("stranger")
    assert strict.authorize("stranger", DEV, {}).allowed


@pytest.mark.parametrize(
    "value, creates",
    [
        ("false", False),
        ("FALSE", False),
        ("0", False),
        ("no", False),
        ("off", False),
        (" Off ", False),
        ("true", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("", True),
    ],
)
def test_auto_create_agents_is_read_from_the_environment_into_settings(value: str, creates: bool) -> None:
    assert Settings.from_env({"PIXELGOV_AUTO_CREATE_AGENTS": value}).auto_create_agents is creates


def test_auto_create_agents_defaults_to_on() -> None:
    assert Settings.from_env({}).auto_create_agents is True
    assert Settings().auto_create_agents is True


@pytest.mark.parametrize("value", ["maybe", "2", "tru", "nein"])
def test_a_malformed_auto_create_agents_value_names_the_variable(value: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        Settings.from_env({"PIXELGOV_AUTO_CREATE_AGENTS": value})
    assert error.value.field == "PIXELGOV_AUTO_CREATE_AGENTS"
    assert "PIXELGOV_AUTO_CREATE_AGENTS" in error.value.message


@pytest.mark.parametrize("value, creates", [("false", False), ("true", True)])
def test_auto_create_agents_follows_the_settings(engine, clock, admin, value, creates) -> None:
    settings = Settings.from_env({"PIXELGOV_AUTO_CREATE_AGENTS": value})
    gov = Governor(engine, clock=clock, auto_create=settings.auto_create_agents)
    assert gov.auto_create is creates
    if creates:
        assert gov.authorize("stranger", DEV, {}).allowed
    else:
        with pytest.raises(NotFound):
            gov.authorize("stranger", DEV, {})
    assert [a.name for a in admin.agents()] == (["stranger"] if creates else [])


def test_an_invalid_agent_name_is_not_created_on_first_use(gov, admin, engine) -> None:
    for name in ("no spaces please", "bot\n", ""):
        with pytest.raises(InvalidRequest) as error:
            gov.authorize(name, DEV, {})
        assert error.value.field == "agent"
    assert admin.agents() == []
    assert row_counts(engine)["transactions"] == 0


# --- rules ------------------------------------------------------------------------------------


def test_a_rule_has_the_promised_shape(admin) -> None:
    admin.create_agent("bot")
    rule = admin.create_rule(
        spec(
            name="bot-daily",
            type="spend-limit",
            limit="5",
            period="day",
            agent="bot",
            model="fal-ai/flux/*",
            operation="generate",
            alert_at="80",
        )
    )
    assert isinstance(rule, SpendingRule)
    assert (rule.type, rule.limit, rule.action, rule.alert_at) == (
        RuleType.spend_limit,
        Decimal("5"),
        RuleAction.deny,
        80,
    )
    assert rule.to_json() == {
        "id": rule.id,
        "name": "bot-daily",
        "type": "spend-limit",
        "limit": "5",
        "period": "day",
        "window": None,
        "models": None,
        "agent": "bot",
        "model": "fal-ai/flux/*",
        "operation": "generate",
        "action": "deny",
        "enabled": True,
        "alert_at": 80,
        "version": 1,
    }
    assert isinstance(rule.id, int)
    assert admin.rule("bot-daily") == rule
    assert admin.rule(str(rule.id)) == rule


def test_rule_limits_keep_their_types(admin) -> None:
    rate = admin.create_rule(spec(name="rate", type="rate-limit", limit="60", window="1h"))
    allow = admin.create_rule(spec(name="allow", type="model-allowlist", models=["fal-ai/flux/*", "fal-ai/flux-pro"]))
    cap = admin.create_rule(spec(name="cap", type="request-cap", limit="0.10", action="alert"))
    assert (rate.limit, rate.window, rate.period) == (60, "1h", None)
    assert type(rate.limit) is int and rate.to_json()["limit"] == 60
    assert (allow.limit, allow.models) == (None, ("fal-ai/flux/*", "fal-ai/flux-pro"))
    assert allow.to_json()["models"] == ["fal-ai/flux/*", "fal-ai/flux-pro"]
    assert (cap.limit, cap.action) == (Decimal("0.1"), RuleAction.alert)
    assert isinstance(cap.limit, Decimal)
    assert (cap.to_json()["limit"], cap.to_json()["action"]) == ("0.1", "alert")
    assert [r.name for r in admin.rules()] == ["rate", "allow", "cap"]


def test_a_rule_for_an_unknown_agent_is_refused(admin, engine) -> None:
    with pytest.raises(NotFound) as error:
        admin.create_rule(spec(name="r", type="request-cap", limit="1", agent="ghost"))
    assert error.value.details["reason"] == "create_first"
    assert count(engine, spending_rules) == 0
    assert count(engine, audit_log) == 0


def test_a_duplicate_rule_name_is_refused(admin, engine) -> None:
    admin.create_rule(spec(name="cap", type="request-cap", limit="1"))
    with pytest.raises(Conflict) as error:
        admin.create_rule(spec(name="cap", type="request-cap", limit="2"))
    assert "already exists" in error.value.message
    assert error.value.field == "name"
    other = admin.create_rule(spec(name="cap2", type="request-cap", limit="2"))
    with pytest.raises(Conflict):
        admin.update_rule(str(other.id), spec(name="cap"))
    assert [r.name for r in admin.rules()] == ["cap", "cap2"]
    assert count(engine, audit_log) == 2


def test_every_rule_change_is_in_the_audit_log(admin) -> None:
    created = admin.create_rule(spec(name="cap", type="request-cap", limit="1"))
    updated = admin.update_rule("cap", spec(limit="2"))
    assert (updated.limit, updated.version) == (Decimal("2"), 2)
    deleted = admin.delete_rule("cap")
    assert deleted.limit == Decimal("2")
    log = admin.audit(entity="rule")
    assert [e.action for e in log] == ["delete", "update", "create"]
    assert (log[2].before, log[2].after) == (None, created.to_json())
    assert (log[1].before["limit"], log[1].after["limit"]) == ("1", "2")
    assert (log[0].before["name"], log[0].after) == ("cap", None)
    assert all(e.entity_id == created.id and e.name == "cap" for e in log)
    assert log[0].to_json()["after"] is None and log[0].to_json()["entity"] == "rule"
    with pytest.raises(NotFound):
        admin.rule("cap")


def test_an_unknown_rule_is_not_found(admin, engine) -> None:
    for action in (
        lambda: admin.rule("ghost"),
        lambda: admin.update_rule("ghost", spec(limit="1")),
        lambda: admin.delete_rule("ghost"),
        lambda: admin.rule("999"),
    ):
        with pytest.raises(NotFound) as error:
            action()
        assert error.value.code == "not_found"
    assert count(engine, audit_log) == 0


def test_an_update_is_validated_as_a_whole(admin, engine) -> None:
    admin.create_rule(spec(name="cap", type="request-cap", limit="1"))
    before = snapshot(engine)
    for bad, field in (
        (spec(limit="0"), "limit"),
        (spec(period="day"), "period"),
        (spec(type="spend-limit"), "type"),
        (spec(models=["x"]), "models"),
        (spec(limit="0.0000000001"), "limit"),
        (spec(action="shout"), "action"),
        (spec(name=""), "name"),
    ):
        with pytest.raises(InvalidRequest) as error:
            admin.update_rule("cap", bad)
        assert error.value.field == field
    assert admin.rule("cap").limit == Decimal("1") and admin.rule("cap").version == 1
    assert count(engine, audit_log) == 1
    assert snapshot(engine) == before


def test_a_rule_can_move_from_a_period_to_a_rolling_window_and_back(admin) -> None:
    admin.create_rule(spec(name="budget", type="spend-limit", limit="5", period="day"))
    rolling = admin.update_rule("budget", spec(window="12h"))
    assert (rolling.period, rolling.window) == (None, "12h")
    calendar = admin.update_rule("budget", spec(period="week"))
    assert (calendar.period, calendar.window) == ("week", None)
    with pytest.raises(InvalidRequest):
        admin.update_rule("budget", spec(period="day", window="24h"))


def test_changing_a_limit_keeps_the_counted_spend(gov, admin, engine) -> None:
    rule = admin.create_rule(spec(name="budget", type="spend-limit", limit="0.0237", period="day"))
    gov.authorize("bot", DEV, {})
    gov.authorize("bot", DEV, {})
    admin.update_rule("budget", spec(limit="0.03"))
    assert usage(engine, rule.id) == (0, EST * 2, 2)
    assert not gov.authorize("bot", DEV, {}).allowed
    admin.update_rule("budget", spec(limit="0.04"))
    assert gov.authorize("bot", DEV, {}).allowed


@pytest.mark.parametrize(
    "change",
    [
        spec(period="week"),
        spec(window="24h"),
        spec(agent="bot"),
        spec(model="fal-ai/flux/*"),
        spec(operation="generate"),
    ],
)
def test_changing_what_a_rule_counts_recounts_the_ledger_under_the_new_definition(gov, admin, engine, change) -> None:
    admin.create_agent("bot")
    rule = admin.create_rule(spec(name="budget", type="spend-limit", limit="0.0237", period="day"))
    pending = gov.authorize("bot", DEV, {"n": 1}).transaction
    settled = gov.authorize("bot", DEV, {"n": 2}).transaction
    gov.settle(settled.id, DEV.amount - Decimal("0.001"))
    assert not gov.authorize("bot", DEV, {"n": 3}).allowed  # denied: not counted anywhere
    admin.update_rule("budget", change)
    # Every change above still matches both transactions: the recount finds them again.
    assert usage(engine, rule.id) == (DEV.amount - Decimal("0.001"), EST, 2)
    gov.settle(pending.id, DEV.amount)
    assert usage(engine, rule.id) == (DEV.amount * 2 - Decimal("0.001"), 0, 2)


@pytest.mark.parametrize("change", [spec(agent="other"), spec(model="fal-ai/flux-pro*"), spec(operation="upscale")])
def test_a_rule_rescoped_away_from_the_spend_counts_none_of_it(gov, admin, engine, change) -> None:
    admin.create_agent("bot")
    admin.create_agent("other")
    rule = admin.create_rule(spec(name="budget", type="spend-limit", limit="0.0237", period="day"))
    pending = gov.authorize("bot", DEV, {"n": 1}).transaction
    admin.update_rule("budget", change)
    assert usage(engine, rule.id) == (0, 0, 0)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(holds).where(holds.c.rule_id == rule.id)).scalar_one() == 0
    gov.settle(pending.id, DEV.amount)  # a hold taken before the change does not leak into the new counting
    assert usage(engine, rule.id) == (0, 0, 0)


def test_a_new_budget_counts_the_spend_already_in_its_period(gov, admin, engine, clock) -> None:
    yesterday = gov.authorize("bot", DEV, {"n": 0}).transaction
    gov.settle(yesterday.id, DEV.amount)
    clock.advance(hours=24)
    done = gov.authorize("bot", DEV, {"n": 1}).transaction
    gov.settle(done.id, DEV.amount)
    gov.authorize("bot", DEV, {"n": 2})
    voided = gov.authorize("bot", DEV, {"n": 3}).transaction
    gov.void(voided.id)
    day = admin.create_rule(spec(name="day", type="spend-limit", limit="0.05", period="day"))
    rate = admin.create_rule(spec(name="rate", type="rate-limit", limit="4", period="day"))
    assert usage(engine, day.id) == (EST, EST, 3)
    assert usage(engine, rate.id) == (EST, EST, 3)  # voided requests were still authorized
    assert gov.authorize("bot", DEV, {"n": 4}).allowed
    denied = gov.authorize("bot", DEV, {"n": 5})
    assert [d.rule for d in denied.transaction.denials] == ["rate"]


def test_a_new_budget_counts_an_adjusted_transaction_never_below_zero(gov, admin, engine) -> None:
    credited = gov.authorize("bot", DEV, {"n": 1}).transaction
    gov.settle(credited.id, EST)
    gov.add_cost(credited.id, Decimal("-1000"), note="credit")
    surcharged = gov.authorize("bot", DEV, {"n": 2}).transaction
    gov.settle(surcharged.id, EST)
    gov.add_cost(surcharged.id, Decimal("0.002"))
    day = admin.create_rule(spec(name="day", type="spend-limit", limit="0.05", period="day"))
    assert usage(engine, day.id) == (EST + Decimal("0.002"), 0, 2)  # the credit counts 0, not -999.98815


def test_enabling_a_disabled_rule_counts_what_was_spent_meanwhile(gov, admin, engine) -> None:
    rule = admin.create_rule(spec(name="day", type="spend-limit", limit="1", period="day", enabled=False))
    assert rule.enabled is False
    gov.authorize("bot", DEV, {})
    assert usage(engine, rule.id) == (0, 0, 0)
    assert admin.update_rule("day", spec(enabled=True)).enabled is True
    assert usage(engine, rule.id) == (0, EST, 1)


def test_deleting_a_rule_removes_its_counters_but_keeps_its_alerts(gov, admin, engine) -> None:
    rule = admin.create_rule(spec(name="watch", type="spend-limit", limit="0.01", period="day", action="alert"))
    tx = gov.authorize("bot", DEV, {}).transaction
    admin.delete_rule("watch")
    assert usage(engine, rule.id) == (0, 0, 0)
    assert [(a.rule, a.transaction_id) for a in admin.alerts()] == [("watch", tx.id)]
    gov.settle(tx.id, DEV.amount)  # its hold on the deleted rule is gone: settlement still works
    assert gov.transaction(tx.id).status == TxStatus.completed


def test_a_rule_is_found_by_name_before_id(admin) -> None:
    first = admin.create_rule(spec(name="cap", type="request-cap", limit="1"))
    numbered = admin.create_rule(spec(name=str(first.id), type="request-cap", limit="2"))
    assert admin.rule(str(first.id)).id == numbered.id
    assert admin.rule(str(numbered.id)).id == numbered.id


def test_counts_report_agents_and_rules(admin) -> None:
    admin.create_agent("a")
    admin.create_rule(spec(name="cap", type="request-cap", limit="1"))
    admin.create_rule(spec(name="cap2", type="request-cap", limit="1"))
    assert admin.counts() == {"agents": 1, "rules": 2}


def test_alerts_are_listed_newest_first(gov, admin, clock) -> None:
    admin.create_rule(spec(name="watch", type="request-cap", limit="0.01", action="alert"))
    first = gov.authorize("alice", DEV, {}).transaction
    clock.advance(60)
    second = gov.authorize("bob", DEV, {}).transaction
    listed = admin.alerts()
    assert all(isinstance(a, Alert) for a in listed)
    assert [(a.agent, a.transaction_id, a.kind) for a in listed] == [
        ("bob", second.id, "rule"),
        ("alice", first.id, "rule"),
    ]
    assert listed[0].created_at == datetime(2026, 11, 25, 12, 1, tzinfo=UTC)
    assert listed[0].to_json()["created_at"] == "2026-11-25T12:01:00Z"
    assert admin.alerts(limit=1) == listed[:1]


def test_the_audit_log_can_be_filtered_and_limited(admin) -> None:
    admin.create_agent("bot")
    admin.create_rule(spec(name="cap", type="request-cap", limit="1"))
    assert [e.entity for e in admin.audit()] == ["rule", "agent"]
    assert [e.entity for e in admin.audit(entity="agent")] == ["agent"]
    assert len(admin.audit(limit=1)) == 1


def test_admin_uses_its_clock(engine, clock) -> None:
    clock.advance(3600)
    created = Admin(engine, clock=clock).create_agent("bot")
    assert created.created_at == datetime(2026, 11, 25, 13, tzinfo=UTC)
    assert created.to_json()["created_at"] == "2026-11-25T13:00:00Z"


# --- bad input: a typed error and nothing written ---------------------------------------------


@pytest.fixture
def admin_state(admin):  # type: ignore[no-untyped-def]
    admin.create_agent("bot")
    admin.create_rule(spec(name="cap", type="request-cap", limit="1"))
    admin.create_rule(spec(name="budget", type="spend-limit", limit="5", period="day", agent="bot"))


BAD_ADMIN_CALLS: dict[str, tuple[Callable[[Any], Any], type[Exception], str | None]] = {
    "create_agent: invalid name": (lambda a: a.create_agent("bot name"), InvalidRequest, "agent"),
    "create_agent: trailing newline": (lambda a: a.create_agent("bot\n"), InvalidRequest, "agent"),
    "create_agent: duplicate": (lambda a: a.create_agent("bot"), Conflict, "name"),
    "update_agent: unknown status": (lambda a: a.update_agent("bot", status="deleted"), InvalidRequest, "status"),
    "update_agent: unknown agent": (lambda a: a.update_agent("ghost", status="paused"), NotFound, None),
    "rotate_key: unknown agent": (lambda a: a.rotate_key("ghost"), NotFound, None),
    "create_rule: no limit": (
        lambda a: a.create_rule(spec(name="r", type="spend-limit", period="day")),
        InvalidRequest,
        "limit",
    ),
    "create_rule: unknown type": (
        lambda a: a.create_rule(spec(name="r", type="budget", limit="1")),
        InvalidRequest,
        "type",
    ),
    "create_rule: unknown agent": (
        lambda a: a.create_rule(spec(name="r", type="request-cap", limit="1", agent="ghost")),
        NotFound,
        None,
    ),
    "create_rule: duplicate name": (
        lambda a: a.create_rule(spec(name="cap", type="request-cap", limit="2")),
        Conflict,
        "name",
    ),
    "update_rule: zero limit": (lambda a: a.update_rule("budget", spec(limit="0")), InvalidRequest, "limit"),
    "update_rule: type change": (lambda a: a.update_rule("cap", spec(type="spend-limit")), InvalidRequest, "type"),
    "update_rule: rescoped to an unknown agent": (
        lambda a: a.update_rule("budget", spec(agent="ghost")),
        NotFound,
        None,
    ),
    "update_rule: renamed onto another": (lambda a: a.update_rule("budget", spec(name="cap")), Conflict, "name"),
    "update_rule: unknown rule": (lambda a: a.update_rule("ghost", spec(limit="1")), NotFound, None),
    "delete_rule: unknown rule": (lambda a: a.delete_rule("ghost"), NotFound, None),
}


@pytest.mark.parametrize("case", list(BAD_ADMIN_CALLS))
def test_an_admin_call_with_bad_input_raises_a_typed_error_and_writes_nothing(admin, engine, admin_state, case) -> None:
    call, error_type, field = BAD_ADMIN_CALLS[case]
    counts, before = row_counts(engine), snapshot(engine)
    with pytest.raises(error_type) as error:
        call(admin)
    assert type(error.value) is error_type
    if field is not None:
        assert error.value.field == field
    assert error.value.code == {NotFound: "not_found"}.get(error_type, "invalid_request")
    assert row_counts(engine) == counts
    assert snapshot(engine) == before


def test_a_dashboard_logout_is_recorded_once_and_expired_ones_are_purged(ledger, clock) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from sqlalchemy import func, select

    from ledger.store.models import dashboard_logouts

    admin = ledger.admin
    now = clock()
    assert not admin.dashboard_session_ended("s1")
    admin.end_dashboard_session("s1", now + timedelta(seconds=10))
    admin.end_dashboard_session("s1", now + timedelta(seconds=10))  # twice: no error, one record
    assert admin.dashboard_session_ended("s1") and not admin.dashboard_session_ended("s2")
    clock.advance(11)
    admin.end_dashboard_session("s2", clock() + timedelta(hours=8))
    with ledger.engine.connect() as conn:
        kept = conn.execute(select(dashboard_logouts.c.session_id)).scalars().all()
        assert kept == ["s2"]  # s1's session would have expired: its record went
        assert conn.execute(select(func.count()).select_from(dashboard_logouts)).scalar() == 1


@pytest.mark.parametrize("bad", ["", "x" * 65, "sess\u00efon", None])
def test_a_malformed_dashboard_session_id_is_invalid_and_writes_nothing(ledger, clock, bad) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from ledger.errors import InvalidRequest
    from ledger.store.models import dashboard_logouts

    with pytest.raises(InvalidRequest) as err:
        ledger.admin.end_dashboard_session(bad, clock())
    assert err.value.details.get("field") == "session_id"
    with pytest.raises(InvalidRequest):
        ledger.admin.dashboard_session_ended(bad)
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(dashboard_logouts)).scalar() == 0


@pytest.mark.parametrize("bad", [None, "2026-11-25", "naive"])
def test_a_dashboard_logout_needs_an_aware_expiry_and_writes_nothing_without(ledger, clock, bad) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from ledger.errors import InvalidRequest
    from ledger.store.models import dashboard_logouts

    expires = clock().replace(tzinfo=None) if bad == "naive" else bad
    with pytest.raises(InvalidRequest) as err:
        ledger.admin.end_dashboard_session("s1", expires)
    assert err.value.details.get("field") == "expires_at"
    assert not ledger.admin.dashboard_session_ended("s1")
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(dashboard_logouts)).scalar() == 0
