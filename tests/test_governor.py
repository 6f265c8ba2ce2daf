"""The governor's transaction lifecycle: holds, settlement, release, expiry, unknown outcomes,
idempotent retries, adjustments and facts — and what each does to the budget counters.

Every test runs on SQLite and on PostgreSQL; the clock is moved by hand (hold TTL 900 s).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text

from ledger.errors import Conflict, InvalidRequest, NotFound
from ledger.governor import Governor
from ledger.models import cost_lines, facts, holds, transactions
from ledger.rules import RuleSpec
from pricing import quote
from support import rule_usage as usage

DEV = quote("fal-ai/flux/dev", {})  # 0.01185
EST = Decimal("0.01185")
BODY = {"prompt": "a red fox"}


@pytest.fixture
def budget(admin):  # type: ignore[no-untyped-def]
    """A daily spend-limit of exactly two flux/dev estimates for every agent."""
    return admin.create_rule(RuleSpec(name="budget", type="spend-limit", limit="0.0237", period="day",
                                      given={"name", "type", "limit", "period"}))


def count(engine, table) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def hold(gov, agent: str = "bot", body: dict | None = None, **kw) -> dict:  # type: ignore[no-untyped-def]
    auth = gov.authorize(agent, DEV, BODY if body is None else body, **kw)
    assert auth.allowed, auth.transaction["denial"]
    return auth.transaction


def fact_values(gov, tx_id: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {f["key"]: f["value"] for f in gov.transaction(tx_id, detail=True)["facts"]}


# --- authorize --------------------------------------------------------------------------------

def test_authorize_records_a_pending_transaction_and_holds_its_estimate(gov, budget, engine, clock) -> None:
    tx = hold(gov)
    assert tx["status"] == "pending"
    assert tx["agent"] == "bot"
    assert (tx["endpoint"], tx["operation"]) == ("fal-ai/flux/dev", "generate")
    assert tx["estimated_cost"] == "0.01185" and tx["estimated_price"] == "$0.012"
    assert tx["actual_cost"] is None and tx["completed_at"] is None
    assert tx["created_at"] == "2026-11-25T12:00:00Z"
    assert usage(engine, budget["id"]) == (0, EST, 1)
    detail = gov.transaction(tx["id"], detail=True)
    assert detail["cost_lines"] == [{"kind": "estimate", "amount": "0.01185", "note": None,
                                     "created_at": "2026-11-25T12:00:00Z"}]
    assert detail["request"] == BODY


def test_amounts_are_stored_as_integer_nano_usd(gov, engine) -> None:
    tx = hold(gov)
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT estimated_cost FROM transactions WHERE id = :id"), {"id": tx["id"]}).scalar()
    assert raw == 11_850_000 and isinstance(raw, int)


def test_secrets_in_a_request_are_never_stored(gov) -> None:
    tx = hold(gov, body={"prompt": "x", "api_key": "sk-123", "Authorization": "Key abc", "fal_token": "t"})
    assert gov.transaction(tx["id"], detail=True)["request"] == {"prompt": "x"}


def test_a_denied_request_is_recorded_as_denied_and_holds_nothing(gov, budget, engine) -> None:
    hold(gov)
    hold(gov)
    denied = gov.authorize("bot", DEV, BODY)
    assert not denied.allowed
    assert denied.transaction["status"] == "denied"
    assert denied.transaction["denial"]["rule"] == "budget"
    assert usage(engine, budget["id"]) == (0, EST * 2, 2)
    assert count(engine, holds) == 2
    assert gov.transaction(denied.transaction["id"], detail=True)["cost_lines"] == []


# --- settle -----------------------------------------------------------------------------------

def test_settling_below_the_estimate_counts_the_actual_and_frees_the_rest(gov, budget, engine, clock) -> None:
    tx = hold(gov)
    clock.advance(5)
    done = gov.settle(tx["id"], Decimal("0.01"))
    assert done["status"] == "completed"
    assert done["actual_cost"] == "0.01"
    assert done["completed_at"] == "2026-11-25T12:00:05Z"
    assert usage(engine, budget["id"]) == (Decimal("0.01"), 0, 1)
    assert "variance" not in fact_values(gov, tx["id"])
    assert [(c["kind"], c["amount"]) for c in gov.transaction(tx["id"], detail=True)["cost_lines"]] == [
        ("estimate", "0.01185"), ("actual", "0.01")]
    # 0.01 + 0.01185 ≤ 0.0237 fits; another estimate would not.
    hold(gov)
    assert not gov.authorize("bot", DEV, BODY).allowed


def test_settling_above_the_estimate_records_the_variance_and_counts_the_actual(gov, budget, engine) -> None:
    tx = hold(gov)
    gov.settle(tx["id"], Decimal("0.02"))
    assert fact_values(gov, tx["id"])["variance"] == "0.00815"
    assert usage(engine, budget["id"]) == (Decimal("0.02"), 0, 1)
    assert not gov.authorize("bot", DEV, BODY).allowed  # 0.02 + 0.01185 > 0.0237


def test_settling_at_zero_is_allowed_but_a_negative_actual_is_refused(gov, budget, engine) -> None:
    tx = hold(gov)
    with pytest.raises(InvalidRequest):
        gov.settle(tx["id"], Decimal("-0.01"))
    assert gov.transaction(tx["id"])["status"] == "pending"
    gov.settle(tx["id"], Decimal(0))
    assert usage(engine, budget["id"]) == (0, 0, 1)


def test_settle_records_facts_and_upstream_details(gov) -> None:
    tx = hold(gov)
    done = gov.settle(tx["id"], EST, facts_={"output_sizes": "1024x768", "latency_ms": 1234},
                      upstream_request_id="req-1", upstream_status=200, response={"images": []})
    assert (done["upstream_request_id"], done["upstream_status"]) == ("req-1", 200)
    assert fact_values(gov, tx["id"]) == {"output_sizes": "1024x768", "latency_ms": "1234"}
    assert gov.transaction(tx["id"], detail=True)["result"] == {"images": []}


@pytest.mark.parametrize("finish", ["settle", "void", "fail"])
def test_a_resolved_transaction_cannot_be_settled_again(gov, budget, engine, finish) -> None:
    tx = hold(gov)
    {"settle": lambda: gov.settle(tx["id"], EST), "void": lambda: gov.void(tx["id"]),
     "fail": lambda: gov.fail(tx["id"], "upstream 500")}[finish]()
    before = usage(engine, budget["id"])
    with pytest.raises(Conflict) as error:
        gov.settle(tx["id"], Decimal("0.5"))
    assert error.value.code == "invalid_request"
    assert "cannot complete" in error.value.message
    assert usage(engine, budget["id"]) == before
    assert count(engine, cost_lines) == (2 if finish == "settle" else 1)


def test_settling_an_unknown_transaction_id_is_not_found(gov) -> None:
    with pytest.raises(NotFound) as error:
        gov.settle(404, EST)
    assert error.value.code == "not_found"


def test_a_denied_transaction_cannot_be_settled_or_voided(gov, budget, engine) -> None:
    hold(gov)
    hold(gov)
    denied = gov.authorize("bot", DEV, BODY).transaction
    with pytest.raises(Conflict):
        gov.settle(denied["id"], EST)
    with pytest.raises(Conflict):
        gov.void(denied["id"])
    assert usage(engine, budget["id"]) == (0, EST * 2, 2)


def test_spend_settled_after_midnight_counts_in_the_day_it_was_authorized(gov, budget, engine, clock) -> None:
    clock.set(datetime(2026, 11, 25, 23, 59, tzinfo=UTC))
    first = hold(gov)
    second = hold(gov)
    clock.set(datetime(2026, 11, 26, 0, 1, tzinfo=UTC))
    gov.settle(first["id"], EST)
    gov.settle(second["id"], EST)
    hold(gov)
    hold(gov)  # the new day's budget is untouched
    assert not gov.authorize("bot", DEV, BODY).allowed


# --- release: void, fail ----------------------------------------------------------------------

def test_voiding_a_pending_transaction_releases_its_hold(gov, budget, engine) -> None:
    tx = hold(gov)
    voided = gov.void(tx["id"], "never sent")
    assert voided["status"] == "voided" and voided["outcome"] == "never sent"
    assert voided["actual_cost"] is None
    assert usage(engine, budget["id"]) == (0, 0, 1)


def test_a_failed_request_releases_its_hold_and_spends_nothing(gov, budget, engine) -> None:
    tx = hold(gov)
    failed = gov.fail(tx["id"], "upstream answered 422", upstream_status=422, facts_={"upstream_message": "bad"})
    assert failed["status"] == "failed"
    assert (failed["upstream_status"], failed["outcome"]) == (422, "upstream answered 422")
    assert usage(engine, budget["id"]) == (0, 0, 1)
    assert fact_values(gov, tx["id"]) == {"upstream_message": "bad"}
    hold(gov)
    hold(gov)


def test_only_a_pending_transaction_can_fail(gov) -> None:
    tx = hold(gov)
    gov.mark_unknown(tx["id"], "timeout")
    with pytest.raises(Conflict):
        gov.fail(tx["id"], "late")


def test_voiding_twice_is_refused_and_changes_nothing(gov, budget, engine) -> None:
    tx = hold(gov)
    gov.void(tx["id"])
    with pytest.raises(Conflict) as error:
        gov.void(tx["id"])
    assert "it is voided" in error.value.message
    assert usage(engine, budget["id"]) == (0, 0, 1)


# --- unknown outcomes -------------------------------------------------------------------------

def test_an_unknown_outcome_keeps_the_estimate_counted_as_spent(gov, budget, engine, clock) -> None:
    tx = hold(gov)
    unknown = gov.mark_unknown(tx["id"], "timeout after sending", facts_={"upstream_timeout_s": 30})
    assert unknown["status"] == "unknown"
    assert unknown["completed_at"] is None
    assert usage(engine, budget["id"]) == (EST, 0, 1)
    clock.advance(3600)
    assert gov.expire() == []  # not a hold: expiry leaves it counted
    assert usage(engine, budget["id"]) == (EST, 0, 1)
    hold(gov)
    assert not gov.authorize("bot", DEV, BODY).allowed


def test_settling_an_unknown_outcome_replaces_the_estimate_with_the_actual(gov, budget, engine) -> None:
    tx = hold(gov)
    gov.mark_unknown(tx["id"], "timeout")
    done = gov.settle(tx["id"], Decimal("0.005"))
    assert done["status"] == "completed" and done["actual_cost"] == "0.005"
    assert usage(engine, budget["id"]) == (Decimal("0.005"), 0, 1)


def test_settling_an_unknown_outcome_above_its_estimate_counts_the_excess(gov, budget, engine) -> None:
    tx = hold(gov)
    gov.mark_unknown(tx["id"], "timeout")
    gov.settle(tx["id"], Decimal("0.03"))
    assert usage(engine, budget["id"]) == (Decimal("0.03"), 0, 1)
    assert fact_values(gov, tx["id"])["variance"] == "0.01815"


def test_voiding_an_unknown_outcome_removes_its_estimate_from_spend(gov, budget, engine) -> None:
    tx = hold(gov)
    gov.mark_unknown(tx["id"], "timeout")
    voided = gov.void(tx["id"], "FAL confirmed it was never generated")
    assert voided["status"] == "voided"
    assert usage(engine, budget["id"]) == (0, 0, 1)


# --- expiry -----------------------------------------------------------------------------------

def test_a_hold_expires_only_once_older_than_the_ttl(gov, budget, engine, clock) -> None:
    tx = hold(gov)
    clock.advance(900)
    assert gov.expire() == []  # exactly the TTL old: still held
    clock.advance(1)
    assert gov.expire() == [tx["id"]]
    expired = gov.transaction(tx["id"])
    assert expired["status"] == "expired"
    assert expired["completed_at"] == "2026-11-25T12:15:01Z"
    assert "expired" in expired["outcome"]
    assert usage(engine, budget["id"]) == (0, 0, 1)
    assert gov.expire() == []  # each hold is released once


def test_expire_older_than_releases_younger_holds_too(gov, budget, engine, clock) -> None:
    old = hold(gov)
    clock.advance(120)
    young = hold(gov)
    clock.advance(30)
    assert gov.expire(older_than=60) == [old["id"]]
    assert gov.expire(older_than=0) == [young["id"]]
    assert usage(engine, budget["id"]) == (0, 0, 2)


def test_expire_leaves_resolved_transactions_alone(gov, clock) -> None:
    done = hold(gov)
    gov.settle(done["id"], EST)
    voided = hold(gov)
    gov.void(voided["id"])
    pending = hold(gov)
    clock.advance(3600)
    assert gov.expire() == [pending["id"]]
    assert [gov.transaction(t["id"])["status"] for t in (done, voided)] == ["completed", "voided"]


def test_an_expired_transaction_can_only_be_settled_on_purpose(gov, budget, engine, clock) -> None:
    tx = hold(gov)
    clock.advance(901)
    gov.expire()
    with pytest.raises(Conflict):
        gov.settle(tx["id"], EST)
    with pytest.raises(Conflict):
        gov.void(tx["id"])
    late = gov.settle(tx["id"], Decimal("0.011"), allow_expired=True)
    assert late["status"] == "completed"
    assert usage(engine, budget["id"]) == (Decimal("0.011"), 0, 1)


def test_stale_holds_are_expired_by_authorization_itself(gov, budget, engine, clock) -> None:
    first, second = hold(gov), hold(gov)
    clock.advance(600)
    assert not gov.authorize("bot", DEV, BODY).allowed  # the holds are young: a real denial
    clock.advance(301)  # first and second are now 901 s old
    third = gov.authorize("bot", DEV, BODY)
    assert third.allowed
    assert [gov.transaction(t["id"])["status"] for t in (first, second)] == ["expired", "expired"]
    assert usage(engine, budget["id"]) == (0, EST, 3)


def test_lazy_expiry_does_not_turn_settled_spend_into_room(gov, budget, clock) -> None:
    for _ in range(2):
        gov.settle(hold(gov)["id"], EST)
    clock.advance(3600)
    assert not gov.authorize("bot", DEV, BODY).allowed


def test_a_check_agrees_with_authorize_when_only_stale_holds_stand_in_the_way(gov, budget, clock) -> None:
    hold(gov)
    hold(gov)
    clock.advance(901)
    assert gov.check("bot", DEV).allowed
    assert gov.authorize("bot", DEV, BODY).allowed


def test_a_governor_with_a_short_ttl_expires_sooner(engine, clock, budget) -> None:
    quick = Governor(engine, clock=clock, hold_ttl=30, auto_create=True)
    tx = quick.authorize("bot", DEV, BODY).transaction
    clock.advance(31)
    assert quick.expire() == [tx["id"]]


def test_the_hold_ttl_comes_from_the_environment(engine, monkeypatch) -> None:
    monkeypatch.setenv("PIXELGOV_HOLD_TTL", "60")
    assert Governor(engine).hold_ttl == 60
    for bad in ("soon", "0", "-5"):
        monkeypatch.setenv("PIXELGOV_HOLD_TTL", bad)
        with pytest.raises(InvalidRequest):
            Governor(engine)


# --- idempotency ------------------------------------------------------------------------------

def test_a_retry_with_the_same_key_returns_the_same_transaction_and_holds_nothing_new(gov, budget, engine) -> None:
    first = gov.authorize("bot", DEV, BODY, idempotency_key="job-42")
    retry = gov.authorize("bot", DEV, BODY, idempotency_key="job-42")
    assert retry.replayed and not first.replayed
    assert retry.transaction["id"] == first.transaction["id"]
    assert retry.transaction["idempotency_key"] == "job-42"
    assert count(engine, transactions) == 1
    assert usage(engine, budget["id"]) == (0, EST, 1)


def test_a_retry_after_settlement_returns_the_completed_transaction(gov, budget, engine) -> None:
    tx = gov.authorize("bot", DEV, BODY, idempotency_key="k").transaction
    gov.settle(tx["id"], EST)
    retry = gov.authorize("bot", DEV, BODY, idempotency_key="k")
    assert retry.transaction["status"] == "completed"
    assert usage(engine, budget["id"]) == (EST, 0, 1)


def test_a_retry_of_a_denied_request_returns_the_denial(gov, budget, engine) -> None:
    hold(gov)
    hold(gov)
    denied = gov.authorize("bot", DEV, BODY, idempotency_key="k")
    assert not denied.allowed
    retry = gov.authorize("bot", DEV, BODY, idempotency_key="k")
    assert retry.transaction["id"] == denied.transaction["id"] and not retry.allowed


def test_the_same_key_with_a_different_request_is_refused(gov, engine) -> None:
    first = gov.authorize("bot", DEV, BODY, idempotency_key="k")
    other = quote("fal-ai/flux/dev", {"image_size": "square_hd"})
    with pytest.raises(Conflict) as error:
        gov.authorize("bot", other, {"image_size": "square_hd"}, idempotency_key="k")
    assert error.value.code == "invalid_request"
    assert error.value.field == "idempotency_key"
    assert str(first.transaction["id"]) in error.value.message
    with pytest.raises(Conflict):
        gov.authorize("bot", DEV, {"prompt": "another fox"}, idempotency_key="k")
    assert count(engine, transactions) == 1


def test_an_idempotency_key_longer_than_200_characters_is_invalid(gov, engine) -> None:
    with pytest.raises(InvalidRequest) as error:
        gov.authorize("bot", DEV, BODY, idempotency_key="k" * 201)
    assert error.value.field == "idempotency_key"
    assert count(engine, transactions) == 0


def test_idempotency_keys_are_per_agent(gov, engine) -> None:
    a = gov.authorize("alice", DEV, BODY, idempotency_key="k")
    b = gov.authorize("bob", DEV, BODY, idempotency_key="k")
    assert a.transaction["id"] != b.transaction["id"]
    assert not b.replayed
    assert count(engine, transactions) == 2


def test_requests_without_a_key_are_never_merged(gov, engine) -> None:
    hold(gov)
    hold(gov)
    assert count(engine, transactions) == 2


# --- adjustments and facts --------------------------------------------------------------------

def test_an_adjustment_adds_a_cost_line_and_counts_in_the_budget(gov, budget, engine) -> None:
    tx = hold(gov)
    gov.settle(tx["id"], EST)
    gov.add_cost(tx["id"], Decimal("0.002"), note="late surcharge")
    gov.add_cost(tx["id"], Decimal("-0.005"), note="FAL credit")
    detail = gov.transaction(tx["id"], detail=True)
    assert [(c["kind"], c["amount"], c["note"]) for c in detail["cost_lines"]] == [
        ("estimate", "0.01185", None), ("actual", "0.01185", None),
        ("adjustment", "0.002", "late surcharge"), ("adjustment", "-0.005", "FAL credit")]
    assert detail["actual_cost"] == "0.01185"  # a ledger row is never rewritten: corrections are new lines
    assert usage(engine, budget["id"]) == (Decimal("0.00885"), 0, 1)


@pytest.mark.parametrize("state", ["pending", "voided", "unknown"])
def test_only_a_completed_transaction_can_be_adjusted(gov, engine, state) -> None:
    tx = hold(gov)
    if state == "voided":
        gov.void(tx["id"])
    elif state == "unknown":
        gov.mark_unknown(tx["id"], "timeout")
    with pytest.raises(Conflict):
        gov.add_cost(tx["id"], Decimal("0.01"))
    assert count(engine, cost_lines) == 1


def test_only_adjustment_cost_lines_can_be_added(gov) -> None:
    tx = hold(gov)
    gov.settle(tx["id"], EST)
    with pytest.raises(InvalidRequest) as error:
        gov.add_cost(tx["id"], Decimal("0.01"), kind="actual")
    assert error.value.field == "kind"


def test_facts_are_appended_to_any_transaction(gov, engine) -> None:
    tx = hold(gov)
    gov.add_fact(tx["id"], "reviewer", "alice")
    gov.add_fact(tx["id"], "reviewer", "bob")
    gov.add_fact(tx["id"], "x-fal-billable-units", {"units": 0.79})
    detail = gov.transaction(tx["id"], detail=True)
    assert [(f["key"], f["value"]) for f in detail["facts"]] == [
        ("reviewer", "alice"), ("reviewer", "bob"), ("x-fal-billable-units", '{"units": 0.79}')]
    assert detail["status"] == "pending"


def test_a_fact_needs_a_known_transaction_and_a_key(gov, engine) -> None:
    tx = hold(gov)
    with pytest.raises(NotFound):
        gov.add_fact(999, "k", "v")
    with pytest.raises(InvalidRequest):
        gov.add_fact(tx["id"], "", "v")
    with pytest.raises(InvalidRequest):
        gov.add_fact(tx["id"], "k" * 101, "v")
    assert count(engine, facts) == 0


# --- reading ----------------------------------------------------------------------------------

def test_transactions_are_listed_newest_first_and_filtered(gov, clock) -> None:
    a = hold(gov, "alice")
    clock.advance(60)
    b = hold(gov, "bob")
    gov.void(b["id"])
    clock.advance(60)
    c = hold(gov, "alice")
    assert [t["id"] for t in gov.transactions()] == [c["id"], b["id"], a["id"]]
    assert [t["id"] for t in gov.transactions(agent="alice")] == [c["id"], a["id"]]
    assert [t["id"] for t in gov.transactions(status="voided")] == [b["id"]]
    since = datetime(2026, 11, 25, 12, 1, tzinfo=UTC)
    assert [t["id"] for t in gov.transactions(since=since)] == [c["id"], b["id"]]
    assert [t["id"] for t in gov.transactions(until=since)] == [a["id"]]
    assert [t["id"] for t in gov.transactions(limit=1)] == [c["id"]]


def test_listing_by_an_unknown_status_or_agent_is_an_error(gov) -> None:
    with pytest.raises(InvalidRequest):
        gov.transactions(status="lost")
    with pytest.raises(NotFound):
        gov.transactions(agent="nobody")


def test_an_unknown_transaction_is_not_found(gov) -> None:
    with pytest.raises(NotFound):
        gov.transaction(12345)
    with pytest.raises(NotFound):
        gov.void(12345)
    with pytest.raises(NotFound):
        gov.fail(12345, "x")
    with pytest.raises(NotFound):
        gov.mark_unknown(12345, "x")
    with pytest.raises(NotFound):
        gov.add_cost(12345, EST)


def test_holds_record_the_counters_each_transaction_was_counted_in(gov, admin, budget, engine) -> None:
    admin.create_rule(RuleSpec(name="cap", type="request-cap", limit="1", given={"name", "type", "limit"}))
    rate = admin.create_rule(RuleSpec(name="rate", type="rate-limit", limit="10", window="1h",
                                      given={"name", "type", "limit", "window"}))
    tx = hold(gov)
    with engine.connect() as conn:
        rows = conn.execute(select(holds.c.rule_id, holds.c.bucket).where(holds.c.transaction_id == tx["id"])
                            .order_by(holds.c.rule_id)).all()
    day = int(datetime(2026, 11, 25, tzinfo=UTC).timestamp())
    minute = int(datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp())
    assert [tuple(r) for r in rows] == [(budget["id"], day), (rate["id"], minute)]  # not the uncounted cap


def test_counters_can_be_recounted_from_the_transactions(gov, budget, engine, clock) -> None:
    """The counters are a cache: after a mix of outcomes they equal what the rows say."""
    settled = hold(gov)
    gov.settle(settled["id"], Decimal("0.01"))
    gov.void(hold(gov)["id"])
    unknown = hold(gov)
    gov.mark_unknown(unknown["id"], "timeout")
    gov.authorize("bot", DEV, BODY)  # denied: 0.01 + 0.01185 + 0.01185 > 0.0237
    clock.advance(timedelta(minutes=20).total_seconds())
    assert usage(engine, budget["id"]) == (Decimal("0.01") + EST, 0, 3)
