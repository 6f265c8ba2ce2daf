"""The governor's transaction lifecycle: holds, settlement, release, expiry, unknown outcomes,
idempotent retries, adjustments and facts — and what each does to the budget counters.

Every test runs on SQLite and on PostgreSQL; the clock is moved by hand (hold TTL 900 s).
The governor returns typed records (`ledger.records`): money is `Decimal`, times are aware
UTC datetimes; `.to_json()` is asserted where a test is about the wire shape.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

import pytest
from sqlalchemy import select, text
from support import count, row_counts, snapshot, spec
from support import rule_usage as usage

from ledger import Ledger, Settings
from ledger.errors import Conflict, InvalidRequest, NotFound
from ledger.policy.governor import Governor
from ledger.records import CostLine, SpendingRule, Transaction, TxStatus
from ledger.store.models import agents, cost_lines, facts, holds, rule_counters, transactions
from ledger.validation import validate_agent_name
from pricing import quote

DEV = quote("fal-ai/flux/dev", {})  # 0.01185
SDXL = quote("fal-ai/fast-sdxl", {})
EST = Decimal("0.01185")
BODY = {"prompt": "a red fox"}
NOON = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def budget(admin) -> SpendingRule:  # type: ignore[no-untyped-def]
    """A daily spend-limit of exactly two flux/dev estimates for every agent."""
    return admin.create_rule(spec(name="budget", type="spend-limit", limit="0.0237", period="day"))


def hold(gov, agent: str = "bot", body: dict | None = None, q=DEV, **kw) -> Transaction:  # type: ignore[no-untyped-def]
    auth = gov.authorize(agent, q, BODY if body is None else body, **kw)
    assert auth.allowed, auth.transaction.denial
    assert auth.transaction.status == TxStatus.pending
    return auth.transaction


def fact_values(gov, tx_id: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    detail = gov.transaction(tx_id, detail=True).detail
    return {f.key: f.value for f in detail.facts}


def lines(gov, tx_id: int) -> list[tuple[str, Decimal]]:  # type: ignore[no-untyped-def]
    return [(c.kind, c.amount) for c in gov.transaction(tx_id, detail=True).detail.cost_lines]


# --- authorize --------------------------------------------------------------------------------


def test_authorize_records_a_pending_transaction_and_holds_its_estimate(gov, budget, engine, clock) -> None:
    tx = hold(gov)
    assert tx.status == TxStatus.pending and tx.status == "pending"
    assert tx.agent == "bot"
    assert (tx.endpoint, tx.operation) == ("fal-ai/flux/dev", "generate")
    assert tx.estimated_cost == EST and isinstance(tx.estimated_cost, Decimal)
    assert tx.actual_cost is None and tx.completed_at is None
    assert tx.created_at == NOON
    assert usage(engine, budget.id) == (0, EST, 1)
    detail = gov.transaction(tx.id, detail=True)
    assert detail.detail.cost_lines == (CostLine("estimate", EST, None, NOON),)
    assert detail.detail.request == BODY
    # The record authorize returns is the one the ledger reads back.
    assert gov.transaction(tx.id) == tx


def test_a_transaction_has_the_promised_wire_shape(gov) -> None:
    tx = hold(gov)
    doc = gov.transaction(tx.id, detail=True).to_json()
    assert doc == {
        "id": tx.id,
        "agent": "bot",
        "endpoint": "fal-ai/flux/dev",
        "model": "fal-ai/flux/dev",
        "operation": "generate",
        "status": "pending",
        "estimated_cost": "0.01185",
        "estimated_price": "$0.012",
        "actual_cost": None,
        "price_book": DEV.price_book,
        "created_at": "2026-11-25T12:00:00Z",
        "completed_at": None,
        "idempotency_key": None,
        "denial": None,
        "upstream_request_id": None,
        "upstream_status": None,
        "outcome": None,
        "forwarder": None,
        "request": BODY,
        "cost_lines": [{"kind": "estimate", "amount": "0.01185", "note": None, "created_at": "2026-11-25T12:00:00Z"}],
        "facts": [],
        "result": None,
    }
    assert "request" not in tx.to_json()  # only a detailed record carries the request, lines, facts, result


def test_amounts_are_stored_as_integer_nano_usd(gov, engine) -> None:
    tx = hold(gov)
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT estimated_cost FROM transactions WHERE id = :id"), {"id": tx.id}).scalar()
    assert raw == 11_850_000 and isinstance(raw, int)


def test_secrets_in_a_request_are_never_stored(gov) -> None:
    tx = hold(gov, body={"prompt": "x", "api_key": "sk-123", "Authorization": "Key abc", "fal_token": "t"})
    assert gov.transaction(tx.id, detail=True).detail.request == {"prompt": "x"}


def test_a_denied_request_is_recorded_as_denied_and_holds_nothing(gov, budget, engine) -> None:
    hold(gov)
    hold(gov)
    denied = gov.authorize("bot", DEV, BODY)
    assert not denied.allowed and not denied.decision.allowed
    assert denied.transaction.status == TxStatus.denied
    assert denied.transaction.denial["rule"] == "budget"
    assert [(d.rule, d.type) for d in denied.transaction.denials] == [("budget", "spend-limit")]
    assert denied.transaction.denials == denied.decision.denials
    assert usage(engine, budget.id) == (0, EST * 2, 2)
    assert count(engine, holds) == 2
    assert gov.transaction(denied.transaction.id, detail=True).detail.cost_lines == ()


# --- settle -----------------------------------------------------------------------------------


def test_settling_below_the_estimate_counts_the_actual_and_frees_the_rest(gov, budget, engine, clock) -> None:
    tx = hold(gov)
    clock.advance(5)
    done = gov.settle(tx.id, Decimal("0.01"))
    assert done.status == TxStatus.completed
    assert done.actual_cost == Decimal("0.01")
    assert done.completed_at == NOON + timedelta(seconds=5)
    assert done.to_json()["completed_at"] == "2026-11-25T12:00:05Z"
    assert usage(engine, budget.id) == (Decimal("0.01"), 0, 1)
    assert "variance" not in fact_values(gov, tx.id)
    assert lines(gov, tx.id) == [("estimate", EST), ("actual", Decimal("0.01"))]
    # 0.01 + 0.01185 ≤ 0.0237 fits; another estimate would not.
    hold(gov)
    assert not gov.authorize("bot", DEV, BODY).allowed


def test_settling_above_the_estimate_records_the_variance_and_counts_the_actual(gov, budget, engine) -> None:
    tx = hold(gov)
    gov.settle(tx.id, Decimal("0.02"))
    assert fact_values(gov, tx.id)["variance"] == "0.00815"
    assert usage(engine, budget.id) == (Decimal("0.02"), 0, 1)
    assert not gov.authorize("bot", DEV, BODY).allowed  # 0.02 + 0.01185 > 0.0237


def test_settling_at_zero_is_allowed_but_a_negative_actual_is_refused(gov, budget, engine) -> None:
    tx = hold(gov)
    with pytest.raises(InvalidRequest) as error:
        gov.settle(tx.id, Decimal("-0.01"))
    assert error.value.field == "actual"
    assert gov.transaction(tx.id).status == TxStatus.pending
    gov.settle(tx.id, Decimal(0))
    assert usage(engine, budget.id) == (0, 0, 1)


def test_settle_records_facts_and_upstream_details(gov) -> None:
    tx = hold(gov)
    done = gov.settle(
        tx.id,
        EST,
        facts={"output_sizes": "1024x768", "latency_ms": 1234},
        upstream_request_id="req-1",
        upstream_status=200,
        response={"images": []},
    )
    assert (done.upstream_request_id, done.upstream_status) == ("req-1", 200)
    assert fact_values(gov, tx.id) == {"output_sizes": "1024x768", "latency_ms": "1234"}
    detail = gov.transaction(tx.id, detail=True).detail
    assert detail.result == {"images": []}
    assert detail.fact("latency_ms") == "1234" and detail.fact("missing") is None


@pytest.mark.parametrize("finish", ["settle", "void", "fail"])
def test_a_resolved_transaction_cannot_be_settled_again(gov, budget, engine, finish) -> None:
    tx = hold(gov)
    {
        "settle": lambda: gov.settle(tx.id, EST),
        "void": lambda: gov.void(tx.id),
        "fail": lambda: gov.fail(tx.id, "upstream 500"),
    }[finish]()
    before = snapshot(engine)
    with pytest.raises(Conflict) as error:
        gov.settle(tx.id, Decimal("0.5"))
    assert error.value.code == "invalid_request"
    assert "cannot complete" in error.value.message
    assert snapshot(engine) == before
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
        gov.settle(denied.id, EST)
    with pytest.raises(Conflict):
        gov.void(denied.id)
    assert usage(engine, budget.id) == (0, EST * 2, 2)


def test_spend_settled_after_midnight_counts_in_the_day_it_was_authorized(gov, budget, engine, clock) -> None:
    clock.set(datetime(2026, 11, 25, 23, 59, tzinfo=UTC))
    first = hold(gov)
    second = hold(gov)
    clock.set(datetime(2026, 11, 26, 0, 1, tzinfo=UTC))
    gov.settle(first.id, EST)
    gov.settle(second.id, EST)
    hold(gov)
    hold(gov)  # the new day's budget is untouched
    assert not gov.authorize("bot", DEV, BODY).allowed


# --- complete: choosing the actual cost -------------------------------------------------------


def test_complete_with_a_given_actual_settles_at_that_amount(gov, budget, engine) -> None:
    tx = hold(gov)
    done = gov.complete(tx.id, actual="0.011")
    assert done.status == TxStatus.completed and done.actual_cost == Decimal("0.011")
    assert fact_values(gov, tx.id) == {"actual_source": "given"}
    assert usage(engine, budget.id) == (Decimal("0.011"), 0, 1)


def test_complete_with_a_decimal_actual_settles_at_that_amount(gov) -> None:
    tx = hold(gov)
    assert gov.complete(tx.id, actual=Decimal("0.0123")).actual_cost == Decimal("0.0123")
    assert fact_values(gov, tx.id)["actual_source"] == "given"


def test_complete_with_a_response_prices_the_returned_image_sizes(gov, budget, engine) -> None:
    tx = hold(gov)  # estimated for the default 1024x768 (0.79 MP at 0.015 per MP)
    response = {"images": [{"url": "https://x/1.png", "width": 1024, "height": 1024}]}
    done = gov.complete(tx.id, response=response)
    square = Decimal("0.01575")  # 1024x1024: 1.05 billable MP at 0.015 per MP
    assert square == quote("fal-ai/flux/dev", {"image_size": "square_hd"}).amount
    assert done.status == TxStatus.completed and done.actual_cost == square
    facts_ = fact_values(gov, tx.id)
    assert facts_["actual_source"] == "response sizes"
    assert facts_["output_sizes"] == "1024x1024"
    assert facts_["variance"] == "0.0039"
    assert usage(engine, budget.id) == (square, 0, 1)


def test_complete_with_a_response_of_several_images_prices_each(gov) -> None:
    body = {"prompt": "x", "num_images": 2}
    tx = hold(gov, body=body, q=quote("fal-ai/flux/dev", body))
    response = {"images": [{"width": 1024, "height": 768}, {"width": 512, "height": 512}]}
    done = gov.complete(tx.id, response=response)
    expected = DEV.amount + quote("fal-ai/flux/dev", {"image_size": {"width": 512, "height": 512}}).amount
    assert done.actual_cost == expected
    assert done.actual_cost < tx.estimated_cost == DEV.amount * 2
    facts_ = fact_values(gov, tx.id)
    assert facts_["output_sizes"] == "1024x768,512x512"
    assert "repriced_estimate" not in facts_  # the stored request prices as it was estimated


@pytest.mark.parametrize(
    "response",
    [{"images": []}, {"images": [{"url": "https://x/1.png"}]}, {}, {"images": [{"width": 1024, "height": 0}]}],
)
def test_complete_with_a_response_without_sizes_settles_at_the_estimate(gov, budget, engine, response) -> None:
    tx = hold(gov)
    done = gov.complete(tx.id, response=response)
    assert done.status == TxStatus.completed and done.actual_cost == EST
    facts_ = fact_values(gov, tx.id)
    assert facts_["actual_source"] == "estimate (the response has no image sizes)"
    assert "output_sizes" not in facts_
    assert usage(engine, budget.id) == (EST, 0, 1)


def test_complete_with_neither_settles_at_the_estimate(gov, budget, engine) -> None:
    tx = hold(gov)
    done = gov.complete(tx.id)
    assert done.status == TxStatus.completed and done.actual_cost == EST
    assert fact_values(gov, tx.id) == {"actual_source": "estimate (no actual given)"}
    assert usage(engine, budget.id) == (EST, 0, 1)


def test_complete_settles_an_unknown_outcome_too(gov, budget, engine) -> None:
    tx = hold(gov)
    gov.mark_unknown(tx.id, "timeout")
    done = gov.complete(tx.id, response={"images": [{"width": 512, "height": 512}]})
    assert done.status == TxStatus.completed and done.actual_cost < EST
    assert usage(engine, budget.id) == (done.actual_cost, 0, 1)


def test_complete_with_both_an_actual_and_a_response_is_refused_and_writes_nothing(gov, budget, engine) -> None:
    tx = hold(gov)
    before = snapshot(engine)
    with pytest.raises(InvalidRequest) as error:
        gov.complete(tx.id, actual="0.01", response={"images": []})
    assert error.value.field == "actual"
    assert snapshot(engine) == before
    assert gov.transaction(tx.id).status == TxStatus.pending
    assert usage(engine, budget.id) == (0, EST, 1)


# --- release: void, fail ----------------------------------------------------------------------


def test_voiding_a_pending_transaction_releases_its_hold(gov, budget, engine) -> None:
    tx = hold(gov)
    voided = gov.void(tx.id, "never sent")
    assert voided.status == TxStatus.voided and voided.outcome == "never sent"
    assert voided.actual_cost is None
    assert usage(engine, budget.id) == (0, 0, 1)


def test_a_failed_request_releases_its_hold_and_spends_nothing(gov, budget, engine) -> None:
    tx = hold(gov)
    failed = gov.fail(tx.id, "upstream answered 422", upstream_status=422, facts={"upstream_message": "bad"})
    assert failed.status == TxStatus.failed
    assert (failed.upstream_status, failed.outcome) == (422, "upstream answered 422")
    assert usage(engine, budget.id) == (0, 0, 1)
    assert fact_values(gov, tx.id) == {"upstream_message": "bad"}
    hold(gov)
    hold(gov)


def test_only_a_pending_transaction_can_fail(gov) -> None:
    tx = hold(gov)
    gov.mark_unknown(tx.id, "timeout")
    with pytest.raises(Conflict):
        gov.fail(tx.id, "late")
    assert gov.transaction(tx.id).status == TxStatus.unknown


def test_voiding_twice_is_refused_and_changes_nothing(gov, budget, engine) -> None:
    tx = hold(gov)
    gov.void(tx.id)
    with pytest.raises(Conflict) as error:
        gov.void(tx.id)
    assert "it is voided" in error.value.message
    assert usage(engine, budget.id) == (0, 0, 1)


# --- unknown outcomes -------------------------------------------------------------------------


def test_an_unknown_outcome_keeps_the_estimate_counted_as_spent(gov, budget, engine, clock) -> None:
    tx = hold(gov)
    unknown = gov.mark_unknown(tx.id, "timeout after sending", facts={"upstream_timeout_s": 30})
    assert unknown.status == TxStatus.unknown
    assert unknown.completed_at is None
    assert fact_values(gov, tx.id) == {"upstream_timeout_s": "30"}
    assert usage(engine, budget.id) == (EST, 0, 1)
    clock.advance(3600)
    assert gov.expire() == []  # not a hold: expiry leaves it counted
    assert usage(engine, budget.id) == (EST, 0, 1)
    hold(gov)
    assert not gov.authorize("bot", DEV, BODY).allowed


def test_settling_an_unknown_outcome_replaces_the_estimate_with_the_actual(gov, budget, engine) -> None:
    tx = hold(gov)
    gov.mark_unknown(tx.id, "timeout")
    done = gov.settle(tx.id, Decimal("0.005"))
    assert done.status == TxStatus.completed and done.actual_cost == Decimal("0.005")
    assert usage(engine, budget.id) == (Decimal("0.005"), 0, 1)


def test_settling_an_unknown_outcome_above_its_estimate_counts_the_excess(gov, budget, engine) -> None:
    tx = hold(gov)
    gov.mark_unknown(tx.id, "timeout")
    gov.settle(tx.id, Decimal("0.03"))
    assert usage(engine, budget.id) == (Decimal("0.03"), 0, 1)
    assert fact_values(gov, tx.id)["variance"] == "0.01815"


def test_voiding_an_unknown_outcome_removes_its_estimate_from_spend(gov, budget, engine) -> None:
    tx = hold(gov)
    gov.mark_unknown(tx.id, "timeout")
    voided = gov.void(tx.id, "FAL confirmed it was never generated")
    assert voided.status == TxStatus.voided
    assert usage(engine, budget.id) == (0, 0, 1)


# --- expiry -----------------------------------------------------------------------------------


def test_a_hold_expires_only_once_older_than_the_ttl(gov, budget, engine, clock) -> None:
    tx = hold(gov)
    clock.advance(900)
    assert gov.expire() == []  # exactly the TTL old: still held
    clock.advance(1)
    assert gov.expire() == [tx.id]
    expired = gov.transaction(tx.id)
    assert expired.status == TxStatus.expired
    assert expired.completed_at == NOON + timedelta(seconds=901)
    assert "expired" in expired.outcome
    assert usage(engine, budget.id) == (0, 0, 1)
    assert gov.expire() == []  # each hold is released once


def test_expire_older_than_releases_younger_holds_too(gov, budget, engine, clock) -> None:
    old = hold(gov)
    clock.advance(120)
    young = hold(gov)
    clock.advance(30)
    assert gov.expire(older_than=60) == [old.id]
    assert gov.expire(older_than=0) == [young.id]
    assert usage(engine, budget.id) == (0, 0, 2)


@pytest.mark.parametrize("older_than", [-1, float("inf"), float("nan")])
def test_expire_refuses_a_meaningless_age(gov, engine, clock, older_than) -> None:
    hold(gov)
    clock.advance(3600)
    before = snapshot(engine)
    with pytest.raises(InvalidRequest) as error:
        gov.expire(older_than=older_than)
    assert error.value.field == "older_than"
    assert snapshot(engine) == before


def test_expire_leaves_resolved_transactions_alone(gov, clock) -> None:
    done = hold(gov)
    gov.settle(done.id, EST)
    voided = hold(gov)
    gov.void(voided.id)
    pending = hold(gov)
    clock.advance(3600)
    assert gov.expire() == [pending.id]
    assert [gov.transaction(t.id).status for t in (done, voided)] == [TxStatus.completed, TxStatus.voided]


def test_an_expired_transaction_can_only_be_settled_on_purpose(gov, budget, engine, clock) -> None:
    tx = hold(gov)
    clock.advance(901)
    gov.expire()
    with pytest.raises(Conflict):
        gov.settle(tx.id, EST)
    with pytest.raises(Conflict):
        gov.void(tx.id)
    late = gov.settle(tx.id, Decimal("0.011"), allow_expired=True)
    assert late.status == TxStatus.completed
    assert usage(engine, budget.id) == (Decimal("0.011"), 0, 1)


def test_stale_holds_are_expired_by_authorization_itself(gov, budget, engine, clock) -> None:
    first, second = hold(gov), hold(gov)
    clock.advance(600)
    assert not gov.authorize("bot", DEV, BODY).allowed  # the holds are young: a real denial
    clock.advance(301)  # first and second are now 901 s old
    third = gov.authorize("bot", DEV, BODY)
    assert third.allowed
    assert [gov.transaction(t.id).status for t in (first, second)] == [TxStatus.expired, TxStatus.expired]
    assert usage(engine, budget.id) == (0, EST, 3)


def test_lazy_expiry_does_not_turn_settled_spend_into_room(gov, budget, clock) -> None:
    for _ in range(2):
        gov.settle(hold(gov).id, EST)
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
    assert quick.expire() == [tx.id]


def test_the_hold_ttl_is_read_from_the_environment_once_into_settings(db_url, clock) -> None:
    settings = Settings.from_env({"PIXELGOV_HOLD_TTL": "60"})
    assert settings.hold_ttl == 60
    with Ledger(db_url, clock=clock, settings=settings) as ledger:
        gov = ledger.governor
        assert gov.hold_ttl == 60
        tx = gov.authorize("bot", DEV, BODY).transaction
        clock.advance(60)
        assert gov.expire() == []
        clock.advance(1)
        assert gov.expire() == [tx.id]
    assert Settings.from_env({}).hold_ttl == 900
    assert Settings.from_env({"PIXELGOV_HOLD_TTL": ""}).hold_ttl == 900  # empty is unset


@pytest.mark.parametrize("bad", ["soon", "0", "-5", "nan", "inf", "-inf", "1e300"])
def test_a_malformed_hold_ttl_in_the_environment_names_the_variable(bad: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        Settings.from_env({"PIXELGOV_HOLD_TTL": bad})
    assert error.value.field == "PIXELGOV_HOLD_TTL"
    assert "PIXELGOV_HOLD_TTL" in error.value.message


@pytest.mark.parametrize("bad", [0, -5, float("nan")])
def test_a_governor_refuses_a_hold_ttl_that_is_not_positive(engine, bad) -> None:
    with pytest.raises(InvalidRequest) as error:
        Governor(engine, hold_ttl=bad)
    assert error.value.field == "hold_ttl"


def test_a_governor_does_not_read_the_environment(engine, monkeypatch) -> None:
    monkeypatch.setenv("PIXELGOV_HOLD_TTL", "60")
    monkeypatch.setenv("PIXELGOV_AUTO_CREATE_AGENTS", "false")
    gov = Governor(engine)
    assert (gov.hold_ttl, gov.auto_create) == (900, True)
    assert gov.authorize("stranger", DEV, BODY).allowed


# --- idempotency ------------------------------------------------------------------------------


def test_a_retry_with_the_same_key_returns_the_same_transaction_and_holds_nothing_new(gov, budget, engine) -> None:
    first = gov.authorize("bot", DEV, BODY, idempotency_key="job-42")
    retry = gov.authorize("bot", DEV, BODY, idempotency_key="job-42")
    assert retry.replayed and not first.replayed
    assert retry.decision is None and first.decision is not None
    assert retry.transaction.id == first.transaction.id
    assert retry.transaction == first.transaction
    assert retry.transaction.idempotency_key == "job-42"
    assert count(engine, transactions) == 1
    assert usage(engine, budget.id) == (0, EST, 1)


def test_a_retry_after_settlement_returns_the_completed_transaction(gov, budget, engine) -> None:
    tx = gov.authorize("bot", DEV, BODY, idempotency_key="k").transaction
    gov.settle(tx.id, EST)
    retry = gov.authorize("bot", DEV, BODY, idempotency_key="k")
    assert retry.transaction.status == TxStatus.completed and retry.transaction.actual_cost == EST
    assert usage(engine, budget.id) == (EST, 0, 1)


def test_a_retry_of_a_denied_request_returns_the_denial(gov, budget, engine) -> None:
    hold(gov)
    hold(gov)
    denied = gov.authorize("bot", DEV, BODY, idempotency_key="k")
    assert not denied.allowed
    retry = gov.authorize("bot", DEV, BODY, idempotency_key="k")
    assert retry.transaction.id == denied.transaction.id and not retry.allowed
    assert retry.transaction.denials == denied.transaction.denials


def test_the_same_key_with_a_different_request_is_refused(gov, engine) -> None:
    first = gov.authorize("bot", DEV, BODY, idempotency_key="k")
    other = quote("fal-ai/flux/dev", {"image_size": "square_hd"})
    with pytest.raises(Conflict) as error:
        gov.authorize("bot", other, {"image_size": "square_hd"}, idempotency_key="k")
    assert error.value.code == "invalid_request"
    assert error.value.field == "idempotency_key"
    assert str(first.transaction.id) in error.value.message
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
    assert a.transaction.id != b.transaction.id
    assert (a.transaction.agent, b.transaction.agent) == ("alice", "bob")
    assert not b.replayed
    assert count(engine, transactions) == 2


def test_requests_without_a_key_are_never_merged(gov, engine) -> None:
    hold(gov)
    hold(gov)
    assert count(engine, transactions) == 2


# --- adjustments and facts --------------------------------------------------------------------


def test_an_adjustment_adds_a_cost_line_and_counts_in_the_budget(gov, budget, engine) -> None:
    tx = hold(gov)
    gov.settle(tx.id, EST)
    gov.add_cost(tx.id, Decimal("0.002"), note="late surcharge")
    gov.add_cost(tx.id, Decimal("-0.005"), note="FAL credit")
    detail = gov.transaction(tx.id, detail=True)
    assert [(c.kind, c.amount, c.note) for c in detail.detail.cost_lines] == [
        ("estimate", EST, None),
        ("actual", EST, None),
        ("adjustment", Decimal("0.002"), "late surcharge"),
        ("adjustment", Decimal("-0.005"), "FAL credit"),
    ]
    assert [c["amount"] for c in detail.to_json()["cost_lines"]] == ["0.01185", "0.01185", "0.002", "-0.005"]
    assert detail.actual_cost == EST  # a ledger row is never rewritten: corrections are new lines
    assert usage(engine, budget.id) == (Decimal("0.00885"), 0, 1)


def test_a_credit_larger_than_the_spend_never_makes_a_budget_negative(gov, budget, engine) -> None:
    """Issue 8, defect 1: a credit is recorded in full, but frees no more budget than the
    transaction consumed — the budget's headroom never rises above its limit."""
    tx = hold(gov)
    gov.settle(tx.id, EST)
    credited = gov.add_cost(tx.id, Decimal("-1000"), note="goodwill credit")
    assert credited.actual_cost == EST
    assert lines(gov, tx.id)[-1] == ("adjustment", Decimal("-1000"))  # recorded in full
    spent, held, requests = usage(engine, budget.id)
    assert spent == 0 and spent >= 0  # not -999.98815
    assert (held, requests) == (0, 1)
    # The agent can spend the limit again, and not one estimate more.
    hold(gov)
    hold(gov)
    denied = gov.authorize("bot", DEV, BODY)
    assert not denied.allowed
    assert [d.rule for d in denied.transaction.denials] == ["budget"]
    assert usage(engine, budget.id) == (0, EST * 2, 3)


def test_a_surcharge_after_a_large_credit_still_counts_nothing_below_zero(gov, budget, engine) -> None:
    tx = hold(gov)
    gov.settle(tx.id, EST)
    gov.add_cost(tx.id, Decimal("-1000"))
    gov.add_cost(tx.id, Decimal("0.005"))  # -999.98315 in all: still nothing spent
    assert usage(engine, budget.id) == (0, 0, 1)
    gov.add_cost(tx.id, Decimal("1000"))  # back to 0.01685: counted as spent again
    assert usage(engine, budget.id) == (EST + Decimal("0.005"), 0, 1)
    assert not gov.authorize("bot", DEV, BODY).allowed  # 0.01685 + 0.01185 > 0.0237


def test_a_credit_on_one_transaction_does_not_free_budget_used_by_another(gov, budget, engine) -> None:
    small = hold(gov)
    gov.settle(small.id, Decimal("0.001"))
    other = hold(gov)
    gov.settle(other.id, EST)
    gov.add_cost(small.id, Decimal("-0.5"))  # frees at most the 0.001 small consumed
    assert usage(engine, budget.id) == (EST, 0, 2)
    hold(gov)
    assert not gov.authorize("bot", DEV, BODY).allowed


@pytest.mark.parametrize("state", ["pending", "voided", "unknown"])
def test_only_a_completed_transaction_can_be_adjusted(gov, engine, state) -> None:
    tx = hold(gov)
    if state == "voided":
        gov.void(tx.id)
    elif state == "unknown":
        gov.mark_unknown(tx.id, "timeout")
    with pytest.raises(Conflict):
        gov.add_cost(tx.id, Decimal("0.01"))
    assert count(engine, cost_lines) == 1


def test_only_adjustment_cost_lines_can_be_added(gov) -> None:
    tx = hold(gov)
    gov.settle(tx.id, EST)
    with pytest.raises(InvalidRequest) as error:
        gov.add_cost(tx.id, Decimal("0.01"), kind="actual")
    assert error.value.field == "kind"


def test_facts_are_appended_to_any_transaction(gov, engine) -> None:
    tx = hold(gov)
    gov.add_fact(tx.id, "reviewer", "alice")
    gov.add_fact(tx.id, "reviewer", "bob")
    gov.add_fact(tx.id, "x-fal-billable-units", {"units": 0.79})
    detail = gov.transaction(tx.id, detail=True)
    assert [(f.key, f.value) for f in detail.detail.facts] == [
        ("reviewer", "alice"),
        ("reviewer", "bob"),
        ("x-fal-billable-units", '{"units": 0.79}'),
    ]
    assert detail.detail.fact("reviewer") == "bob"  # the latest
    assert detail.status == TxStatus.pending


def test_a_fact_needs_a_known_transaction_and_a_key(gov, engine) -> None:
    tx = hold(gov)
    with pytest.raises(NotFound):
        gov.add_fact(999, "k", "v")
    with pytest.raises(InvalidRequest):
        gov.add_fact(tx.id, "", "v")
    with pytest.raises(InvalidRequest):
        gov.add_fact(tx.id, "k" * 101, "v")
    assert count(engine, facts) == 0


# --- bad input: a typed error and nothing written ---------------------------------------------


@pytest.fixture
def ledger_state(gov, admin):  # type: ignore[no-untyped-def]
    """A ledger with a counted rule and a pending, a completed and a voided transaction."""
    admin.create_rule(spec(name="roomy", type="spend-limit", limit="1", period="day"))
    pending = hold(gov, body={"n": 1})
    completed = hold(gov, body={"n": 2})
    gov.settle(completed.id, Decimal("0.01"))
    voided = hold(gov, body={"n": 3})
    gov.void(voided.id)
    return {"pending": pending.id, "completed": completed.id, "voided": voided.id}


BAD_GOVERNOR_CALLS: dict[str, tuple[Callable[[Any, dict[str, int]], Any], type[Exception], str | None]] = {
    "authorize: idempotency key too long": (
        lambda g, t: g.authorize("bot", DEV, BODY, idempotency_key="k" * 201),
        InvalidRequest,
        "idempotency_key",
    ),
    "authorize: empty idempotency key": (
        lambda g, t: g.authorize("bot", DEV, BODY, idempotency_key=""),
        InvalidRequest,
        "idempotency_key",
    ),
    "authorize: invalid agent name": (lambda g, t: g.authorize("no spaces please", DEV, BODY), InvalidRequest, "agent"),
    "authorize: agent name with a trailing newline": (
        lambda g, t: g.authorize("bot\n", DEV, BODY),
        InvalidRequest,
        "agent",
    ),
    "authorize: same key, other request": (
        lambda g, t: g.authorize("bot", DEV, {"prompt": "other"}, idempotency_key="k"),
        Conflict,
        "idempotency_key",
    ),
    "settle: negative actual": (lambda g, t: g.settle(t["pending"], Decimal("-0.01")), InvalidRequest, "actual"),
    "settle: unstorable actual": (lambda g, t: g.settle(t["pending"], Decimal("1e12")), InvalidRequest, "actual"),
    "settle: unknown transaction": (lambda g, t: g.settle(404, EST), NotFound, None),
    "settle: a voided transaction": (lambda g, t: g.settle(t["voided"], EST), Conflict, None),
    "complete: malformed actual": (lambda g, t: g.complete(t["pending"], actual="ten"), InvalidRequest, "actual"),
    "complete: negative actual": (lambda g, t: g.complete(t["pending"], actual="-1"), InvalidRequest, "actual"),
    "complete: a response that is not an object": (
        lambda g, t: g.complete(t["pending"], response=[1, 2]),
        InvalidRequest,
        "response",
    ),
    "complete: both": (lambda g, t: g.complete(t["pending"], actual="0.01", response={}), InvalidRequest, "actual"),
    "complete: unknown transaction": (lambda g, t: g.complete(404), NotFound, None),
    "complete: a completed transaction": (lambda g, t: g.complete(t["completed"]), Conflict, None),
    "fail: a completed transaction": (lambda g, t: g.fail(t["completed"], "late"), Conflict, None),
    "void: a voided transaction": (lambda g, t: g.void(t["voided"]), Conflict, None),
    "mark_unknown: unknown transaction": (lambda g, t: g.mark_unknown(404, "x"), NotFound, None),
    "add_cost: a pending transaction": (lambda g, t: g.add_cost(t["pending"], Decimal("0.01")), Conflict, None),
    "add_cost: not an adjustment": (
        lambda g, t: g.add_cost(t["completed"], Decimal("0.01"), kind="actual"),
        InvalidRequest,
        "kind",
    ),
    "add_cost: unstorable amount": (
        lambda g, t: g.add_cost(t["completed"], Decimal("-1e12")),
        InvalidRequest,
        "amount",
    ),
    "add_fact: empty key": (lambda g, t: g.add_fact(t["pending"], "", "v"), InvalidRequest, "key"),
    "add_fact: unknown transaction": (lambda g, t: g.add_fact(404, "k", "v"), NotFound, None),
    "expire: negative age": (lambda g, t: g.expire(older_than=-1), InvalidRequest, "older_than"),
    "transactions: unknown status": (lambda g, t: g.transactions(status="lost"), InvalidRequest, "status"),
    "transactions: unknown agent": (lambda g, t: g.transactions(agent="nobody"), NotFound, None),
}


@pytest.mark.parametrize("case", list(BAD_GOVERNOR_CALLS))
def test_a_governor_call_with_bad_input_raises_a_typed_error_and_writes_nothing(
    gov, engine, ledger_state, case
) -> None:
    call, error_type, field = BAD_GOVERNOR_CALLS[case]
    if case.startswith("authorize: same key"):
        gov.authorize("bot", DEV, BODY, idempotency_key="k")  # the first use of the key is a real write
    counts, before = row_counts(engine), snapshot(engine)
    with pytest.raises(error_type) as error:
        call(gov, ledger_state)
    assert type(error.value) is error_type
    if field is not None:
        assert error.value.field == field
    assert error.value.code == {NotFound: "not_found"}.get(error_type, "invalid_request")
    assert row_counts(engine) == counts
    assert snapshot(engine) == before


# --- agent names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bot\n", "", " bot", "no spaces please", "bot\x00"])
def test_a_check_refuses_an_invalid_agent_name_like_authorize(gov, budget, engine, name: str) -> None:
    with pytest.raises(InvalidRequest) as by_validator:
        validate_agent_name(name)
    before = snapshot(engine)
    with pytest.raises(InvalidRequest) as by_check:
        gov.check(name, DEV)
    with pytest.raises(InvalidRequest) as by_authorize:
        gov.authorize(name, DEV, BODY)
    assert by_validator.value.field == by_check.value.field == by_authorize.value.field == "agent"
    assert snapshot(engine) == before


def test_a_check_of_a_valid_new_agent_name_writes_nothing(gov, budget, engine) -> None:
    before = snapshot(engine)
    decision = gov.check("newcomer", DEV)
    assert decision.allowed and decision.agent.name == "newcomer" and decision.agent.id is None
    assert snapshot(engine) == before


def test_an_agent_name_with_a_trailing_newline_is_not_the_agent(gov, admin) -> None:
    admin.create_agent("bot")
    with pytest.raises(InvalidRequest):
        gov.check("bot\n", DEV)
    with pytest.raises(InvalidRequest):
        validate_agent_name("bot\n")
    assert gov.check("bot", DEV).agent.name == "bot"


# --- reading ----------------------------------------------------------------------------------


def test_transactions_are_listed_newest_first_and_filtered(gov, clock) -> None:
    a = hold(gov, "alice")
    clock.advance(60)
    b = hold(gov, "bob")
    gov.void(b.id)
    clock.advance(60)
    c = hold(gov, "alice")
    assert [t.id for t in gov.transactions()] == [c.id, b.id, a.id]
    assert all(isinstance(t, Transaction) for t in gov.transactions())
    assert [t.id for t in gov.transactions(agent="alice")] == [c.id, a.id]
    assert [t.id for t in gov.transactions(status="voided")] == [b.id]
    since = datetime(2026, 11, 25, 12, 1, tzinfo=UTC)
    assert [t.id for t in gov.transactions(since=since)] == [c.id, b.id]
    assert [t.id for t in gov.transactions(until=since)] == [a.id]
    assert [t.id for t in gov.transactions(limit=1)] == [c.id]


def test_listing_by_an_unknown_status_or_agent_is_an_error(gov) -> None:
    with pytest.raises(InvalidRequest) as error:
        gov.transactions(status="lost")
    assert error.value.field == "status"
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
    with pytest.raises(NotFound):
        gov.complete(12345)


def test_holds_record_the_counters_each_transaction_was_counted_in(gov, admin, budget, engine) -> None:
    admin.create_rule(spec(name="cap", type="request-cap", limit="1"))
    rate = admin.create_rule(spec(name="rate", type="rate-limit", limit="10", window="1h"))
    tx = hold(gov)
    with engine.connect() as conn:
        rows = conn.execute(
            select(holds.c.rule_id, holds.c.bucket).where(holds.c.transaction_id == tx.id).order_by(holds.c.rule_id)
        ).all()
    day = int(datetime(2026, 11, 25, tzinfo=UTC).timestamp())
    minute = int(datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp())
    assert [tuple(r) for r in rows] == [(budget.id, day), (rate.id, minute)]  # not the uncounted cap


# --- the counters are a cache of the ledger ---------------------------------------------------


def _period_start(period: str, when: datetime) -> datetime:
    """The UTC calendar period `when` falls in, computed here (not by `ledger.policy.periods`)."""
    when = when.astimezone(UTC)
    day = when.replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "hour": when.replace(minute=0, second=0, microsecond=0),
        "day": day,
        "week": day - timedelta(days=day.weekday()),
        "month": day.replace(day=1),
        "total": datetime(1970, 1, 1, tzinfo=UTC),
    }[period]


def recount(engine: Any, rule: SpendingRule) -> dict[int, tuple[Decimal, Decimal, int]]:
    """A calendar-period rule's counters, rebuilt from the transactions' own rows alone.

    Independent of the product's bookkeeping: no `holds` rows, no `ledger.store.spend`, no
    `ledger.policy.periods`. Per bucket (the period start of each transaction's `created_at`):
    held = the estimates of pending transactions; spent = completed: actual + adjustment
    lines, never below zero, and unknown: the estimate; requests = every transaction in
    scope that was not denied.
    """
    assert rule.period is not None and rule.window is None
    t = transactions.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                t.id,
                agents.c.name.label("agent"),
                t.endpoint,
                t.model,
                t.operation,
                t.status,
                t.estimated_cost,
                t.actual_cost,
                t.created_at,
            ).join(agents, agents.c.id == t.agent_id)
        ).all()
        adjusted: dict[int, Decimal] = defaultdict(Decimal)
        for tx_id, amount in conn.execute(
            select(cost_lines.c.transaction_id, cost_lines.c.amount).where(cost_lines.c.kind == "adjustment")
        ):
            adjusted[tx_id] += amount
    counters: dict[int, tuple[Decimal, Decimal, int]] = {}
    for row in rows:
        if rule.agent is not None and row.agent != rule.agent:
            continue
        if rule.model is not None and not (fnmatchcase(row.endpoint, rule.model) or fnmatchcase(row.model, rule.model)):
            continue
        if rule.operation is not None and row.operation != rule.operation:
            continue
        status = str(row.status)
        if status == "denied":
            continue
        held = row.estimated_cost if status == "pending" else Decimal(0)
        if status == "completed":
            spent = max(row.actual_cost + adjusted[row.id], Decimal(0))
        elif status == "unknown":
            spent = row.estimated_cost
        else:  # failed, voided, expired: released
            spent = Decimal(0)
        bucket = int(_period_start(rule.period, row.created_at).timestamp())
        s, h, n = counters.get(bucket, (Decimal(0), Decimal(0), 0))
        counters[bucket] = (s + spent, h + held, n + 1)
    return counters


def stored_counters(engine: Any, rule_id: int) -> dict[int, tuple[Decimal, Decimal, int]]:
    c = rule_counters.c
    with engine.connect() as conn:
        rows = conn.execute(select(c.bucket, c.spent, c.held, c.requests).where(c.rule_id == rule_id)).all()
    return {
        int(r.bucket): (r.spent, r.held, int(r.requests)) for r in rows if (r.spent, r.held, r.requests) != (0, 0, 0)
    }


def test_counters_can_be_recounted_from_the_transactions(gov, admin, budget, engine, clock) -> None:
    """The counters are a cache: after a mix of outcomes over several days, agents and models,
    each rule's counters equal, bucket by bucket, what the transactions' rows say.

    The scenario asserts no decision on the way: whatever the governor allowed or denied, the
    final comparison with the independent recount is the oracle."""
    admin.create_agent("alice")
    alice_hourly = admin.create_rule(
        spec(
            name="alice-flux-hourly", type="spend-limit", limit="1", period="hour", agent="alice", model="fal-ai/flux/*"
        )
    )

    def attempt(agent: str = "bot", q=DEV) -> Transaction | None:  # type: ignore[no-untyped-def]
        auth = gov.authorize(agent, q, BODY)
        return auth.transaction if auth.allowed else None

    def then(tx: Transaction | None, action: Callable[[int], Any]) -> None:
        if tx is not None:
            action(tx.id)

    # Day 1: settled below the estimate, voided, unknown, and a denial (0.01 + 0.01185 + 0.01185 > 0.0237).
    then(attempt(), lambda i: gov.settle(i, Decimal("0.01")))
    then(attempt("alice"), gov.void)
    then(attempt("alice"), lambda i: gov.mark_unknown(i, "timeout"))
    attempt()
    clock.advance(minutes=20)
    # Day 2: adjustments (one a credit larger than the spend), a failure, two holds expired by an
    # authorization (one then settled late) and a denial (0.011 + 0.01185 + 0.01185 > 0.0237).
    clock.set(datetime(2026, 11, 26, 9, 0, 0, tzinfo=UTC))
    adjusted = attempt("alice")
    then(adjusted, lambda i: gov.settle(i, EST))
    then(adjusted, lambda i: gov.add_cost(i, Decimal("0.002"), note="surcharge"))
    then(adjusted, lambda i: gov.add_cost(i, Decimal("-1000"), note="credit"))
    then(attempt("alice"), lambda i: gov.fail(i, "upstream 500"))
    stale = attempt("alice")
    attempt("alice")  # left expired
    clock.advance(901)
    pending = attempt("bob")  # denied while stale holds stand in the way: they are expired, and it is allowed
    gov.expire()
    then(
        stale,
        lambda i: (
            gov.settle(i, Decimal("0.011"), allow_expired=True)
            if gov.transaction(i).status == TxStatus.expired
            else None
        ),
    )
    attempt("alice")
    # Day 2, the next hour: an unknown outcome settled above its estimate.
    clock.set(datetime(2026, 11, 26, 10, 30, 0, tzinfo=UTC))
    then(pending, gov.void)
    late = attempt("alice")
    then(late, lambda i: gov.mark_unknown(i, "timeout"))
    then(late, lambda i: gov.settle(i, Decimal("0.012")))
    # Day 3: another model (outside alice's flux rule), a hold left pending, an unknown outcome left so.
    clock.set(datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC))
    then(attempt("alice", SDXL), lambda i: gov.settle(i, SDXL.amount))
    attempt("alice")
    then(attempt("bob", SDXL), lambda i: gov.mark_unknown(i, "timeout"))
    clock.advance(minutes=20)

    for rule in (budget, alice_hourly):
        assert stored_counters(engine, rule.id) == recount(engine, rule), rule.name
    # The scenario did what it meant to: every status, three days, four of alice's flux hours.
    assert {t.status for t in gov.transactions()} == set(TxStatus)
    assert len(recount(engine, budget)) == 3
    assert len(recount(engine, alice_hourly)) == 4
